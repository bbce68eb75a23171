"""Evaluate a checkpoint on a manifest: WER/CER (jiwer, normalised text), greedy and beam search.

    python -m mambaserve.training.evaluate --checkpoint checkpoints/default --manifest data/corpus/test_espeak.jsonl

The last line printed is one JSON object: ``n``, ``wer``, ``cer`` (of the checkpoint's default
decoding method) plus a block per method (``greedy``, ``beam``, ``ctc_greedy``) and the real-time
factor. For manifests with hotwords it adds the rare-word error rate with and without the prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from mambaserve.model.ctc import ctc_greedy
from mambaserve.model.recognizer import Recognizer
from mambaserve.model.scoring import score
from mambaserve.training.dataset import load_audio
from mambaserve.training.hotwords import rare_word_error_rate
from mambaserve.training.manifest import load_manifest
from tqdm import tqdm


def transcribe_manifest(
    recognizer: Any,
    items: Sequence[dict[str, Any]],
    method: str,
    use_prompts: bool,
    batch_size: int,
    progress: bool = True,
    ctc_weight: float | None = None,
) -> tuple[list[str], float]:
    """Hypotheses for every item and the wall time spent (features + encoder + decoding)."""
    hyps: list[str] = []
    wall = 0.0
    for start in tqdm(range(0, len(items), batch_size), desc=method, disable=not progress, leave=False):
        batch = items[start : start + batch_size]
        audio = [load_audio(it["audio"]) for it in batch]
        prompts = [it.get("prompt") if use_prompts else None for it in batch]
        t0 = time.perf_counter()
        feats, lengths = recognizer.features(audio)
        enc = recognizer.encode(feats, lengths)
        if method == "ctc_greedy":
            hyps += [
                recognizer.tokenizer.decode(ids) for ids in ctc_greedy(enc.ctc_logprobs, enc.ctc_lengths)
            ]
        else:
            kwargs = {} if ctc_weight is None else {"ctc_weight": ctc_weight}
            hyps += recognizer.decode(enc, prompts, method=method, **kwargs)
        wall += time.perf_counter() - t0
    return hyps, wall


def evaluate(
    checkpoint: str,
    manifest: str,
    methods: Sequence[str] = ("greedy", "beam", "ctc_greedy"),
    limit: int | None = None,
    batch_size: int = 16,
    threads: int = 0,
    progress: bool = True,
    ctc_weight: float | None = None,
) -> dict[str, Any]:

    if threads:
        torch.set_num_threads(threads)
    recognizer = Recognizer(checkpoint)
    items, _ = load_manifest(manifest)
    items = items[:limit] if limit else items
    refs = [it["text"] for it in items]
    audio_seconds = sum(float(it["duration"]) for it in items)
    has_prompts = any(it.get("prompt") for it in items)
    hotwords = [it.get("hotwords") or [] for it in items]
    result: dict[str, Any] = {"n": len(items), "manifest": manifest, "audio_seconds": round(audio_seconds, 2)}
    for method in methods:
        hyps, wall = transcribe_manifest(recognizer, items, method, True, batch_size, progress, ctc_weight)
        block = score(refs, hyps)._asdict()
        block["rtfx"] = audio_seconds / wall if wall else 0.0
        if any(hotwords):
            block["rare_word_error_rate"] = rare_word_error_rate(refs, hyps, hotwords)
            if has_prompts and method != "ctc_greedy":
                no_prompt, _ = transcribe_manifest(
                    recognizer, items, method, False, batch_size, progress, ctc_weight
                )
                block["rare_word_error_rate_without_prompt"] = rare_word_error_rate(refs, no_prompt, hotwords)
                block["without_prompt"] = score(refs, no_prompt)._asdict()
        result[method] = block
    default = recognizer.config.decoding.method
    chosen = result.get(default) or result[methods[0]]
    result.update(method=default if default in result else methods[0], wer=chosen["wer"], cer=chosen["cer"])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--method", choices=["greedy", "beam", "ctc_greedy", "all"], default="all")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--ctc-weight", type=float, help="joint CTC weight for beam search (default: checkpoint's)"
    )
    args = parser.parse_args(argv)
    methods = ("greedy", "beam", "ctc_greedy") if args.method == "all" else (args.method,)
    result = evaluate(
        args.checkpoint,
        args.manifest,
        methods,
        args.limit,
        args.batch_size,
        args.threads,
        ctc_weight=args.ctc_weight,
    )
    for method in methods:
        block = result[method]
        print(
            f"{method:>11}: WER {100 * block['wer']:.2f}%  CER {100 * block['cer']:.2f}%  RTFx {block['rtfx']:.1f}"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
