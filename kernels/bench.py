"""Benchmark the kernels: `make bench-kernels` / `python -m mambaserve.kernels.bench`.

On a CUDA GPU it prints (1) each Triton kernel's achieved bandwidth (minimum bytes it must move / time)
next to the device's measured copy bandwidth, the PyTorch path on the same GPU and mamba-ssm /
causal-conv1d where importable, and (2) batched decode throughput (conv update + state update) at
batch 1..256 for a d_model=768 Mamba (d_inner 1536, N 16, W 4). Without a GPU it says so and exits 0:
nothing is measured. `--cpu` times the PyTorch CPU decode step instead (what CPU serving runs per
token). `--smoke` runs the GPU code path on tiny shapes under TRITON_INTERPRET=1 to check the script
itself; its timings are meaningless and labelled so.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import inputs
from .torch_ops import causal_conv1d_fn_torch, causal_conv1d_update_torch, selective_state_update_torch


@dataclass
class Config:
    d_inner: int = 1536
    d_state: int = 16
    d_conv: int = 4
    layers: int = 24
    prefill_batch: int = 4
    prefill_len: int = 2048
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


SMOKE = Config(d_inner=40, d_state=5, d_conv=4, layers=2, prefill_batch=2, prefill_len=9, batches=(1, 3))


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Seconds per call: CUDA events via triton.testing.do_bench on a GPU, perf_counter medians else."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3

    def cpu_time(fn, reps: int = 30) -> float:
        fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    return cpu_time


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes per second of a device-to-device torch copy (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / _timer(device)(lambda: dst.copy_(src))


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def _mamba_ssm():
    """mamba-ssm's GPU ops where importable (its CUDA scan needs the compiled extension)."""
    found = {}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        found["selective_scan"] = selective_scan_fn
    except ImportError:
        pass
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        found["selective_state_update"] = selective_state_update
    except ImportError:
        pass
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update

        found["causal_conv1d_fn"] = causal_conv1d_fn
        found["causal_conv1d_update"] = causal_conv1d_update
    except ImportError:
        pass
    return found


def kernel_table(cfg: Config, device: torch.device, dtype: torch.dtype, copy_bps: float) -> list[dict]:
    from .causal_conv1d_triton import causal_conv1d_fn_triton, causal_conv1d_update_triton
    from .scan_cpu import selective_scan_cpu
    from .selective_scan_triton import selective_scan_triton
    from .selective_state_update_triton import selective_state_update_triton

    timer = _timer(device)
    theirs = _mamba_ssm() if device.type == "cuda" else {}
    b, dim, n, w, length = cfg.prefill_batch, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.prefill_len
    rows = []

    def row(name, shape, ours, torch_path, bytes_moved, other=None):
        t = timer(ours)
        rows.append(
            dict(
                kernel=name,
                shape=shape,
                ms=t * 1e3,
                gbps=bytes_moved / t / 1e9,
                pct_copy=100 * bytes_moved / t / copy_bps,
                torch_ms=timer(torch_path) * 1e3 if torch_path else None,
                mamba_ms=timer(other) * 1e3 if other else None,
            )
        )

    scan = inputs.scan_inputs(b, dim, n, length, dtype=dtype, device=device)
    out = torch.empty_like(scan["u"])
    last = torch.empty(b, dim, n, device=device)
    moved = _nbytes(scan["u"], scan["delta"], scan["B"], scan["C"], scan["z"], scan["A"], out) + 2 * _nbytes(
        last
    )
    mamba_scan = None
    if "selective_scan" in theirs:
        kw = {k: v for k, v in scan.items() if k != "initial_state"}  # mamba-ssm has no initial state
        mamba_scan = lambda: theirs["selective_scan"](**kw, return_last_state=True)  # noqa: E731
    row(
        "selective_scan",
        f"B={b} D={dim} N={n} L={length}",
        lambda: selective_scan_triton(**scan, return_last_state=True, out=out, last_state_out=last),
        lambda: selective_scan_cpu(**scan, return_last_state=True),
        moved,
        mamba_scan,
    )

    conv = inputs.conv_inputs(b, dim, w, length, dtype=dtype, device=device)
    cout = torch.empty_like(conv["x"])
    mamba_conv = None
    if "causal_conv1d_fn" in theirs:
        mamba_conv = functools.partial(
            theirs["causal_conv1d_fn"], conv["x"], conv["weight"], conv["bias"], activation="silu"
        )
    row(
        "causal_conv1d_fn",
        f"B={b} D={dim} W={w} L={length}",
        lambda: causal_conv1d_fn_triton(**conv, out=cout),
        lambda: causal_conv1d_fn_torch(**conv),
        _nbytes(conv["x"], conv["weight"], conv["initial_states"], cout),
        mamba_conv,
    )

    big = max(cfg.batches)
    step = inputs.state_update_inputs(big, dim, n, dtype=dtype, device=device)
    sout = torch.empty(big, dim, dtype=dtype, device=device)
    moved = 2 * _nbytes(step["state"]) + _nbytes(
        step["x"], step["dt"], step["z"], step["B"], step["C"], step["A"], sout
    )
    mamba_step = None
    if "selective_state_update" in theirs:
        mamba_step = lambda: theirs["selective_state_update"](**step)  # noqa: E731
    row(
        "selective_state_update",
        f"B={big} D={dim} N={n}",
        lambda: selective_state_update_triton(**step, out=sout),
        lambda: selective_state_update_torch(**step),
        moved,
        mamba_step,
    )

    cu = inputs.conv_inputs(big, dim, w, dtype=dtype, state_dtype=dtype, device=device)
    cuout = torch.empty(big, dim, dtype=dtype, device=device)
    mamba_cu = None
    if "causal_conv1d_update" in theirs:
        mamba_cu = functools.partial(
            theirs["causal_conv1d_update"], cu["x"], cu["conv_state"], cu["weight"], cu["bias"], "silu"
        )
    row(
        "causal_conv1d_update",
        f"B={big} D={dim} W={w}",
        lambda: causal_conv1d_update_triton(**cu, out=cuout),
        lambda: causal_conv1d_update_torch(**cu),
        2 * _nbytes(cu["conv_state"]) + _nbytes(cu["x"], cu["weight"], cuout),
        mamba_cu,
    )
    return rows


