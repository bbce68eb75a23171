"""LibriSpeech → manifest: real users bring real speech.

Layout: ``<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter (lines ``<utt-id> TRANSCRIPT``). `root` may be the
LibriSpeech folder, one split folder, or any folder above them: every ``*.trans.txt`` below it is read.

    python -m mambaserve.training.librispeech /data/LibriSpeech/test-clean --out data/ls-test-clean.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile as sf
from mambaserve.model.text_norm import normalize_text

from .manifest import (
    EMPTY_AUDIO,
    EMPTY_TEXT,
    MALFORMED,
    MISSING_AUDIO,
    SAMPLE_RATE,
    UNREADABLE,
    WRONG_RATE,
    ValidationReport,
    write_manifest,
)

__all__ = ["main", "scan_librispeech"]

log = logging.getLogger(__name__)


def scan_librispeech(
    root: str | Path, splits: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Manifest items (absolute audio paths, normalised text) for every utterance under `root`.

    `splits` (e.g. ["dev-clean"]) keeps only transcripts below folders of those names. Bad
    utterances are skipped and counted by reason in the report, never fatal.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"scan_librispeech: root {root} is not a folder")
    report = ValidationReport()
    items: list[dict[str, Any]] = []
    transcripts = sorted(root.rglob("*.trans.txt"))
    if splits:
        wanted = set(splits)
        transcripts = [
            t
            for t in transcripts
            if wanted.intersection(t.relative_to(root).parts[:-1]) or root.name in wanted
        ]
    for trans in transcripts:
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            report.total += 1
            utt_id, _, raw_text = line.strip().partition(" ")
            text = normalize_text(raw_text)
            if not utt_id or "/" in utt_id:
                report.add_skip(f"{trans.name}:{lineno}", MALFORMED, line[:80])
                continue
            if not text:
                report.add_skip(utt_id, EMPTY_TEXT)
                continue
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                report.add_skip(utt_id, MISSING_AUDIO, str(audio))
                continue
            try:
                info = sf.info(str(audio))
            except Exception as e:  # corrupt or truncated FLAC
                report.add_skip(utt_id, UNREADABLE, str(e).splitlines()[0][:200])
                continue
            if info.samplerate != SAMPLE_RATE:
                report.add_skip(utt_id, WRONG_RATE, f"{info.samplerate} Hz")
                continue
            if info.frames <= 0:
                report.add_skip(utt_id, EMPTY_AUDIO, str(audio))
                continue
            items.append(
                {
                    "id": utt_id,
                    "audio": str(audio.resolve()),
                    "text": text,
                    "duration": info.frames / info.samplerate,
                }
            )
    report.kept = len(items)
    if not transcripts:
        log.warning("scan_librispeech: no *.trans.txt under %s", root)
    report.log(f"LibriSpeech {root}")
    return items, report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="LibriSpeech folder, a split folder, or a folder above them")
    parser.add_argument("--out", type=Path, required=True, help="manifest (JSONL) to write")
    parser.add_argument("--splits", nargs="*", help="only these split folders, e.g. dev-clean test-clean")
    parser.add_argument("--limit", type=int, default=None, help="keep at most this many utterances")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    items, report = scan_librispeech(args.root, args.splits)
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        print(f"no usable utterances under {args.root} ({report.summary()})", file=sys.stderr)
        return 1
    write_manifest(args.out, items)
    hours = sum(it["duration"] for it in items) / 3600
    print(f"wrote {len(items)} utterances ({hours:.2f} h) to {args.out}; {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
