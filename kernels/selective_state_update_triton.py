"""One decode step of the selective scan for a batch, in place on a slot pool, as a Triton kernel.

One program per (block of channels, batch row): load the row's state tile, apply one step in fp32,
write it back in the state's dtype. The state is updated in place, so this kernel is never autotuned
(the autotuner would apply the step once per trial); block sizes come from a fixed heuristic.

Slots: with `state_batch_indices`, row b reads/writes slot `state_batch_indices[b]`. A row whose index
equals `pad_slot_id` touches no slot and its output row is written as zeros. The wrapper validates the
indices when they are on the CPU (free); on a GPU that would cost a device sync per token, so the kernel
guards instead: an index outside [0, slots) touches nothing and its output row is NaN, which makes the
bug visible without reading or writing out of bounds. Indices must not repeat (rows would race).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _checks
from ._triton_common import (
    LazyKernel,
    block_d_for,
    check_grid_rows,
    check_out,
    check_triton_dtypes,
    next_pow2,
    strides,
    warps_for,
)

NAN = tl.constexpr(float("nan"))


def _state_update_kernel(
    state_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    dt_bias_ptr,
    idx_ptr,
    out_ptr,
    n_slots,
    dim,
    dstate,
    group_size,
    pad_slot_id,
    s_st_s,
    s_st_d,
    s_st_n,
    s_x_b,
    s_x_d,
    s_dt_b,
    s_dt_d,
    s_A_d,
    s_A_n,
    s_B_b,
    s_B_g,
    s_B_n,
    s_C_b,
    s_C_g,
    s_C_n,
    s_D_d,
    s_z_b,
    s_z_d,
    s_bias_d,
    s_idx,
    s_out_b,
    s_out_d,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr,
    HAS_INDICES: tl.constexpr,
    PER_CHANNEL_GROUP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]

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
    mask_st = (offs_d[:, None] < tl.where(valid, dim, 0)) & mask_n[None, :]

    st_ptrs = state_ptr + slot * s_st_s + offs_d[:, None] * s_st_d + offs_n[None, :] * s_st_n
    h = tl.load(st_ptrs, mask=mask_st, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt = dt + tl.load(dt_bias_ptr + offs_d * s_bias_d, mask=mask_d, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        # log1p(exp(x)) accurate for small exp(x) (see selective_scan_triton.py), identity above 20 like torch.
        e = tl.exp(tl.minimum(dt, 20.0))
        one_e = 1.0 + e
        den = one_e - 1.0
        exact = den != 0.0
        log1p_e = tl.where(exact, tl.log(one_e) * (e / tl.where(exact, den, 1.0)), e)
        dt = tl.where(dt > 20.0, dt, log1p_e)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(
        tl.float32
    )
    if PER_CHANNEL_GROUP:
        g = offs_d // group_size
        Bt = tl.load(
            B_ptr + pid_b * s_B_b + g[:, None] * s_B_g + offs_n[None, :] * s_B_n, mask=mask_dn, other=0.0
        )
        Ct = tl.load(
            C_ptr + pid_b * s_C_b + g[:, None] * s_C_g + offs_n[None, :] * s_C_n, mask=mask_dn, other=0.0
        )
        Bt = Bt.to(tl.float32)
        Ct = Ct.to(tl.float32)
    else:
        g0 = (pid_d * BLOCK_D) // group_size
        Bt = tl.load(B_ptr + pid_b * s_B_b + g0 * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0)
        Ct = tl.load(C_ptr + pid_b * s_C_b + g0 * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0)
        Bt = Bt.to(tl.float32)[None, :]
        Ct = Ct.to(tl.float32)[None, :]

    h = h * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bt
    y = tl.sum(h * Ct, axis=1)
    if HAS_D:
        y = y + tl.load(D_ptr + offs_d * s_D_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        zt = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * (zt * tl.sigmoid(zt))
    y = tl.where(valid, y, tl.where(is_pad, 0.0, NAN))
    # Every thread has read its state before any thread writes (threads may hold replicated elements).
    tl.debug_barrier()
    tl.store(st_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_st)
    tl.store(out_ptr + pid_b * s_out_b + offs_d * s_out_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def _per_channel_group(args) -> bool:
    return args["group_size"] % args["BLOCK_D"] != 0


STATE_UPDATE_KERNEL = LazyKernel(_state_update_kernel, heuristics={"PER_CHANNEL_GROUP": _per_channel_group})


def selective_state_update_triton(
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
    *,
    out: torch.Tensor | None = None,
    block_d: int | None = None,
) -> torch.Tensor:
    """mamba-ssm `selective_state_update` on a slot pool; updates `state` in place, returns out [B, D]."""
    op = "selective_state_update"
    a = _checks.state_update_args(op, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    check_triton_dtypes(op, state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    check_grid_rows(op, a.batch)
    check_out(op, "out", out, (a.batch, a.dim), x.dtype, x.device)
    idx = state_batch_indices
    if idx is not None and idx.device.type == "cpu":
        _checks.slot_indices(op, "state_batch_indices", idx, a.n_slots, pad_slot_id)
    if out is None:
        out = torch.empty(a.batch, a.dim, dtype=x.dtype, device=x.device)
    if a.batch == 0 or a.dim == 0:
        return out
    block_n = next_pow2(a.dstate)
    if block_n > 256:
        raise ValueError(f"{op}: N={a.dstate} state columns exceed the kernel's limit of 256")
    bd = block_d or block_d_for(lambda b: triton.cdiv(a.dim, b), a.batch, a.dim, block_n, x.device)
    kernel, _ = STATE_UPDATE_KERNEL.get(autotune=False)
    kernel[(triton.cdiv(a.dim, bd), a.batch)](
        state,
        x,
        dt,
        A,
        a.B,
        a.C,
        D,
        z,
        dt_bias,
        idx,
        out,
        a.n_slots,
        a.dim,
        a.dstate,
        a.dim // a.groups,
        int(pad_slot_id),
        *state.stride(),
        *x.stride(),
        *dt.stride(),
        *A.stride(),
        *a.B.stride(),
        *a.C.stride(),
        *strides(D, 1),
        *strides(z, 2),
        *strides(dt_bias, 1),
        *strides(idx, 1),
        *out.stride(),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=bool(dt_softplus),
        HAS_INDICES=idx is not None,
        BLOCK_D=bd,
        BLOCK_N=block_n,
        num_warps=warps_for(bd * block_n),
    )
    return out
