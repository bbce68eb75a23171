"""A classical recogniser to compare against: pocketsphinx with the en-us model shipped in its wheel.

    python -m mambaserve.training.baselines --manifest data/corpus/test_espeak.jsonl [--limit N]

Prints progress, then as its LAST line one JSON object:
``{"system": "pocketsphinx", "manifest": ..., "n": ..., "wer": ..., "cer": ...}`` (jiwer, corpus-level, on
`normalize_text`-ed references and hypotheses, the same scoring every other evaluation here uses).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mambaserve.contract.spec import SAMPLE_RATE
from mambaserve.model.scoring import score
from mambaserve.model.text_norm import normalize_text

from .dataset import load_audio
from .manifest import load_manifest

__all__ = ["PocketsphinxRecognizer", "evaluate_manifest", "main"]


class PocketsphinxRecognizer:
    """pocketsphinx's default en-us acoustic model, dictionary and 3-gram LM (all inside the wheel)."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=SAMPLE_RATE, logfn="/dev/null")

    def transcribe(self, audio: np.ndarray) -> str:
        """Text for float32 16 kHz mono audio in [-1, 1]."""
        pcm = np.clip(np.round(np.asarray(audio, dtype=np.float32) * 32767.0), -32768, 32767).astype(np.int16)
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return normalize_text(hyp.hypstr) if hyp is not None else ""


def evaluate_manifest(
    manifest: str | Path, limit: int | None = None, progress: bool = True
) -> dict[str, Any]:
    from tqdm import tqdm

    items, _ = load_manifest(manifest)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"evaluate_manifest: {manifest} has no usable items")
    rec = PocketsphinxRecognizer()
    hyps = [
        rec.transcribe(load_audio(it["audio"]))
        for it in tqdm(items, desc="pocketsphinx", unit="utt", disable=not progress)
    ]
    result = score([it["text"] for it in items], hyps)._asdict()
    return {"system": "pocketsphinx", "manifest": str(manifest), "n": len(items), **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pocketsphinx baseline WER/CER on a manifest.")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="only the first N usable items")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = evaluate_manifest(args.manifest, args.limit)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
