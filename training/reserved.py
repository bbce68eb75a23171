"""What is reserved for evaluation: never trained, tuned or selected on.

* **Voices**: the CMU voices, i.e. flite's (kal, kal16, awb, awb_time, rms, slt) and festival's
  (kal_diphone and the CMU ARCTIC HTS/clustergen voices such as cmu_us_slt_arctic_hts). The flite
  and festival engines as a whole are kept out of training too, so `eval_cmu` measures speech from
  a synthesiser the model never heard.
* **Text**: Debian's package descriptions (short and long, from the apt lists) and the reference
  transcripts of the real human recordings in `eval_human` (`evalsets.HUMAN_TRANSCRIPTS`).

The training data code calls `check_training_voice` for every voice it plans and
`drop_reserved_sentences` on its sentence pool: a reserved voice is refused with an error, a
sentence that occurs in the reserved text is removed (exact match after `normalize_text`, or a
reserved sentence of 4+ words contained in it). The descriptions are read from
``/var/lib/apt/lists`` (``*_Packages*`` short descriptions and ``*_i18n_Translation-en*`` long ones;
`make system-deps` runs ``apt-get update -o Acquire::Languages=en`` so that the long ones are there).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from mambaserve.model.text_norm import normalize_text

__all__ = [
    "RESERVED_ENGINES",
    "RESERVED_VOICES",
    "ReservedVoiceError",
    "check_training_items",
    "check_training_voice",
    "debian_descriptions",
    "drop_reserved_sentences",
    "is_reserved_voice",
    "reserved_sentences",
]

RESERVED_ENGINES = frozenset({"flite", "festival"})
RESERVED_VOICES = frozenset(
    {
        "kal",
        "kal16",
        "awb",
        "awb_time",
        "rms",
        "slt",
        "kal_diphone",
        "ked_diphone",
        "cmu_us_slt_arctic_hts",
        "cmu_us_awb_arctic_hts",
        "cmu_us_rms_arctic_hts",
        "cmu_us_awb_cg",
        "cmu_us_rms_cg",
        "cmu_us_slt_cg",
    }
)
APT_LISTS = "/var/lib/apt/lists"
# Human transcripts reserved as text (eval_human); kept here so training can refuse them without
# importing the evaluation-set builder.
HUMAN_TRANSCRIPTS = (
    "one two three four five six seven eight nine ten",
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "front center",
    "front left",
    "front right",
    "rear center",
    "rear left",
    "rear right",
    "side left",
    "side right",
)


class ReservedVoiceError(ValueError):
    """A voice reserved for evaluation was asked for in training data."""


def is_reserved_voice(name: str) -> bool:
    """Whether a manifest voice name ("engine:voice:...") names a reserved engine or voice."""
    fields = name.lower().split(":")
    if fields[0] in RESERVED_ENGINES:
        return True
    tokens = {t for f in fields for t in re.split(r"[+\s]", f) if t}
    return bool(tokens & RESERVED_VOICES)


def check_training_voice(name: str) -> str:
    """Return `name`, or raise ReservedVoiceError when it is reserved for evaluation."""
    if is_reserved_voice(name):
        raise ReservedVoiceError(
            f"voice {name!r} is reserved for evaluation (reserved.py): never train on it"
        )
    return name


# ---- text -----------------------------------------------------------------------------------------
def _read_list(path: str) -> str:
    """An apt list's text; apt stores them compressed (.lz4, .gz, .xz), apt-helper reads any of them."""
    if path.endswith(("_Packages", "_Translation-en")):
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    out = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], capture_output=True, check=True)
    return out.stdout.decode("utf-8", errors="replace")


def _description_blocks(path: str) -> Iterator[str]:
    """Each Description / Description-en field of one apt list as text: the short description, a
    blank line, then the long description's paragraphs (wrapped lines joined) separated by blank lines."""
    try:
        text = _read_list(path)
    except (OSError, subprocess.CalledProcessError):
        return
    block: list[list[str]] | None = None

    def flush(b: list[list[str]]) -> str:
        return "\n\n".join(" ".join(p) for p in b if p)

    for line in text.splitlines():
        if line.startswith(("Description:", "Description-en:")):
            if block:
                yield flush(block)
            block = [[line.split(":", 1)[1].strip()], []]
        elif block is not None and line.startswith(" "):
            stripped = line.strip()
            if stripped == ".":
                block.append([])
            else:
                block[-1].append(stripped)
        elif block is not None:
            yield flush(block)
            block = None
    if block:
        yield flush(block)


