"""English sentences for speech synthesis, mined offline, with a train/dev/test split.

Why the standard library: its docstrings and comments are the largest body of edited English prose
that every Python install carries, so the corpus is reproducible without any download. Code-like
sentences are dropped (backticks, doctest prompts, identifiers, URLs, markup, Python names such as
"self"), the rest is normalised with `normalize_text` and kept only if it has 4–20 words that are
all common English words (wordfreq's top 25,000): a small speech model cannot learn to spell a word
it hears once. Mining takes ~10 CPU-seconds, so the result is cached in ``$MAMBASERVE_CACHE`` (default
``~/.cache/mambaserve``), keyed by interpreter, stdlib path, wordfreq version and this code.

A second, smaller source fills everyday templates ("we will meet at the station on friday") with
common words, so the model also hears short conversational sentences; prose dominates
(`template_fraction` of the pool, 0.2 by default).

The split is deterministic (SHA-1 of the seed and the sentence, never Python's salted `hash`) and
open-vocabulary: a set of rare prose words is held out, and every sentence containing one goes to
test, so the test set has words that never occur in training. The stdlib differs between Python
versions, so the exact sentences depend on the interpreter; the rules do not.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import json
import os
import random
import re
import sys
import sysconfig
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mambaserve.model.text_norm import normalize_text

from .reserved import drop_reserved_sentences

__all__ = [
    "MAX_WORDS",
    "MIN_WORDS",
    "SentenceSplits",
    "common_words",
    "sentence_splits",
    "stable_fraction",
    "stdlib_sentences",
    "template_sentences",
]

MIN_WORDS = 4
MAX_WORDS = 20
COMMON_WORDS_N = 25_000

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
# Characters and fragments that only code, markup or paths contain.
_CODE_MARKERS = re.compile(
    r"[`=<>{}\[\]*#\\|~^$@/_\"]|>>>|::|\(\)|://|www\.|\.\.\.|-->|\bsee\b\s+[A-Za-z]+\.[a-z]"
)
_WORD_TOKEN = re.compile(r"^\(?([A-Za-z]+(?:'[a-z]+)?(?:-[a-z]+)*|[0-9]{1,4})[),.;:!?]*\)?$")
# Python names that read as words but only ever mean code ("compare self to other").
_CODE_WORDS = frozenset(
    {"self", "cls", "args", "kwargs", "def", "str", "int", "dict", "func", "obj", "param"}
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ABBREVIATION = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|approx|resp|No|Fig)\.", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    """The normalised forms of wordfreq's most frequent English words."""
    from wordfreq import top_n_list

    words: set[str] = set()
    for w in top_n_list("en", COMMON_WORDS_N):
        words.update(normalize_text(w).split())
    # Single letters other than "a" and "i" are nearly always variable names or list markers in prose.
    return frozenset(w for w in words if len(w) > 1 or w in {"a", "i"})


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )


_DOC_HOLDERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(path: Path) -> Iterator[str]:
    try:
        with warnings.catch_warnings():  # invalid escapes in old test files
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):  # a few stdlib files are Python 2 fixtures
        return
    # Only statement bodies can hold a docstring: walking them alone is 5x faster than ast.walk.
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DOC_HOLDERS):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
        for name in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, name, None)
            if isinstance(children, list):
                stack.extend(reversed(children))


_COMMENT_LINE = re.compile(r"^[ \t]*#+[ \t]?(.*)$")


