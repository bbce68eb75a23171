"""Prompt-biasing ("hotword") data: invented words, sentences that contain them, and prompts.

A user can pass a text prompt with the spelling of rare words (product names, surnames) that the
audio may contain. A model learns to use it only if training shows words whose spelling cannot be
guessed from sound alone, so we invent pronounceable pseudo-words from syllables with odd spellings
("zorbeth", "kwyxila", "phaelor") that are in no English word list. The pool is split three ways by a
stable hash: words for train, dev and a held-out test pool that never occurs in training.

A prompt lists the rare words present in the text plus distractor rare words, shuffled, joined by
", ". Some training prompts hold only distractors, so that the model learns not to insert a prompt
word that was not said.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mambaserve.model.lexicon_search import parse_hotwords
from mambaserve.model.text_norm import normalize_text

from .text_corpus import MAX_WORDS, common_words, stable_fraction

__all__ = [
    "HotwordPools",
    "TextPlan",
    "hotword_pools",
    "hotword_sentence",
    "make_prompt",
    "parse_prompt",
    "plan_texts",
    "pseudo_words",
    "rare_word_counts",
    "rare_word_error_rate",
]

_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "kl",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "pr",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
    "th",
    "sh",
    "x",
    "ch",
    "kw",
    "ph",
    "zh",
    "j",
    "y",
    "",
)
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "y", "io", "ae", "oo")
_CODAS = ("", "", "", "n", "r", "l", "m", "th", "x", "s", "k", "nd", "rn", "lt", "z")
_ENDINGS = ("", "", "a", "eth", "ix", "or", "ia", "yx", "el", "on", "ine", "ath", "us", "ra")
# Spellings that say the same sound in an unexpected way: the prompt is the only way to get them right.
_ODD_SPELLINGS = (("i", "y"), ("k", "q"), ("f", "ph"), ("s", "z"), ("c", "k"), ("x", "xx"), ("e", "ae"))

PROMPT_SEPARATOR = ", "


@functools.lru_cache(maxsize=4)
def pseudo_words(n: int = 900, seed: int = 0) -> tuple[str, ...]:
    """`n` distinct pronounceable invented words (5–10 letters), none of them a known English word."""
    from wordfreq import zipf_frequency

    rng = random.Random(f"pseudo-words:{seed}")
    known = common_words()
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n:
            raise RuntimeError(f"pseudo_words: could only invent {len(out)} of {n} words")
        syllables = [
            rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
            for _ in range(rng.choice((2, 2, 3)))
        ]
        word = "".join(syllables) + rng.choice(_ENDINGS)
        if rng.random() < 0.4:
            a, b = rng.choice(_ODD_SPELLINGS)
            word = word.replace(a, b, 1)
        word = normalize_text(word)
        if (
            not 5 <= len(word) <= 10
            or " " in word
            or re.search(r"(.)\1\1|[^aeiouy]{4}|[aeiouy]{3}|q(?!u)", word)  # unpronounceable clusters
            or word in seen
            or word in known
            or zipf_frequency(word, "en") > 0
        ):
            continue
        seen.add(word)
        out.append(word)
    return tuple(out)


@dataclass(frozen=True)
class HotwordPools:
    """Disjoint pools of invented words: `test` words never occur in any training text or prompt."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]


@functools.lru_cache(maxsize=4)
def hotword_pools(
    seed: int = 0, n: int = 900, dev_fraction: float = 0.1, test_fraction: float = 0.3
) -> HotwordPools:
    words = pseudo_words(n, seed)
    train, dev, test = [], [], []
    for w in words:
        r = stable_fraction("hotword-split", seed, w)
        (dev if r < dev_fraction else test if r < dev_fraction + test_fraction else train).append(w)
    return HotwordPools(tuple(train), tuple(dev), tuple(test))


# {R} and {R2} are rare words, {S} a prose sentence; the other slots take common words.
_ONE_WORD_TEMPLATES = (
    "{R} said that {S}",
    "according to {R} {S}",
    "{S} said {R}",
    "in the notes from {R} {S}",
    "please ask {R} about the {noun}",
    "the {R} project starts on {day}",
    "my {relative} bought a {R} at the market",
    "have you ever heard of {R} before",
    "{R} is the name of a small village near the river",
    "the new {R} model is much faster than the old one",
    "send the report to {R} before {day}",
    "i think {R} will arrive {time}",
    "the word {R} appears twice in this letter",
    "we stayed at the {R} hotel for a week",
)
_TWO_WORD_TEMPLATES = (
    "{R} and {R2} are working on the same problem",
    "we met {R} and {R2} at the {place}",
    "{R} told {R2} that {S}",
    "the train from {R} to {R2} leaves {time}",
    "{R} wrote to {R2} that {S}",
)
_FILL = {
    "noun": ("plan", "letter", "garden", "budget", "contract", "schedule", "meeting", "invoice", "map"),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "relative": ("brother", "sister", "mother", "father", "uncle", "aunt", "cousin", "friend"),
    "time": ("tomorrow", "this evening", "next week", "on monday", "after lunch", "at noon"),
    "place": ("station", "library", "market", "office", "museum", "airport", "harbor", "conference"),
}
_PROSE_MAX_WORDS = MAX_WORDS - 6


