"""Selective scan (prefill) as an OpenAI-Triton kernel.

One program per (block of channels, batch row). The state tile [BLOCK_D, BLOCK_N] lives in fp32
registers for the whole sequence and the program walks time sequentially, so the only memory traffic
is one read of u/delta/B/C/z, one write of out, and the optional initial/final state. The sequential
loop makes the result exactly the recurrence (no chunked reassociation), which is what lets a prompt
be prefilled in chunks and then decoded step by step with bit-for-bit the same arithmetic order.
Parallelism comes only from batch x channel blocks; the launch heuristic narrows the blocks when that
would leave SMs idle.

Grouped B/C ([batch, G, N, L]) are read per block when a block lies inside one group, else gathered
per channel (time-invariant [dim, N] B/C become G = dim groups with zero strides over batch and time).
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


def _scan_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    delta_bias_ptr,
    h0_ptr,
    out_ptr,
    hT_ptr,
    seqlen,
    dim,
    dstate,
    group_size,
    batch_bucket,
    s_u_b,
    s_u_d,
    s_u_l,
    s_dt_b,
    s_dt_d,
    s_dt_l,
    s_A_d,
    s_A_n,
    s_B_b,
    s_B_g,
    s_B_n,
    s_B_l,
    s_C_b,
    s_C_g,
    s_C_n,
    s_C_l,
    s_D_d,
    s_z_b,
    s_z_d,
    s_z_l,
    s_bias_d,
    s_h0_b,
    s_h0_d,
    s_h0_n,
    s_out_b,
    s_out_d,
    s_out_l,
    s_hT_b,
    s_hT_d,
    s_hT_n,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
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

    # Padded lanes hold A = 0, B = C = 0 and h = 0: they stay 0 and add nothing to y.
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(
        tl.float32
    )
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        dbias = tl.load(delta_bias_ptr + offs_d * s_bias_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_H0:
        h0_ptrs = h0_ptr + pid_b * s_h0_b + offs_d[:, None] * s_h0_d + offs_n[None, :] * s_h0_n
        h = tl.load(h0_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)

    u_ptrs = u_ptr + pid_b * s_u_b + offs_d * s_u_d
    dt_ptrs = delta_ptr + pid_b * s_dt_b + offs_d * s_dt_d
    out_ptrs = out_ptr + pid_b * s_out_b + offs_d * s_out_d
    if HAS_Z:
        z_ptrs = z_ptr + pid_b * s_z_b + offs_d * s_z_d
    if PER_CHANNEL_GROUP:
        g = offs_d // group_size
        B_ptrs = B_ptr + pid_b * s_B_b + g[:, None] * s_B_g + offs_n[None, :] * s_B_n
        C_ptrs = C_ptr + pid_b * s_C_b + g[:, None] * s_C_g + offs_n[None, :] * s_C_n
    else:
        g0 = (pid_d * BLOCK_D) // group_size
        B_ptrs = B_ptr + pid_b * s_B_b + g0 * s_B_g + offs_n * s_B_n
        C_ptrs = C_ptr + pid_b * s_C_b + g0 * s_C_g + offs_n * s_C_n

    for _t in range(seqlen):
        u = tl.load(u_ptrs, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptrs, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt = dt + dbias
        if DELTA_SOFTPLUS:
            # softplus(x) = log1p(exp(x)), with log1p(e) = log(1+e) * e / ((1+e) - 1) (accurate for small
            # e, where dt usually lives) and the identity above 20 like torch.
            e = tl.exp(tl.minimum(dt, 20.0))
            one_e = 1.0 + e
            den = one_e - 1.0
            exact = den != 0.0
            log1p_e = tl.where(exact, tl.log(one_e) * (e / tl.where(exact, den, 1.0)), e)
            dt = tl.where(dt > 20.0, dt, log1p_e)
        dA = tl.exp(dt[:, None] * A)
        du = dt * u
        if PER_CHANNEL_GROUP:
            Bt = tl.load(B_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
            h = h * dA + du[:, None] * Bt
            y = tl.sum(h * Ct, axis=1)
        else:
            Bt = tl.load(B_ptrs, mask=mask_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptrs, mask=mask_n, other=0.0).to(tl.float32)
            h = h * dA + du[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y = y + Dv * u
        if HAS_Z:
            zt = tl.load(z_ptrs, mask=mask_d, other=0.0).to(tl.float32)
            y = y * (zt * tl.sigmoid(zt))
            z_ptrs += s_z_l
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask_d)
        u_ptrs += s_u_l
        dt_ptrs += s_dt_l
        out_ptrs += s_out_l
        B_ptrs += s_B_l
        C_ptrs += s_C_l

    if STORE_HT:
        hT_ptrs = hT_ptr + pid_b * s_hT_b + offs_d[:, None] * s_hT_d + offs_n[None, :] * s_hT_n
        tl.store(hT_ptrs, h, mask=mask_dn)


def _per_channel_group(args) -> bool:
    return args["group_size"] % args["BLOCK_D"] != 0


def _autotune_configs() -> list:
    return [
        triton.Config({"BLOCK_D": bd}, num_warps=w)
        for bd in (4, 8, 16, 32, 64)
        for w in (1, 2, 4)
        if bd * 16 >= 32 * w  # no more threads than elements at N = 16
    ]


SCAN_KERNEL = LazyKernel(
    _scan_kernel,
    heuristics={"PER_CHANNEL_GROUP": _per_channel_group},
    autotune_configs=_autotune_configs,
    autotune_key=["dim", "dstate", "batch_bucket"],
)


def selective_scan_triton(
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
    *,
    out: torch.Tensor | None = None,
    last_state_out: torch.Tensor | None = None,
    block_d: int | None = None,
):
    """mamba-ssm `selective_scan_fn` (+ initial_state) on the Triton kernel; any strides, no copies.

    `out` / `last_state_out` let a caller reuse buffers; `block_d` pins the channel block (tests, tuning;
    it turns autotuning off)."""
    op = "selective_scan"
    a = _checks.scan_args(op, u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_triton_dtypes(
        op, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state
    )
    check_grid_rows(op, a.batch)
    check_out(op, "out", out, (a.batch, a.dim, a.seqlen), u.dtype, u.device)
    check_out(op, "last_state_out", last_state_out, (a.batch, a.dim, a.dstate), torch.float32, u.device)
    if out is None:
        out = torch.empty_like(u, memory_format=torch.contiguous_format)
    hT = None
    if return_last_state:
        hT = (
            last_state_out
            if last_state_out is not None
            else u.new_empty(a.batch, a.dim, a.dstate, dtype=torch.float32)
        )
    if a.batch == 0 or a.dim == 0:
        return (out, hT) if return_last_state else out

    block_n = next_pow2(a.dstate)
    if block_n > 256:
        raise ValueError(f"{op}: N={a.dstate} state columns exceed the kernel's limit of 256")
    kernel, tuned = SCAN_KERNEL.get(autotune=block_d is None)
    args = (
        u,
        delta,
        A,
        a.B,
        a.C,
        D,
        z,
        delta_bias,
        initial_state,
        out,
        hT,
        a.seqlen,
        a.dim,
        a.dstate,
        a.dim // a.groups,
        next_pow2(a.batch),
        *u.stride(),
        *delta.stride(),
        *A.stride(),
        *a.B.stride(),
        *a.C.stride(),
        *strides(D, 1),
        *strides(z, 3),
        *strides(delta_bias, 1),
        *strides(initial_state, 3),
        *out.stride(),
        *strides(hT, 3),
    )
    flags = dict(
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus),
        HAS_H0=initial_state is not None,
        STORE_HT=hT is not None,
        BLOCK_N=block_n,
    )
    if tuned:
        kernel[lambda meta: (triton.cdiv(a.dim, meta["BLOCK_D"]), a.batch)](*args, **flags)
    else:
        bd = block_d or block_d_for(lambda b: triton.cdiv(a.dim, b), a.batch, a.dim, block_n, u.device)
        kernel[(triton.cdiv(a.dim, bd), a.batch)](
            *args, **flags, BLOCK_D=bd, num_warps=warps_for(bd * block_n)
        )
    return (out, hT) if return_last_state else out