def _comment_blocks(path: Path) -> Iterator[str]:
    """Runs of consecutive full-line `#` comments, joined: the stdlib's comments are mostly prose."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError):
        return
    block: list[str] = []
    for line in lines:
        m = _COMMENT_LINE.match(line)
        if m:
            block.append(m.group(1).strip())
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def _prose_paragraphs(doc: str) -> Iterator[str]:
    """Paragraphs written as flowing text: indented blocks are code, lists or field tables."""
    for para in re.split(r"\n\s*\n", doc):
        lines = para.split("\n")
        if any(line[:1].isspace() for line in lines):
            continue
        if re.match(r"^\s*([-*+•]|\d+[.)]|:\w+|\.\.\s)", para):
            continue
        yield " ".join(line.strip() for line in lines)


def _is_prose(sentence: str) -> bool:
    if not sentence[:1].isupper():
        return False
    if _CODE_MARKERS.search(sentence) or _ABBREVIATION.search(sentence):
        return False
    tokens = sentence.split()
    for i, tok in enumerate(tokens):
        m = _WORD_TOKEN.match(tok)
        if not m:
            return False
        word = m.group(1)
        if _CODE_WORDS.intersection(word.lower().split("-")):
            return False
        # CamelCase, ALLCAPS and dotted names are identifiers; "I" and a capitalised first word are prose.
        if any(c.isupper() for c in word[1:]) and not (
            word == "I" or (i == 0 and word.isupper() and len(word) == 1)
        ):
            return False
    return True


def _accept(normalised: str, vocabulary: frozenset[str]) -> bool:
    words = normalised.split()
    # A doubled word is a typo or a tuple spelled out ("(None, None)" -> "none none").
    doubled = any(a == b for a, b in itertools.pairwise(words))
    return MIN_WORDS <= len(words) <= MAX_WORDS and not doubled and all(w in vocabulary for w in words)


def _cache_file() -> Path:
    """Mining takes ~10 CPU-seconds; the result is cached per interpreter, stdlib and code version."""
    from importlib.metadata import version

    key = hashlib.sha1()
    for part in (sys.version, sysconfig.get_paths()["stdlib"], version("wordfreq"), str(COMMON_WORDS_N)):
        key.update(part.encode())
    for source in (__file__, sys.modules[normalize_text.__module__].__file__):  # this module and text_norm
        key.update(Path(source).read_bytes())
    root = Path(os.environ.get("MAMBASERVE_CACHE", Path.home() / ".cache" / "mambaserve"))
    return root / f"stdlib-sentences-{key.hexdigest()[:16]}.json"


@functools.lru_cache(maxsize=1)
def stdlib_sentences() -> tuple[str, ...]:
    """Normalised prose sentences from the stdlib's docstrings and comments, deduplicated, in file order."""
    cache = _cache_file()
    try:
        return tuple(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    sentences = _mine_stdlib()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sentences))
        tmp.replace(cache)
    except OSError:  # a read-only home is no reason to fail
        pass
    return sentences


def _mine_stdlib() -> tuple[str, ...]:
    vocabulary = common_words()
    seen: set[str] = set()
    out: list[str] = []
    for path in _stdlib_files():
        paragraphs = [p for doc in _docstrings(path) for p in _prose_paragraphs(doc)]
        paragraphs += list(_comment_blocks(path))
        for para in paragraphs:
            for sentence in _SENTENCE_END.split(para):
                sentence = sentence.strip()
                if not _is_prose(sentence):
                    continue
                norm = normalize_text(sentence)
                if norm not in seen and _accept(norm, vocabulary):
                    seen.add(norm)
                    out.append(norm)
    return tuple(out)


# ---- other packaged English prose -------------------------------------------------------------
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Fortune files that are not English sentences (pictures, other languages, Perl code).
_FORTUNE_SKIP = frozenset({"ascii-art", "art", "translate-me", "perl", "debian"})
_ATTRIBUTION = re.compile(r"^\s*(--|―|~)")
_QUOTES = re.compile(r"[\"“”«»]|(?<![A-Za-z])'|'(?![A-Za-z])")
_PROSE_JUNK = re.compile(r"[`=<>{}\[\]*#\\|~^$@/_]|://|www\.|\t")


def _prose_sentences(text: str, vocabulary: frozenset[str]) -> Iterator[str]:
    """Normalised sentences of running English text (paragraphs joined, quotes and dashes dropped)."""
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(line.strip() for line in para.splitlines() if line.strip())
        para = para.replace("--", ", ").replace("_", " ")
        for sentence in _SENTENCE_END.split(_QUOTES.sub(" ", para)):
            sentence = sentence.strip(" ,;:-")
            if not sentence[:1].isupper() or _PROSE_JUNK.search(sentence) or _ABBREVIATION.search(sentence):
                continue
            norm = normalize_text(sentence)
            if _accept(norm, vocabulary):
                yield norm


