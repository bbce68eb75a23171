"""Depthwise causal conv1d for Mamba as Triton kernels: the decode step (in place on a slot pool) and
the prefill.

Decode: one program per (block of channels, batch row) reads the row's W-1 saved inputs and the new
input, writes one output and the shifted state. Like the selective state update it is in place, so it
is never autotuned, and pad/invalid slot indices behave the same way (pad: zeros, touches nothing;
out of range on a GPU: NaN row, touches nothing). Prefill: one program per (block of channels, block
of time, batch row); the W taps are unrolled and the left edge reads `initial_states`. The final
states are a slice of the inputs, taken in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _checks
from ._triton_common import (
    LazyKernel,
    check_grid_rows,
    check_out,
    check_triton_dtypes,
    interpreting,
    next_pow2,
    sm_count,
    strides,
    warps_for,
)
from .torch_ops import final_conv_states

NAN = tl.constexpr(float("nan"))


def _conv_update_kernel(
    x_ptr,
    state_ptr,
    w_ptr,
    bias_ptr,
    idx_ptr,
    out_ptr,
    n_slots,
    dim,
    pad_slot_id,
    s_x_b,
    s_x_d,
    s_st_s,
    s_st_d,
    s_st_w,
    s_w_d,
    s_w_w,
    s_bias_d,
    s_idx,
    s_out_b,
    s_out_d,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    HAS_INDICES: tl.constexpr,
    WIDTH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    offs_w = tl.arange(0, BLOCK_W)
    mask_d = offs_d < dim

    if HAS_INDICES:
        slot = tl.load(idx_ptr + pid_b * s_idx).to(tl.int64)
        is_pad = slot == pad_slot_id
        valid = (slot >= 0) & (slot < n_slots) & (slot != pad_slot_id)
        slot = tl.where(valid, slot, 0)
    else:
        slot = pid_b
        is_pad = pid_b < 0  # never
        valid = pid_b >= 0  # always
    # Row validity folded into a limit (the interpreter mistypes `block_mask & scalar_bool`).
    row_ok = (offs_d < tl.where(valid, dim, 0))[:, None]

    # window[:, k] = input k steps back from W-1: columns 0..W-2 are the saved state, W-1 is x.
    col_ptrs = state_ptr + slot * s_st_s + offs_d[:, None] * s_st_d + offs_w[None, :] * s_st_w
    st = tl.load(col_ptrs, mask=row_ok & (offs_w[None, :] < WIDTH - 1), other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0)
    window = tl.where(offs_w[None, :] == WIDTH - 1, x.to(tl.float32)[:, None], st)
    w = tl.load(
        w_ptr + offs_d[:, None] * s_w_d + offs_w[None, :] * s_w_w,
        mask=mask_d[:, None] & (offs_w[None, :] < WIDTH),
        other=0.0,
    ).to(tl.float32)
    y = tl.sum(window * w, axis=1)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_d * s_bias_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    y = tl.where(valid, y, tl.where(is_pad, 0.0, NAN))

    # New state: column k takes window column k+1 (saved column k+1, or x for the last one).
    shifted = tl.load(col_ptrs + s_st_w, mask=row_ok & (offs_w[None, :] < WIDTH - 2), other=0.0)
    new = tl.where(offs_w[None, :] == WIDTH - 2, x.to(shifted.dtype)[:, None], shifted)
    # Every thread has read the old state before any thread overwrites a column another thread reads.
    tl.debug_barrier()
    tl.store(col_ptrs, new.to(state_ptr.dtype.element_ty), mask=row_ok & (offs_w[None, :] < WIDTH - 1))
    tl.store(out_ptr + pid_b * s_out_b + offs_d * s_out_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def _conv_fn_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    init_ptr,
    out_ptr,
    dim,
    seqlen,
    s_x_b,
    s_x_d,
    s_x_l,
    s_w_d,
    s_w_w,
    s_bias_d,
    s_init_b,
    s_init_d,
    s_init_w,
    s_out_b,
    s_out_d,
    s_out_l,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    HAS_INIT: tl.constexpr,
    WIDTH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_l = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_l = offs_l < seqlen

    acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    x_row = x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d
    for k in tl.static_range(WIDTH):
        src = offs_l - (WIDTH - 1 - k)  # input time read by tap k; < 0 reaches into initial_states
        wk = tl.load(w_ptr + offs_d * s_w_d + k * s_w_w, mask=mask_d, other=0.0).to(tl.float32)
        in_x = mask_d[:, None] & (mask_l & (src >= 0))[None, :]
        v = tl.load(x_row + src.to(tl.int64)[None, :] * s_x_l, mask=in_x, other=0.0).to(tl.float32)
        if HAS_INIT:
            in_init = mask_d[:, None] & (mask_l & (src < 0))[None, :]
            col = (src + (WIDTH - 1)).to(tl.int64)
            init_ptrs = init_ptr + pid_b * s_init_b + offs_d[:, None] * s_init_d + col[None, :] * s_init_w
            v += tl.load(init_ptrs, mask=in_init, other=0.0).to(tl.float32)
        acc += wk[:, None] * v
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d * s_bias_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    out_ptrs = out_ptr + pid_b * s_out_b + offs_d[:, None] * s_out_d + offs_l.to(tl.int64)[None, :] * s_out_l
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_d[:, None] & mask_l[None, :])


CONV_UPDATE_KERNEL = LazyKernel(_conv_update_kernel)
CONV_FN_KERNEL = LazyKernel(_conv_fn_kernel)


def _update_block_d(batch: int, dim: int, device) -> int:
    if interpreting():
        return min(256, next_pow2(dim))
    block = min(256, next_pow2(dim))
    while block > 32 and batch * triton.cdiv(dim, block) < 2 * sm_count(device):
        block //= 2
    return block


def causal_conv1d_update_triton(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    conv_state_indices: torch.Tensor | None = None,
    pad_slot_id: int = -1,
    *,
    out: torch.Tensor | None = None,
    block_d: int | None = None,
) -> torch.Tensor:
    """One conv step per batch row; shifts `conv_state` [slots, D, W-1] in place; returns out [B, D]."""
    op = "causal_conv1d_update"
    batch, dim, width, n_slots = _checks.conv_update_args(op, x, conv_state, weight, bias, conv_state_indices)
    silu = _checks.activation(op, activation)
    check_triton_dtypes(op, x=x, conv_state=conv_state, weight=weight, bias=bias)
    check_grid_rows(op, batch)
    check_out(op, "out", out, (batch, dim), x.dtype, x.device)
    idx = conv_state_indices
    if idx is not None and idx.device.type == "cpu":
        _checks.slot_indices(op, "conv_state_indices", idx, n_slots, pad_slot_id)
    if out is None:
        out = torch.empty(batch, dim, dtype=x.dtype, device=x.device)
    if batch == 0 or dim == 0:
        return out
    bd = block_d or _update_block_d(batch, dim, x.device)
    block_w = next_pow2(width)
    kernel, _ = CONV_UPDATE_KERNEL.get()
    kernel[(triton.cdiv(dim, bd), batch)](
        x,
        conv_state,
        weight,
        bias,
        idx,
        out,
        n_slots,
        dim,
        int(pad_slot_id),
        *x.stride(),
        *conv_state.stride(),
        *weight.stride(),
        *strides(bias, 1),
        *strides(idx, 1),
        *out.stride(),
        HAS_BIAS=bias is not None,
        SILU=silu,
        HAS_INDICES=idx is not None,
        WIDTH=width,
        BLOCK_D=bd,
        BLOCK_W=block_w,
        num_warps=warps_for(bd * block_w),
    )
    return out


def causal_conv1d_fn_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    activation: str | None = None,
    *,
    out: torch.Tensor | None = None,
    block_d: int | None = None,
    block_l: int | None = None,
):
    """causal-conv1d `causal_conv1d_fn` (no seq_idx) for x [B, D, L]; any strides."""
    op = "causal_conv1d_fn"
    batch, dim, seqlen, width = _checks.conv_fn_args(op, x, weight, bias, initial_states)
    silu = _checks.activation(op, activation)
    check_triton_dtypes(op, x=x, weight=weight, bias=bias, initial_states=initial_states)
    check_out(op, "out", out, (batch, dim, seqlen), x.dtype, x.device)
    if batch > 65535:
        raise ValueError(f"{op}: batch={batch} exceeds the CUDA grid limit of 65535; split the batch")
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if batch and dim and seqlen:
        bd = block_d or min(64 if interpreting() else 16, next_pow2(dim))
        bl = block_l or min(64 if interpreting() else 128, next_pow2(seqlen))
        kernel, _ = CONV_FN_KERNEL.get()
        kernel[(triton.cdiv(dim, bd), triton.cdiv(seqlen, bl), batch)](
            x,
            weight,
            bias,
            initial_states,
            out,
            dim,
            seqlen,
            *x.stride(),
            *weight.stride(),
            *strides(bias, 1),
            *strides(initial_states, 3),
            *out.stride(),
            HAS_BIAS=bias is not None,
            SILU=silu,
            HAS_INIT=initial_states is not None,
            WIDTH=width,
            BLOCK_D=bd,
            BLOCK_L=bl,
            num_warps=warps_for(bd * bl),
        )
    if not return_final_states:
        return out
    return out, final_conv_states(x, initial_states, width)
