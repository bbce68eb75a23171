"""JSONL speech manifests: one utterance per line.

Fields: ``id`` (str), ``audio`` (path; a relative path is relative to the manifest's folder),
``text`` (the normalised transcript), ``duration`` (seconds), and optionally ``prompt`` (str, "" for
none), ``hotwords`` (the rare words the text contains) and ``voice`` (how it was synthesised, e.g.
"espeak:en-gb+m3:s155:p45" or "piper:joe:..."; absent for real recordings).

Bad items are a fact of life with user data. `validate_items` and `load_manifest` skip each bad item,
count it by reason and log one summary line (``skipped 3 of 120 items: 1 unreadable audio, 2 empty
text``): they never crash on bad data and never drop an item silently.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
from mambaserve.contract.spec import SAMPLE_RATE

__all__ = [
    "REQUIRED_FIELDS",
    "SAMPLE_RATE",
    "ValidationReport",
    "load_manifest",
    "read_manifest",
    "validate_items",
    "write_manifest",
]

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "audio", "text", "duration")
OPTIONAL_FIELDS = ("prompt", "hotwords", "voice")

# Skip reasons, in the order a summary lists them.
MALFORMED = "malformed line"
MISSING_FIELD = "missing field"
EMPTY_TEXT = "empty text"
MISSING_AUDIO = "missing audio"
UNREADABLE = "unreadable audio"
EMPTY_AUDIO = "empty audio"
WRONG_RATE = "wrong sample rate"
DURATION_MISMATCH = "duration mismatch"
REASONS = (
    MALFORMED,
    MISSING_FIELD,
    EMPTY_TEXT,
    MISSING_AUDIO,
    UNREADABLE,
    EMPTY_AUDIO,
    WRONG_RATE,
    DURATION_MISMATCH,
)


@dataclass
class ValidationReport:
    """How many items were seen and why each skipped one was skipped."""

    total: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (id, reason, detail), first few

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, item_id: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 20:
            self.examples.append((item_id, reason, detail))

    def merge(self, other: ValidationReport) -> None:
        self.total += other.total
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[: max(0, 20 - len(self.examples))])

    def summary(self) -> str:
        if not self.n_skipped:
            return f"all {self.total} items ok"
        order = sorted(self.skipped, key=lambda r: (REASONS.index(r) if r in REASONS else len(REASONS), r))
        parts = ", ".join(f"{self.skipped[r]} {r}" for r in order)
        return f"skipped {self.n_skipped} of {self.total} items: {parts}"

    def log(self, source: str = "") -> None:
        prefix = f"{source}: " if source else ""
        if self.n_skipped:
            first = "; ".join(f"{i!r} {r}{f' ({d})' if d else ''}" for i, r, d in self.examples[:3])
            log.warning("%s%s (e.g. %s)", prefix, self.summary(), first)
        else:
            log.info("%s%s", prefix, self.summary())


def _resolve(audio: str, base: Path) -> str:
    path = Path(audio)
    return str(path if path.is_absolute() else (base / path))


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Parse a JSONL manifest; relative `audio` paths become absolute. Strict: a malformed line raises
    ValueError naming the file and line (use `load_manifest` to skip and count bad lines instead)."""
    items, report = _parse(Path(path))
    if report.n_skipped:
        item_id, reason, detail = report.examples[0]
        raise ValueError(f"{path}: {reason} at {item_id}: {detail}")
    return items


def _parse(path: Path) -> tuple[list[dict[str, Any]], ValidationReport]:
    base = path.resolve().parent
    report = ValidationReport()
    items: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.total += 1
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                report.add_skip(f"line {lineno}", MALFORMED, str(e))
                continue
            if not isinstance(item, dict):
                report.add_skip(f"line {lineno}", MALFORMED, "not a JSON object")
                continue
            if isinstance(item.get("audio"), str):
                item["audio"] = _resolve(item["audio"], base)
            items.append(item)
    report.kept = len(items)
    return items, report


def write_manifest(path: str | Path, items: Iterable[dict[str, Any]]) -> int:
    """Write items as JSONL; audio under the manifest's folder is stored relative to it, so the
    folder can be moved or copied as a whole. Returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for item in items:
            missing = [k for k in REQUIRED_FIELDS if k not in item]
            if missing:
                raise ValueError(f"write_manifest: item {item.get('id')!r} lacks field(s) {missing}")
            out = dict(item)
            audio = Path(out["audio"]).resolve()
            if audio.is_relative_to(base):
                out["audio"] = os.path.relpath(audio, base)
            else:
                out["audio"] = str(audio)
            out["duration"] = round(float(out["duration"]), 4)
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def _check(item: dict[str, Any], tolerance_s: float, sample_rate: int) -> tuple[str, str] | None:
    missing = [k for k in REQUIRED_FIELDS if k not in item]
    if missing:
        return MISSING_FIELD, f"lacks {', '.join(missing)}"
    text = item["text"]
    if not isinstance(text, str) or not text.strip():
        return EMPTY_TEXT, ""
    audio = item["audio"]
    if not isinstance(audio, str) or not os.path.isfile(audio):
        return MISSING_AUDIO, str(audio)
    try:
        info = sf.info(audio)
    except Exception as e:  # soundfile raises several types for corrupt files
        return UNREADABLE, f"{audio}: {e}".splitlines()[0][:200]
    if info.frames <= 0:
        return EMPTY_AUDIO, audio
    if info.samplerate != sample_rate:
        return WRONG_RATE, f"{info.samplerate} Hz, need {sample_rate} Hz"
    try:
        duration = float(item["duration"])
    except (TypeError, ValueError):
        return MISSING_FIELD, f"duration {item['duration']!r} is not a number"
    actual = info.frames / info.samplerate
    if not math.isfinite(duration) or abs(duration - actual) > tolerance_s:
        return DURATION_MISMATCH, f"manifest says {duration:.3f} s, file has {actual:.3f} s"
    return None


def validate_items(
    items: Iterable[dict[str, Any]],
    *,
    tolerance_s: float = 0.1,
    sample_rate: int = SAMPLE_RATE,
    source: str = "",
    log_summary: bool = True,
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Keep the items whose audio is readable, non-empty, at `sample_rate`, whose text is non-empty and
    whose duration matches the file within `tolerance_s`. Reads only the audio headers."""
    report = ValidationReport()
    good: list[dict[str, Any]] = []
    for item in items:
        report.total += 1
        problem = _check(item, tolerance_s, sample_rate)
        if problem:
            report.add_skip(str(item.get("id", f"item {report.total}")), *problem)
        else:
            good.append(item)
    report.kept = len(good)
    if log_summary:
        report.log(source)
    return good, report


def load_manifest(
    path: str | Path, *, tolerance_s: float = 0.1, sample_rate: int = SAMPLE_RATE
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Read and validate a manifest: (good items with absolute audio paths, report covering every line)."""
    items, report = _parse(Path(path))
    good, checked = validate_items(items, tolerance_s=tolerance_s, sample_rate=sample_rate, log_summary=False)
    report.skipped.update(checked.skipped)
    report.examples.extend(checked.examples[: max(0, 20 - len(report.examples))])
    report.kept = len(good)
    report.log(str(path))
    return good, report
