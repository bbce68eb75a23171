"""Selective-scan and causal-conv1d ops for Mamba: Triton kernels on CUDA, PyTorch on CPU.

Public API (mamba-ssm / causal-conv1d argument names; tensors keep their layout, any strides):

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None) -> out | (out, last_state)
        u, delta, z [batch, dim, L]; A [dim, N]; B, C [batch, N, L] or grouped [batch, G, N, L]
        (dim % G == 0, channel d reads group d // (dim // G)) or time-invariant [dim, N];
        D, delta_bias [dim]; initial_state [batch, dim, N]. out has u's dtype, last_state is fp32
        [batch, dim, N]; feeding it back as initial_state continues the scan exactly (chunked prefill).

    selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None, pad_slot_id=-1) -> out [batch, dim]
        One decode step. state [slots, dim, N] is updated IN PLACE (slots >= batch); x, dt, z
        [batch, dim]; B, C [batch, N] or [batch, G, N]. Row b uses slot state_batch_indices[b]
        (default: slot b). Rows whose index equals pad_slot_id touch no slot and output zeros.

    causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, conv_state_indices=None,
                         pad_slot_id=-1) -> out [batch, dim]
        One conv step. conv_state [slots, dim, W-1] (the last W-1 inputs) shifts IN PLACE;
        weight [dim, W]; activation None | "silu" | "swish"; slots/pads as above.

    causal_conv1d_fn(x, weight, bias=None, initial_states=None, return_final_states=False,
                     activation=None) -> out | (out, final_states)
        Prefill conv over x [batch, dim, L]; initial_states / final_states [batch, dim, W-1] chain
        chunks and seed causal_conv1d_update.

Dispatch: CUDA tensors run the Triton kernels (`selective_scan_triton.py`, `selective_state_update_triton.py`,
`causal_conv1d_triton.py`); CPU tensors, and CUDA tensors when autograd needs a backward (the kernels
are forward-only), run PyTorch (`torch_ops.py`; the scan uses `scan_cpu.py` when present, else the
float64 reference). `MAMBASERVE_KERNELS_BACKEND=torch|triton` forces one side
(`triton` on CPU tensors needs TRITON_INTERPRET=1). Triton is imported only when a CUDA op runs, so
importing this package is cheap. All paths accumulate in fp32 and raise the same errors for bad input.
See kernels/README.md.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["causal_conv1d_fn", "causal_conv1d_update", "selective_scan", "selective_state_update"]


def _use_triton(t: torch.Tensor, *inputs: torch.Tensor | None) -> bool:
    """CUDA -> Triton, unless autograd needs a backward (the kernels have none): then the PyTorch
    path, which is differentiable and runs on any device."""
    backend = os.environ.get("MAMBASERVE_KERNELS_BACKEND", "auto")
    if backend == "auto":
        if not t.is_cuda:
            return False
        import torch

        return not (torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs))
    if backend not in ("torch", "triton"):
        raise ValueError(f"MAMBASERVE_KERNELS_BACKEND must be auto, torch or triton, got {backend!r}")
    return backend == "triton"


_SCAN_CPU: list = []  # memo: [selective_scan_cpu or None]


def _scan_cpu():
    """The lead's autograd CPU scan when it exists; None means use the reference."""
    if not _SCAN_CPU:
        try:
            mod = importlib.import_module(".scan_cpu", __name__)
            _SCAN_CPU.append(mod.selective_scan_cpu)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.scan_cpu":
                raise
            _SCAN_CPU.append(None)
    return _SCAN_CPU[0]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
):
    if _use_triton(u, u, delta, A, B, C, D, z, delta_bias, initial_state):
        from .selective_scan_triton import selective_scan_triton

        return selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
        )
    from . import _checks

    _checks.scan_args("selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state)
    cpu = _scan_cpu()
    if cpu is None or B.dim() == 2 or C.dim() == 2:  # scan_cpu takes [b, n, l] / [b, g, n, l] only
        from .reference import selective_scan_ref as cpu
    return cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    state_batch_indices: torch.Tensor | None = None,
    pad_slot_id: int = -1,
) -> torch.Tensor:
    if _use_triton(x, state, x, dt, A, B, C, D, z, dt_bias):
        from .selective_state_update_triton import selective_state_update_triton as impl
    else:
        from .torch_ops import selective_state_update_torch as impl
    return impl(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, pad_slot_id)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    conv_state_indices: torch.Tensor | None = None,
    pad_slot_id: int = -1,
) -> torch.Tensor:
    if _use_triton(x, x, conv_state, weight, bias):
        from .causal_conv1d_triton import causal_conv1d_update_triton as impl
    else:
        from .torch_ops import causal_conv1d_update_torch as impl
    return impl(x, conv_state, weight, bias, activation, conv_state_indices, pad_slot_id)


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    activation: str | None = None,
):
    if _use_triton(x, x, weight, bias, initial_states):
        from .causal_conv1d_triton import causal_conv1d_fn_triton as impl
    else:
        from .torch_ops import causal_conv1d_fn_torch as impl
    return impl(x, weight, bias, initial_states, return_final_states, activation)