def hotword_sentence(
    rng: random.Random, rare_pool: Sequence[str], prose_pool: Sequence[str], n_words: int | None = None
) -> tuple[str, list[str]]:
    """A natural sentence with 1 or 2 rare words embedded; returns (text, rare words in order)."""
    n_words = n_words or rng.choice((1, 1, 2))
    if n_words not in (1, 2):
        raise ValueError(f"hotword_sentence: n_words must be 1 or 2, got {n_words}")
    template = rng.choice(_ONE_WORD_TEMPLATES if n_words == 1 else _TWO_WORD_TEMPLATES)
    rare = rng.sample(list(rare_pool), n_words)
    if "{S}" in template and not prose_pool:
        raise ValueError("hotword_sentence: prose_pool is empty")

    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "R":
            return rare[0]
        if key == "R2":
            return rare[1]
        if key == "S":
            return _short_sentence(rng, prose_pool)
        return rng.choice(_FILL[key])

    return normalize_text(re.sub(r"\{(\w+)\}", fill, template)), rare


def _short_sentence(rng: random.Random, prose_pool: Sequence[str]) -> str:
    """A random sentence short enough to embed (rejection sampling: most sentences are short)."""
    for _ in range(100):
        s = rng.choice(prose_pool)
        if len(s.split()) <= _PROSE_MAX_WORDS:
            return s
    return " ".join(rng.choice(prose_pool).split()[:_PROSE_MAX_WORDS])


def make_prompt(
    rng: random.Random,
    hotwords: Sequence[str],
    rare_pool: Sequence[str],
    n_distractors: tuple[int, int] = (1, 3),
) -> str:
    """The hotwords plus `n_distractors` (min, max) other rare words from `rare_pool`, shuffled."""
    lo, hi = n_distractors
    if not 0 <= lo <= hi:
        raise ValueError(
            f"make_prompt: n_distractors must be (min, max) with 0 <= min <= max, got {n_distractors}"
        )
    candidates = [w for w in rare_pool if w not in set(hotwords)]
    k = min(rng.randint(lo, hi), len(candidates))
    words = list(dict.fromkeys(hotwords)) + rng.sample(candidates, k)
    rng.shuffle(words)
    return PROMPT_SEPARATOR.join(words)


def parse_prompt(prompt: str) -> list[str]:
    """The words of a prompt made by `make_prompt` (normalised, in order): the serving rule."""
    return parse_hotwords(prompt)


@dataclass(frozen=True)
class TextPlan:
    """What one utterance says, and the prompt it is paired with ("" for none)."""

    text: str
    prompt: str = ""
    hotwords: list[str] = field(default_factory=list)


def plan_texts(
    n: int,
    rng: random.Random,
    sentences: Sequence[str],
    rare_pool: Sequence[str],
    prompt_fraction: float = 0.3,
    distractor_only_fraction: float = 0.25,
) -> list[TextPlan]:
    """`n` utterance texts: plain sentences, and `prompt_fraction` of them with a prompt.

    Of the prompted ones, `distractor_only_fraction` are plain sentences whose prompt holds only
    rare words that are not said; the rest embed 1–2 rare words that the prompt lists among
    distractors. Sentences are drawn by cycling through shuffled passes, so each is used evenly.
    """
    for name, value in (
        ("prompt_fraction", prompt_fraction),
        ("distractor_only_fraction", distractor_only_fraction),
    ):
        if not 0 <= value <= 1:
            raise ValueError(f"plan_texts: {name} must be in [0, 1], got {value}")
    if n and not sentences:
        raise ValueError("plan_texts: no sentences to draw from")
    order: list[str] = []
    plans: list[TextPlan] = []
    for _ in range(n):
        if not order:
            order = list(sentences)
            rng.shuffle(order)
        sentence = order.pop()
        if rng.random() >= prompt_fraction:
            plans.append(TextPlan(sentence))
        elif rng.random() < distractor_only_fraction:
            plans.append(TextPlan(sentence, make_prompt(rng, [], rare_pool, (1, 3))))
        else:
            text, rare = hotword_sentence(rng, rare_pool, sentences)
            plans.append(TextPlan(text, make_prompt(rng, rare, rare_pool), rare))
    return plans


# ---- evaluation ---------------------------------------------------------------------------------
def rare_word_counts(
    refs: Sequence[str], hyps: Sequence[str], hotwords_per_item: Sequence[Sequence[str]]
) -> tuple[int, int]:
    """(missed, total) hotword occurrences; an occurrence counts as recognised only if the WER
    alignment of reference and hypothesis matches every one of its words ("equal" chunks)."""
    import jiwer

    if not len(refs) == len(hyps) == len(hotwords_per_item):
        raise ValueError(
            f"rare_word_counts: refs ({len(refs)}), hyps ({len(hyps)}) and hotwords_per_item "
            f"({len(hotwords_per_item)}) must have the same length"
        )
    missed = total = 0
    for ref, hyp, hotwords in zip(refs, hyps, hotwords_per_item):
        ref_words = normalize_text(ref).split()
        hyp_words = normalize_text(hyp).split()
        phrases = {tuple(normalize_text(h).split()) for h in hotwords}
        phrases.discard(())
        if not ref_words or not phrases:
            continue
        correct = [False] * len(ref_words)
        if hyp_words:
            out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
            for chunk in out.alignments[0]:
                if chunk.type == "equal":
                    correct[chunk.ref_start_idx : chunk.ref_end_idx] = [True] * (
                        chunk.ref_end_idx - chunk.ref_start_idx
                    )
        for phrase in phrases:
            k = len(phrase)
            for i in range(len(ref_words) - k + 1):
                if tuple(ref_words[i : i + k]) == phrase:
                    total += 1
                    missed += not all(correct[i : i + k])
    return missed, total


def rare_word_error_rate(
    refs: Sequence[str], hyps: Sequence[str], hotwords_per_item: Sequence[Sequence[str]]
) -> float:
    """Fraction of hotword occurrences in the references that the hypotheses do not get right.

    Texts are normalised first. NaN when the references contain no hotword at all (no evidence
    either way is not a perfect score).
    """
    missed, total = rare_word_counts(refs, hyps, hotwords_per_item)
    return missed / total if total else float("nan")