def fortune_files(root: Path = FORTUNES_DIR) -> list[Path]:
    """English fortune files of Debian's ``fortunes`` / ``fortunes-min`` (not the offensive set)."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.suffix and not p.is_symlink() and p.name not in _FORTUNE_SKIP
    )


def fortune_sentences(root: Path = FORTUNES_DIR) -> tuple[str, ...]:
    """Sentences of the fortune cookies (attribution lines dropped), deduplicated, in file order."""
    vocabulary = common_words()
    out: dict[str, None] = {}
    for path in fortune_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for cookie in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            body = "\n".join(line for line in cookie.splitlines() if not _ATTRIBUTION.match(line))
            # A cookie is one paragraph even when wrapped; poems and dialogues end lines without a stop.
            body = re.sub(r"(?<![.!?:;,])\n(?=\s*[A-Z])", ". ", body.strip())
            out.update(dict.fromkeys(_prose_sentences(body, vocabulary)))
    return tuple(out)


def book_sentences() -> tuple[str, ...]:
    """Sentences of public-domain books shipped inside PyPI wheels: arpabo's alice.txt (Lewis
    Carroll, Alice's Adventures in Wonderland, chapter I). Empty when the wheel is not installed."""
    try:
        from importlib.resources import files

        text = (files("arpabo") / "data" / "alice.txt").read_text(encoding="utf-8")
    except (ImportError, OSError):
        return ()
    vocabulary = common_words()
    # The text is wrapped in paragraphs; `word' quotes are its quotation marks.
    text = text.replace("`", " ").replace("'", "'")
    return tuple(dict.fromkeys(_prose_sentences(text, vocabulary)))


@functools.lru_cache(maxsize=1)
def packaged_prose() -> dict[str, tuple[str, ...]]:
    """Every prose source by name: stdlib docstrings/comments, Debian fortunes, books in wheels."""
    return {"stdlib": stdlib_sentences(), "fortunes": fortune_sentences(), "books": book_sentences()}


# ---- templates: everyday sentences, every slot word common --------------------------------------
_SLOTS: dict[str, tuple[str, ...]] = {
    "name": (
        "anna",
        "david",
        "maria",
        "james",
        "sarah",
        "peter",
        "linda",
        "michael",
        "emma",
        "robert",
        "susan",
        "thomas",
        "laura",
        "daniel",
        "helen",
        "paul",
        "alice",
        "george",
        "nancy",
        "frank",
    ),
    "noun": (
        "book",
        "table",
        "window",
        "letter",
        "garden",
        "river",
        "car",
        "phone",
        "picture",
        "box",
        "bottle",
        "chair",
        "door",
        "key",
        "map",
        "ticket",
        "coat",
        "basket",
        "lamp",
        "bag",
        "plate",
        "cup",
        "horse",
        "dog",
        "bird",
        "song",
        "story",
        "bridge",
        "road",
        "train",
    ),
    "nouns": (
        "books",
        "tables",
        "windows",
        "letters",
        "boxes",
        "bottles",
        "chairs",
        "keys",
        "maps",
        "tickets",
        "coats",
        "lamps",
        "bags",
        "plates",
        "cups",
        "horses",
        "dogs",
        "birds",
        "stories",
        "trains",
    ),
    "place": (
        "station",
        "library",
        "market",
        "office",
        "kitchen",
        "school",
        "hospital",
        "hotel",
        "park",
        "museum",
        "airport",
        "church",
        "bank",
        "beach",
        "village",
        "restaurant",
        "garage",
        "harbor",
    ),
    "adj": (
        "small",
        "large",
        "old",
        "new",
        "red",
        "blue",
        "green",
        "quiet",
        "busy",
        "warm",
        "cold",
        "heavy",
        "bright",
        "dark",
        "clean",
        "empty",
        "strange",
        "simple",
        "beautiful",
        "broken",
    ),
    "verb": (
        "found",
        "bought",
        "painted",
        "moved",
        "opened",
        "carried",
        "cleaned",
        "sold",
        "fixed",
        "borrowed",
        "dropped",
        "washed",
        "checked",
        "lost",
        "brought",
        "covered",
    ),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "time": (
        "this morning",
        "last night",
        "yesterday",
        "tomorrow",
        "next week",
        "after lunch",
        "before dinner",
        "in the evening",
        "at noon",
        "on the weekend",
    ),
    "relative": ("brother", "sister", "mother", "father", "uncle", "aunt", "cousin", "friend", "neighbor"),
    "number": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"),
    "hour": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"),
}
_TEMPLATES = (
    "the {adj} {noun} is next to the {noun}",
    "{name} {verb} the {adj} {noun} {time}",
    "can you bring the {noun} to the {place}",
    "we will meet at the {place} on {day}",
    "there are {number} {nouns} in the {place}",
    "{name} said that the {noun} was too {adj}",
    "please put the {noun} near the {adj} {noun}",
    "my {relative} works at the {place} near the river",
    "the meeting starts at {hour} o'clock on {day}",
    "i left my {noun} at the {place} {time}",
    "{name} and {name} walked to the {place} together",
    "have you seen the {adj} {noun} anywhere",
    "the {place} was very {adj} {time}",
    "don't forget to take the {noun} with you",
    "{name} {verb} a {adj} {noun} for her {relative}",
    "it takes {number} minutes to walk to the {place}",
    "my {relative} has a {adj} {noun} and a {adj} {noun}",
    "we waited for the train for {number} minutes",
    "the {noun} in the {place} looks {adj} today",
    "would you like to visit the {place} on {day}",
)


