"""Decode-step speed in this process: eager PyTorch step vs the ONNX Runtime step, side by side.

    python -m mambaserve.build.decoder_step_bench --checkpoint DIR [--batches 1,16] [--tokens 32]
                                                   [--repeats 7] [--step-onnx decoder_step.onnx]

Runs the real ``greedy_search`` from random prefixes (end-of-sequence disabled, so every row makes
``--tokens`` steps) with each step implementation in turn, alternating them repeat by repeat so both
see the same machine load, with 1 torch thread and 1 ONNX Runtime thread (as served). Prints ms per
decode step (a step advances every row of the batch by one token) and the median over repeats.
Without ``--step-onnx`` the step is exported to a temporary file first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def measure(
    decoder, steps: dict, batch: int, tokens: int, repeats: int, seed: int = 0
) -> dict[str, list[float]]:
    """ms per decode step of each named step function, `repeats` alternating runs each."""
    import torch
    from mambaserve.model.search import greedy_search

    g = torch.Generator().manual_seed(seed)
    d, vocab = decoder.config.mamba.d_model, decoder.embed.num_embeddings
    prefix = torch.randn(batch, 40, d, generator=g)
    prompts = [torch.randint(4, vocab, (3,), generator=g).tolist() for _ in range(batch)]
    with torch.inference_mode():
        start = decoder.prefill(prefix, torch.full((batch,), 40), prompts)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats + 1):  # the first round warms up and is dropped
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            state = start[1].clone()
            t0 = time.perf_counter()
            with torch.inference_mode():
                greedy_search(
                    decoder, None, prompts, [tokens] * batch, -1, start=(start[0], state), step=steps[name]
                )
            if r:
                times[name].append(1000 * (time.perf_counter() - t0) / tokens)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mambaserve.build.decoder_step_bench", description=__doc__.splitlines()[0]
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--step-onnx", default=None, help=f"an exported {'decoder_step.onnx'} (default: export one now)"
    )
    p.add_argument("--batches", default="1,16")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)

    import torch
    from mambaserve.model.checkpoint import load_checkpoint
    from mambaserve.model.onnx_step import OnnxDecodeStep

    torch.set_num_threads(1)
    decoder = load_checkpoint(args.checkpoint).model.decoder.eval()
    path = args.step_onnx
    if path is None:
        from mambaserve.build.export.decoder_step import export_decoder_step
        from mambaserve.build.export.modules import DecoderStepForExport

        path = Path(tempfile.mkdtemp(prefix="decoder-step-")) / "decoder_step.onnx"
        export_decoder_step(DecoderStepForExport(decoder), path)
    steps = {"torch": decoder.step, "onnx": OnnxDecodeStep(path, threads=1)}
    c = decoder.config.mamba
    print(
        f"decoder: {c.n_layers} layers, d_model {c.d_model}, d_state {c.d_state}, vocab {decoder.embed.num_embeddings}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(
        "| batch | torch ms/step (median) | onnx ms/step (median) | speed-up | torch / onnx ms per row-token |"
    )
    print("|---:|---:|---:|---:|---:|")
    for batch in [int(b) for b in args.batches.split(",")]:
        t = measure(decoder, steps, batch, args.tokens, args.repeats)
        a, b = statistics.median(t["torch"]), statistics.median(t["onnx"])
        print(
            f"| {batch} | {a:.3f} | {b:.3f} | {a / b:.1f}x | {a / batch:.3f} / {b / batch:.3f} |", flush=True
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
