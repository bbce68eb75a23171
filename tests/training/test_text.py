"""Text side of the data pipeline: normalisation, stdlib prose mining, sentence split, hotwords."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import pytest
from mambaserve.model.text_norm import ALPHABET, normalize_text, number_to_words
from mambaserve.training.hotwords import (
    hotword_pools,
    hotword_sentence,
    make_prompt,
    parse_prompt,
    plan_texts,
    pseudo_words,
    rare_word_counts,
    rare_word_error_rate,
)
from mambaserve.training.text_corpus import (
    MAX_WORDS,
    MIN_WORDS,
    common_words,
    sentence_splits,
    stdlib_sentences,
    template_vocabulary,
)


# ---- normalisation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("Don't STOP   me now.", "don't stop me now"),
        ("It’s the dog’s bone", "it's the dog's bone"),  # curly apostrophes
        ("'quoted' words and James' car", "quoted words and james car"),  # apostrophes outside words go
        ("rock 'n' roll", "rock n roll"),
        ("well-known e.g. U.S.A.", "well known e g u s a"),
        ("Café naïve Straße Ærø", "cafe naive strasse aero"),
        ("In 1984 there were 7 cats", "in one thousand nine hundred eighty four there were seven cats"),
        ("1,000 and 12,345", "one thousand and one two three four five"),
        (
            "0 10 15 20 99 100 101 110 1000 1001 9999",
            (
                "zero ten fifteen twenty ninety nine one hundred one hundred one one hundred ten one thousand "
                "one thousand one nine thousand nine hundred ninety nine"
            ),
        ),
        ("3.14", "three point one four"),
        ("the 1st, 2nd, 3rd, 12th and 21st", "the first second third twelfth and twenty first"),
        ("50% & more", "fifty percent and more"),
        ("mp3 007", "mp three zero zero seven"),
        ("tabs\tand\nnewlines", "tabs and newlines"),
        ("中文 only", "only"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text_cases(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_text_is_idempotent_and_in_alphabet() -> None:
    rng = random.Random(0)
    pool = "abcXYZ '’-.,!?0123456789 éßø\t\n%&"
    for _ in range(500):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        once = normalize_text(s)
        assert normalize_text(once) == once
        assert set(once) <= set(ALPHABET)
        assert "  " not in once and once == once.strip()
        assert not re.search(r"(^|[^a-z])'|'([^a-z]|$)", once), once


def test_number_to_words_bounds() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(40) == "forty"
    assert number_to_words(12345) == "one two three four five"
    with pytest.raises(ValueError, match="n must be >= 0"):
        number_to_words(-1)
    with pytest.raises(TypeError, match="expected str"):
        normalize_text(None)  # type: ignore[arg-type]


# ---- stdlib prose -----------------------------------------------------------------------------------
def test_stdlib_sentences_look_like_prose() -> None:
    sentences = stdlib_sentences()
    assert len(sentences) > 2000, len(sentences)
    assert len(set(sentences)) == len(sentences)
    vocab = common_words()
    for s in sentences:
        words = s.split()
        assert MIN_WORDS <= len(words) <= MAX_WORDS, s
        assert normalize_text(s) == s
        assert all(w in vocab for w in words), s
        # No code leftovers: identifiers, calls, doctest prompts and URLs cannot survive normalisation
        # as words, and none of their telltale words may appear glued together.
        assert not re.search(r"\b(?:def|self|http|https|www|args|kwargs|none none)\b", s), s
    # Most sentences are ordinary English: the most common words are function words.
    top = {w for w, _ in Counter(w for s in sentences for w in s.split()).most_common(10)}
    assert {"the", "a", "to", "of", "is"} <= top


def test_sentence_split_is_disjoint_and_open_vocabulary() -> None:
    sp = sentence_splits(0)
    train, dev, test = set(sp.train), set(sp.dev), set(sp.test)
    assert not (train & dev) and not (train & test) and not (dev & test)
    assert len(train) > 10 * len(test) > 0 and len(dev) > 0
    train_vocab = {w for s in sp.train for w in s.split()}
    dev_vocab = {w for s in sp.dev for w in s.split()}
    assert sp.heldout_words and not (sp.heldout_words & (train_vocab | dev_vocab))
    test_only = {w for s in sp.test for w in s.split()} - train_vocab
    assert len(test_only) >= 50, len(test_only)
    assert sp.stats["test_with_heldout_words"] > 0
    # Prose dominates; templates are the minority source and never lose a word to the held-out set.
    assert sp.stats["prose"] > 3 * sp.stats["templates"] > 0
    assert not (sp.heldout_words & template_vocabulary())
    # Deterministic: the same call gives the same split, another seed another one.
    assert sentence_splits(0) == sp
    assert set(sentence_splits(1).test) != test


# ---- hotwords -----------------------------------------------------------------------------------------
def test_pseudo_words_are_invented_and_pools_disjoint() -> None:
    words = pseudo_words()
    assert len(words) >= 500 and len(set(words)) == len(words)
    assert pseudo_words() == words  # deterministic
    vocab = common_words()
    assert all(re.fullmatch(r"[a-z]{5,10}", w) and w not in vocab for w in words)
    pools = hotword_pools()
    assert len(pools.test) >= 150 and len(pools.train) >= 300
    assert not set(pools.train) & set(pools.test) and not set(pools.train) & set(pools.dev)
    assert not set(pools.dev) & set(pools.test)


def test_hotword_sentences_and_prompts() -> None:
    rng = random.Random(3)
    pools = hotword_pools()
    prose = sentence_splits(0).train
    for _ in range(200):
        text, rare = hotword_sentence(rng, pools.train, prose)
        assert 1 <= len(rare) <= 2 and all(r in text.split() for r in rare)
        assert normalize_text(text) == text
        prompt = make_prompt(rng, rare, pools.train)
        words = parse_prompt(prompt)
        assert set(rare) <= set(words) and 1 <= len(words) - len(rare) <= 3
        assert set(words) <= set(pools.train)
        assert ", " in prompt


def test_plan_texts_prompt_fraction_and_distractor_only() -> None:
    pools = hotword_pools()
    sentences = sentence_splits(0).train
    plans = plan_texts(2000, random.Random(0), sentences, pools.train, prompt_fraction=0.3)
    prompted = [p for p in plans if p.prompt]
    assert 0.25 < len(prompted) / len(plans) < 0.35
    distractor_only = [p for p in prompted if not p.hotwords]
    assert 0.15 < len(distractor_only) / len(prompted) < 0.35
    for p in distractor_only:  # the prompt names words that are not said
        assert not set(parse_prompt(p.prompt)) & set(p.text.split())
    for p in prompted:
        if p.hotwords:
            assert set(p.hotwords) <= set(parse_prompt(p.prompt)) and set(p.hotwords) <= set(p.text.split())
    assert all(not p.prompt and not p.hotwords for p in plans if p not in prompted)
    with pytest.raises(ValueError, match="prompt_fraction"):
        plan_texts(1, random.Random(0), sentences, pools.train, prompt_fraction=1.5)


def test_rare_word_error_rate_hand_made() -> None:
    refs = ["we met zorbeth and kalmira today", "hello quintor", "nothing rare here", "quintor quintor again"]
    hyps = ["we met zorbet and kalmira today", "hello quintor", "nothing rare here", "quintor again"]
    hot = [["zorbeth", "kalmira"], ["quintor"], [], ["quintor"]]
    # occurrences: zorbeth (missed), kalmira (ok), quintor (ok), quintor x2 (one deleted) -> 2 of 5 missed
    assert rare_word_counts(refs, hyps, hot) == (2, 5)
    assert rare_word_error_rate(refs, hyps, hot) == pytest.approx(0.4)
    # The word must be recognised in place: saying it elsewhere does not count.
    assert (
        rare_word_error_rate(["call zorbeth now please"], ["call now please zorbeth"], [["zorbeth"]]) == 1.0
    )
    # Normalisation applies to references, hypotheses and hotwords alike.
    assert rare_word_error_rate(["Call Zorbeth!"], ["call zorbeth"], [["ZORBETH"]]) == 0.0
    assert rare_word_error_rate(["call zorbeth"], [""], [["zorbeth"]]) == 1.0
    assert math.isnan(rare_word_error_rate(["no hotword"], ["no hotword"], [["zorbeth"]]))
    with pytest.raises(ValueError, match="same length"):
        rare_word_error_rate(["a"], [], [[]])