def template_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct filled templates (fewer if the templates run out), deterministic for a seed."""
    rng = random.Random(f"templates:{seed}")
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n and attempts < 50 * n + 100:
        attempts += 1
        template = rng.choice(_TEMPLATES)
        text = re.sub(r"\{(\w+)\}", lambda m: rng.choice(_SLOTS[m.group(1)]), template)
        norm = normalize_text(text)
        if norm not in seen:
            seen.add(norm)
            out.append(norm)
    return out


def template_vocabulary() -> frozenset[str]:
    """Every word a template sentence can contain, here or in hotwords.py's hotword templates
    (these are never held out of training: training sentences are built from them)."""
    from . import hotwords  # imports this module: imported here, not at the top

    words: set[str] = set()
    templates = (*_TEMPLATES, *hotwords._ONE_WORD_TEMPLATES, *hotwords._TWO_WORD_TEMPLATES)
    for t in templates:
        words.update(w for w in normalize_text(re.sub(r"\{\w+\}", " ", t)).split())
    for values in (*_SLOTS.values(), *hotwords._FILL.values()):
        for v in values:
            words.update(normalize_text(v).split())
    return frozenset(words)


# ---- split ------------------------------------------------------------------------------------
def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) that depends only on `parts`: deterministic across runs and machines."""
    digest = hashlib.sha1(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SentenceSplits:
    """Disjoint sentence pools; `heldout_words` occur in `test` and never in `train` or `dev`."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]
    heldout_words: frozenset[str]
    stats: dict[str, int] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def sentence_splits(
    seed: int = 0,
    template_fraction: float = 0.2,
    dev_fraction: float = 0.04,
    test_fraction: float = 0.04,
    heldout_word_fraction: float = 0.15,
) -> SentenceSplits:
    """Split prose + template sentences into train/dev/test pools.

    Held-out words are drawn (by `heldout_word_fraction`) from prose words that occur in 1–2
    sentences and never in a template, so holding them out costs few training sentences.
    """
    if not 0 <= template_fraction < 1:
        raise ValueError(f"template_fraction must be in [0, 1), got {template_fraction}")
    sources = packaged_prose()
    prose_all = list(dict.fromkeys(x for src in sources.values() for x in src))
    prose, n_reserved = drop_reserved_sentences(prose_all)
    n_templates = round(len(prose) * template_fraction / (1 - template_fraction))
    prose_set = set(prose)
    templates, n_reserved_t = drop_reserved_sentences(
        t for t in template_sentences(n_templates, seed) if t not in prose_set
    )
    n_reserved += n_reserved_t

    doc_freq = Counter(w for s in prose for w in set(s.split()))
    protected = template_vocabulary()
    heldout = frozenset(
        w
        for w, c in doc_freq.items()
        if c <= 2 and w not in protected and stable_fraction("heldout-word", seed, w) < heldout_word_fraction
    )
    train: list[str] = []
    dev: list[str] = []
    test: list[str] = []
    n_open = 0
    for s in (*prose, *templates):
        if heldout.intersection(s.split()):
            test.append(s)
            n_open += 1
            continue
        r = stable_fraction("sentence-split", seed, s)
        (dev if r < dev_fraction else test if r < dev_fraction + test_fraction else train).append(s)
    stats = {
        **{f"prose_{name}": len(src) for name, src in sources.items()},
        "dropped_reserved": n_reserved,
        "prose": len(prose),
        "templates": len(templates),
        "train": len(train),
        "dev": len(dev),
        "test": len(test),
        "test_with_heldout_words": n_open,
        "heldout_words": len(heldout),
    }
    return SentenceSplits(tuple(train), tuple(dev), tuple(test), heldout, stats)