def debian_descriptions(lists_dir: str = APT_LISTS) -> tuple[str, ...]:
    """Every distinct package description (short line, then the long text), in file order."""
    paths = _list_paths(lists_dir)
    return tuple(dict.fromkeys(b for p in paths for b in _description_blocks(p) if b.strip()))


_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n\s*\n")


def description_sentences(descriptions: Iterable[str]) -> Iterator[str]:
    """Raw sentences of descriptions: the short description, then each sentence of the long text."""
    for d in descriptions:
        for s in _SENTENCE_END.split(d):
            s = s.strip()
            if s:
                yield s


def _list_paths(lists_dir: str) -> list[str]:
    return sorted(glob.glob(f"{lists_dir}/*_Packages*")) + sorted(glob.glob(f"{lists_dir}/*_Translation-en*"))


@functools.lru_cache(maxsize=2)
def reserved_sentences(lists_dir: str = APT_LISTS) -> frozenset[str]:
    """Normalised reserved sentences: Debian descriptions' sentences and the human transcripts.

    Reading the apt lists takes ~30 s, so the result is cached in ``$MAMBASERVE_CACHE`` keyed by the
    lists' names, sizes and modification times and by this module's code.
    """
    key = hashlib.sha1(Path(__file__).read_bytes())
    key.update(Path(sys.modules[normalize_text.__module__].__file__).read_bytes())
    for p in _list_paths(lists_dir):
        st = os.stat(p)
        key.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = Path(os.environ.get("MAMBASERVE_CACHE", Path.home() / ".cache" / "mambaserve"))
    cache = cache / f"reserved-sentences-{key.hexdigest()[:16]}.json"
    try:
        return frozenset(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    out = {normalize_text(s) for s in description_sentences(debian_descriptions(lists_dir))}
    out.update(normalize_text(t) for t in HUMAN_TRANSCRIPTS)
    out.discard("")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(out)))
        tmp.replace(cache)
    except OSError:
        pass
    return frozenset(out)


def drop_reserved_sentences(
    sentences: Iterable[str], reserved: frozenset[str] | None = None, min_contained_words: int = 4
) -> tuple[list[str], int]:
    """(kept sentences, number dropped): drop a sentence equal to a reserved one, or containing a
    reserved sentence of at least `min_contained_words` words (word-boundary match)."""
    reserved = reserved_sentences() if reserved is None else reserved
    long_reserved = [r for r in reserved if len(r.split()) >= min_contained_words]
    # Index the long reserved sentences by their first two words: a containment test then only
    # looks at reserved sentences that can start at one of the sentence's word positions.
    index: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for r in long_reserved:
        w = tuple(r.split())
        index.setdefault(w[:2], []).append(w)
    kept: list[str] = []
    dropped = 0
    for s in sentences:
        if s in reserved or _contains(s.split(), index):
            dropped += 1
        else:
            kept.append(s)
    return kept, dropped


def _contains(words: list[str], index: dict[tuple[str, str], list[tuple[str, ...]]]) -> bool:
    for i in range(len(words) - 1):
        for cand in index.get((words[i], words[i + 1]), ()):
            if tuple(words[i : i + len(cand)]) == cand:
                return True
    return False


def reserved_text_stats(lists_dir: str = APT_LISTS) -> dict[str, int]:
    return {
        "descriptions": len(debian_descriptions(lists_dir)),
        "sentences": len(reserved_sentences(lists_dir)),
    }


RESERVED_FAMILIES = frozenset({"cmu", "human"})


def check_training_items(items: Iterable[dict], reserved: frozenset[str] | None = None) -> int:
    """Raise ReservedVoiceError if any manifest item is evaluation-only: a reserved voice, an
    evalsets family ("cmu", "human") or a reserved sentence as its text. Returns the item count.

    For a training data loader to call on its training manifest: it catches an evaluation manifest
    passed as training data by mistake."""
    reserved = reserved_sentences() if reserved is None else reserved
    n = 0
    for it in items:
        n += 1
        voice, fam, text = str(it.get("voice", "")), it.get("family"), it.get("text", "")
        if (voice and is_reserved_voice(voice)) or fam in RESERVED_FAMILIES or text in reserved:
            raise ReservedVoiceError(
                f"item {it.get('id')!r} ({voice or fam}: {text[:60]!r}) is reserved for evaluation: never train on it"
            )
    return n
