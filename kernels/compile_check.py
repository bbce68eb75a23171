"""Compile every kernel ahead of time for sm_80 and sm_90 on a machine without a GPU.

The interpreter accepts code the GPU compiler rejects (loop-carried type changes, unsupported ops), so
CI compiles each kernel to PTX and cubin for real targets (Triton ships ptxas) and reports the
resource usage ptxas chose (registers, spills). Run `python -m mambaserve.kernels.compile_check`;
must not run under TRITON_INTERPRET=1 (tests start it in a clean subprocess).

Variants per kernel and target: {float32, bfloat16} x {every optional input on, generic strides,
16-byte aligned pointers; every optional input off, unit inner strides as the launcher specialises
them}, with the largest tiles the launch heuristics pick.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

TARGETS = (80, 90)
DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class KernelSpec:
    name: str
    fn: Callable
    roles: dict[str, str]  # pointer arg -> "data" (variant dtype) | "f32" | "idx" | "state"
    flags: tuple[str, ...]  # boolean constexprs; on/off with the variant
    optional: dict[str, str]  # pointer arg -> the flag that enables it
    unit_strides: tuple[str, ...]  # strides that are 1 for contiguous inputs
    blocks_on: dict[str, int]
    blocks_off: dict[str, int]
    warps_on: int
    warps_off: int


def _specs() -> list[KernelSpec]:
    from .causal_conv1d_triton import _conv_fn_kernel, _conv_update_kernel
    from .selective_scan_triton import _scan_kernel
    from .selective_state_update_triton import _state_update_kernel

    return [
        KernelSpec(
            "selective_scan",
            _scan_kernel,
            roles=dict(A_ptr="f32", D_ptr="f32", delta_bias_ptr="f32", h0_ptr="f32", hT_ptr="f32"),
            flags=(
                "HAS_D",
                "HAS_Z",
                "HAS_DELTA_BIAS",
                "DELTA_SOFTPLUS",
                "HAS_H0",
                "STORE_HT",
                "PER_CHANNEL_GROUP",
            ),
            optional=dict(
                D_ptr="HAS_D",
                z_ptr="HAS_Z",
                delta_bias_ptr="HAS_DELTA_BIAS",
                h0_ptr="HAS_H0",
                hT_ptr="STORE_HT",
            ),
            unit_strides=(
                "s_u_l",
                "s_dt_l",
                "s_A_n",
                "s_B_l",
                "s_C_l",
                "s_D_d",
                "s_z_l",
                "s_bias_d",
                "s_h0_n",
                "s_out_l",
                "s_hT_n",
            ),
            blocks_on=dict(BLOCK_D=64, BLOCK_N=16),
            warps_on=4,
            blocks_off=dict(BLOCK_D=16, BLOCK_N=256),
            warps_off=8,
        ),
        KernelSpec(
            "selective_state_update",
            _state_update_kernel,
            roles=dict(state_ptr="state", A_ptr="f32", D_ptr="f32", dt_bias_ptr="f32", idx_ptr="idx"),
            flags=("HAS_D", "HAS_Z", "HAS_DT_BIAS", "DT_SOFTPLUS", "HAS_INDICES", "PER_CHANNEL_GROUP"),
            optional=dict(D_ptr="HAS_D", z_ptr="HAS_Z", dt_bias_ptr="HAS_DT_BIAS", idx_ptr="HAS_INDICES"),
            unit_strides=(
                "s_st_n",
                "s_x_d",
                "s_dt_d",
                "s_A_n",
                "s_B_n",
                "s_C_n",
                "s_D_d",
                "s_z_d",
                "s_bias_d",
                "s_idx",
                "s_out_d",
            ),
            blocks_on=dict(BLOCK_D=64, BLOCK_N=16),
            warps_on=4,
            blocks_off=dict(BLOCK_D=16, BLOCK_N=256),
            warps_off=8,
        ),
        KernelSpec(
            "causal_conv1d_update",
            _conv_update_kernel,
            roles=dict(state_ptr="state", idx_ptr="idx"),
            flags=("HAS_BIAS", "SILU", "HAS_INDICES"),
            optional=dict(bias_ptr="HAS_BIAS", idx_ptr="HAS_INDICES"),
            unit_strides=("s_x_d", "s_st_w", "s_w_w", "s_bias_d", "s_idx", "s_out_d"),
            blocks_on=dict(WIDTH=4, BLOCK_D=256, BLOCK_W=4),
            warps_on=4,
            blocks_off=dict(WIDTH=2, BLOCK_D=32, BLOCK_W=2),
            warps_off=1,
        ),
        KernelSpec(
            "causal_conv1d_fn",
            _conv_fn_kernel,
            roles={},
            flags=("HAS_BIAS", "SILU", "HAS_INIT"),
            optional=dict(bias_ptr="HAS_BIAS", init_ptr="HAS_INIT"),
            unit_strides=("s_x_l", "s_w_w", "s_bias_d", "s_init_w", "s_out_l"),
            blocks_on=dict(WIDTH=4, BLOCK_D=16, BLOCK_L=128),
            warps_on=8,
            blocks_off=dict(WIDTH=3, BLOCK_D=16, BLOCK_L=16),
            warps_off=1,
        ),
    ]


def _ptr_type(role: str, dtype: str, options_on: bool) -> str:
    if role == "f32":
        return "*fp32"
    if role == "idx":
        return "*i32"
    if role == "state":
        return "*fp32" if options_on else f"*{dtype}"
    return f"*{dtype}"


def compile_one(kernel: str, target: int, dtype: str, options_on: bool) -> dict:
    """Compile one variant; returns what ptxas reported (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from ._triton_common import interpreting

    if interpreting():
        raise RuntimeError("compile_check must run without TRITON_INTERPRET=1")
    spec = next(s for s in _specs() if s.name == kernel)
    fn = triton.jit(spec.fn)
    signature: dict[str, str] = {}
    constexprs: dict[str, object] = {}
    attrs: dict[tuple[int, ...], list] = {}
    blocks = spec.blocks_on if options_on else spec.blocks_off
    for i, name in enumerate(inspect.signature(spec.fn).parameters):
        if name in spec.flags:
            signature[name], constexprs[name] = "constexpr", options_on
        elif name in blocks:
            signature[name], constexprs[name] = "constexpr", blocks[name]
        elif name.endswith("_ptr"):
            if not options_on and name in spec.optional:
                signature[name], constexprs[name] = "constexpr", None  # what passing None specialises to
            else:
                signature[name] = _ptr_type(spec.roles.get(name, "data"), dtype, options_on)
                if options_on:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif not options_on and name in spec.unit_strides:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
    warps = spec.warps_on if options_on else spec.warps_off
    result = dict(
        kernel=kernel,
        target=f"sm_{target}",
        dtype=dtype,
        options="on" if options_on else "off",
        num_warps=warps,
        **{k: v for k, v in blocks.items()},
    )
    try:
        compiled = triton.compile(
            triton.compiler.ASTSource(fn, signature, constexprs, attrs),
            target=GPUTarget("cuda", target, 32),
            options={"num_warps": warps},
        )
    except Exception as err:  # report every failure, not just the first
        return {**result, "ok": False, "error": f"{type(err).__name__}: {err}"[:2000]}
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    result.update(
        ok=bool(cubin) and f".target sm_{target}" in ptx, ptx_bytes=len(ptx), cubin_bytes=len(cubin)
    )
    result.update(_resource_usage(cubin))
    return result


def _resource_usage(cubin: bytes) -> dict:
    """Registers / spill (LOCAL) / shared bytes, from the cuobjdump shipped with Triton."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    usage = {}
    for field in ("REG", "LOCAL", "SHARED", "STACK"):
        tail = text.split(f" {field}:", 1)
        if len(tail) == 2:
            usage[field.lower()] = int(tail[1].split()[0])
    return usage


def _job(args: tuple[str, int, str, bool]) -> dict:
    return compile_one(*args)


def run_all(workers: int = 2) -> list[dict]:
    from tqdm import tqdm

    jobs = [(s.name, t, d, on) for s in _specs() for t in TARGETS for d in DTYPES for on in (True, False)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_job, jobs), total=len(jobs), desc="compiling", file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default; silences its warning
    results = run_all(args.workers)
    if args.json:
        print(json.dumps(results))
    else:
        print(
            f"{'kernel':24} {'target':6} {'dtype':5} {'options':7} {'warps':5} {'ok':3} {'regs':>4} {'spill':>5}"
        )
        for r in results:
            print(
                f"{r['kernel']:24} {r['target']:6} {r['dtype']:5} {r['options']:7} {r['num_warps']:5} "
                f"{'yes' if r['ok'] else 'NO':3} {r.get('reg', '-'):>4} {r.get('local', '-'):>5}"
                + ("" if r["ok"] else f"  {r.get('error', '')}")
            )
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
