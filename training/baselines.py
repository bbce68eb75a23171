"""The pocketsphinx baseline, kept for its callers (make_default's model card); the comparison
systems live in `peers.py`.

    python -m mambaserve.training.baselines --manifest data/corpus/test_espeak.jsonl [--limit N] [--system whisper-tiny.en]

Prints progress, then as its LAST line one JSON object:
``{"system": "pocketsphinx", "manifest": ..., "n": ..., "wer": ..., "cer": ..., "rtfx": ...}`` (jiwer,
corpus-level, on `normalize_text`-ed references and hypotheses, the same scoring every other
evaluation here uses).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .manifest import load_manifest
from .peers import PEERS, Pocketsphinx, evaluate_peer, make_peer, warm_up

__all__ = ["PocketsphinxRecognizer", "evaluate_manifest", "main"]

PocketsphinxRecognizer = Pocketsphinx  # the name this module used to define


def evaluate_manifest(
    manifest: str | Path, limit: int | None = None, progress: bool = True, system: str = Pocketsphinx.name
) -> dict[str, Any]:
    items, _ = load_manifest(manifest)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"evaluate_manifest: {manifest} has no usable items")
    peer = make_peer(system)
    warm_up(peer)
    result = evaluate_peer(peer, items, progress=progress)
    result.pop("hyps")
    return {"system": result.pop("system"), "manifest": str(manifest), **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A peer's (default pocketsphinx) WER/CER on a manifest.")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="only the first N usable items")
    parser.add_argument("--system", choices=sorted(PEERS), default=Pocketsphinx.name)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = evaluate_manifest(args.manifest, args.limit, system=args.system)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