def decode_table(cfg: Config, device: torch.device, dtype: torch.dtype, use_triton: bool) -> list[dict]:
    """Per-layer decode step (conv update + state update) at each batch; tokens/s for cfg.layers layers
    counts only these two ops (no projections, norms or sampling)."""
    if use_triton:
        from .causal_conv1d_triton import causal_conv1d_update_triton as conv_update
        from .selective_state_update_triton import selective_state_update_triton as state_update
    else:
        conv_update, state_update = causal_conv1d_update_torch, selective_state_update_torch
    timer = _timer(device)
    rows = []
    for batch in cfg.batches:
        cu = inputs.conv_inputs(batch, cfg.d_inner, cfg.d_conv, dtype=dtype, state_dtype=dtype, device=device)
        st = inputs.state_update_inputs(batch, cfg.d_inner, cfg.d_state, dtype=dtype, device=device)

        def one_layer(cu=cu, st=st):
            xc = conv_update(**cu)
            return state_update(**st | {"x": xc})

        with torch.no_grad():
            t = timer(one_layer)
        rows.append(dict(batch=batch, us_per_layer=t * 1e6, tokens_per_s=batch / (t * cfg.layers)))
    return rows


def _print_kernels(rows: list[dict], copy_bps: float, label: str) -> None:
    print(f"\nKernels ({label}); device copy bandwidth {copy_bps / 1e9:.1f} GB/s")
    print(
        f"{'kernel':24} {'shape':28} {'ms':>9} {'GB/s':>8} {'%copy':>6} {'torch ms':>9} {'x torch':>8} {'mamba-ssm ms':>12}"
    )
    for r in rows:
        torch_ms = f"{r['torch_ms']:9.3f}" if r["torch_ms"] else f"{'-':>9}"
        speedup = f"{r['torch_ms'] / r['ms']:8.1f}" if r["torch_ms"] else f"{'-':>8}"
        mamba = f"{r['mamba_ms']:12.3f}" if r["mamba_ms"] else f"{'n/a':>12}"
        print(
            f"{r['kernel']:24} {r['shape']:28} {r['ms']:9.3f} {r['gbps']:8.1f} {r['pct_copy']:6.1f} {torch_ms} {speedup} {mamba}"
        )


def _print_decode(rows: list[dict], cfg: Config, label: str) -> None:
    print(
        f"\nDecode step, conv update + state update, d_inner={cfg.d_inner} N={cfg.d_state} W={cfg.d_conv} ({label})"
    )
    print(f"{'batch':>6} {'us/layer':>10} {f'tokens/s ({cfg.layers} layers, these ops only)':>40}")
    for r in rows:
        print(f"{r['batch']:6d} {r['us_per_layer']:10.1f} {r['tokens_per_s']:40.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the mambaserve kernels (needs CUDA; --cpu for the CPU path)."
    )
    parser.add_argument("--cpu", action="store_true", help="time the PyTorch CPU decode step instead")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes under TRITON_INTERPRET=1: checks the script only"
    )
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for --cpu")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    if args.cpu:
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = Config(batches=(1, 2, 4, 8, 16, 32))
        label = (
            f"PyTorch CPU path, {torch.get_num_threads()} threads, {args.dtype} activations, fp32 state math"
        )
        _print_decode(decode_table(cfg, torch.device("cpu"), dtype, use_triton=False), cfg, label)
        return 0
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--smoke needs TRITON_INTERPRET=1 set before Python starts", file=sys.stderr)
            return 2
        cpu = torch.device("cpu")
        label = "INTERPRETER SMOKE RUN ON CPU: timings are meaningless"
        copy_bps = copy_bandwidth(cpu, 1 << 20)
        _print_kernels(kernel_table(SMOKE, cpu, torch.float32, copy_bps), copy_bps, label)
        _print_decode(decode_table(SMOKE, cpu, torch.float32, use_triton=True), SMOKE, label)
        return 0
    if not torch.cuda.is_available():
        print(
            "mambaserve.kernels.bench needs a CUDA GPU: none is visible, so nothing was measured.\n"
            "(`--cpu` times the PyTorch CPU decode path; `TRITON_INTERPRET=1 ... --smoke` checks this script.)"
        )
        return 0
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    copy_bps = copy_bandwidth(device, 1 << 30)
    cfg = Config()
    _print_kernels(kernel_table(cfg, device, dtype, copy_bps), copy_bps, f"{name}, {args.dtype}")
    _print_decode(
        decode_table(cfg, device, dtype, use_triton=True), cfg, f"{name}, Triton kernels, {args.dtype}"
    )
    _print_decode(
        decode_table(cfg, device, dtype, use_triton=False), cfg, f"{name}, PyTorch path, {args.dtype}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
