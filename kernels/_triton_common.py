"""What the Triton kernel modules share: per-mode jitting, launch heuristics, tensor-to-kernel plumbing.

`triton.jit` decides at decoration time whether a kernel is interpreted (TRITON_INTERPRET=1) or compiled
for the GPU. The kernels here are plain functions jitted on first launch, once per mode, so importing
this package never fixes the mode: a test can switch the interpreter on around its calls whatever was
imported before, and the compile tests can jit the same functions for sm_80/sm_90 in a clean process.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import triton

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def autotune_enabled() -> bool:
    """Autotune only on a real GPU, and let serving switch it off (CUDA-graph capture, fixed latency)."""
    return not interpreting() and os.environ.get("MAMBASERVE_KERNELS_AUTOTUNE", "1") != "0"


class LazyKernel:
    """A kernel function jitted per mode on first use; optionally autotuned (GPU only)."""

    def __init__(
        self,
        fn: Callable,
        *,
        heuristics: dict[str, Callable] | None = None,
        autotune_configs: Callable[[], list] | None = None,
        autotune_key: list[str] | None = None,
    ) -> None:
        self.fn = fn
        self.heuristics = heuristics
        self.autotune_configs = autotune_configs
        self.autotune_key = autotune_key
        self._cache: dict[tuple[bool, bool], object] = {}

    def get(self, autotune: bool = False):
        mode = (interpreting(), autotune and self.autotune_configs is not None and autotune_enabled())
        kernel = self._cache.get(mode)
        if kernel is None:
            kernel = triton.jit(self.fn)
            if self.heuristics:
                kernel = triton.heuristics(self.heuristics)(kernel)
            if mode[1]:
                kernel = triton.autotune(configs=self.autotune_configs(), key=self.autotune_key)(kernel)
            self._cache[mode] = kernel
        return kernel, mode[1]


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # interpreter: size blocks as for an H100 so the GPU code paths get exercised


def block_d_for(programs_per_row: Callable[[int], int], rows: int, dim: int, block_n: int, device) -> int:
    """Channels per program: the state tile stays <= 4096 fp32 registers' worth, but split channels
    finer while the grid would leave SMs idle (the time loop is sequential, so only programs run in
    parallel). Under the interpreter each program costs the same, so fewer, wider programs win."""
    cap = max(1, min(64, 4096 // block_n, next_pow2(dim)))
    if interpreting():
        return cap
    target = 2 * sm_count(device)
    block = cap
    while block > 4 and rows * programs_per_row(block) < target:
        block //= 2
    return block


def warps_for(tile: int) -> int:
    return max(1, min(8, tile // 256))


def check_triton_dtypes(op: str, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in TRITON_DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype}; the Triton kernels take float32, float16 or bfloat16"
            )


def check_grid_rows(op: str, rows: int) -> None:
    if rows > 65535:
        raise ValueError(
            f"{op}: batch={rows} exceeds the CUDA grid limit of 65535 rows per launch; split the batch"
        )


def check_out(op: str, name: str, t: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device):
    if t is None:
        return
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(
            f"{op}: {name} must be a {dtype} tensor of shape {list(shape)} on {device}, "
            f"got {t.dtype} {list(t.shape)} on {t.device}"
        )


def strides(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n
