"""Readable loop references: the ground truth every kernel and fast path is tested against.

They compute in float64 whatever the input dtype (so a low-precision kernel is compared with the exact
result of its own rounded inputs), loop over time and batch rows the obvious way, and follow the
mamba-ssm / causal-conv1d semantics the public API promises. Slow on purpose; never on a hot path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks

F64 = torch.float64


def _out_state_dtype(like: torch.Tensor) -> torch.dtype:
    # The public contract returns states in fp32; a float64 reference run keeps float64.
    return F64 if like.dtype == F64 else torch.float32


def _per_channel(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[batch, G, ...] -> [batch, dim, ...]: channel d reads group d // (dim // G)."""
    return t.repeat_interleave(dim // t.shape[1], dim=1)


def selective_scan_ref(
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
    """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = C_t . h_t + D u_t;  y *= silu(z)."""
    a = _checks.scan_args("selective_scan_ref", u, delta, A, B, C, D, z, delta_bias, initial_state)
    dt = delta.to(F64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(F64)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    u64, A64 = u.to(F64), A.to(F64)
    Bd = _per_channel(a.B.to(F64), a.dim)  # [batch, dim, N, L]
    Cd = _per_channel(a.C.to(F64), a.dim)
    h = torch.zeros(a.batch, a.dim, a.dstate, dtype=F64, device=u.device)
    if initial_state is not None:
        h = initial_state.to(F64).clone()
    ys = []
    for t in range(a.seqlen):
        h = torch.exp(dt[:, :, t, None] * A64) * h + (dt[:, :, t] * u64[:, :, t])[:, :, None] * Bd[..., t]
        ys.append((h * Cd[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else torch.zeros_like(u64)
    if D is not None:
        y = y + D.to(F64)[:, None] * u64
    if z is not None:
        y = y * F.silu(z.to(F64))
    out = y.to(u.dtype)
    return (out, h.to(_out_state_dtype(u))) if return_last_state else out


def selective_state_update_ref(
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
    """One scan step per batch row, in place on `state`; pad rows give zeros and touch no slot."""
    op = "selective_state_update_ref"
    a = _checks.state_update_args(op, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    if state_batch_indices is not None:
        _checks.slot_indices(op, "state_batch_indices", state_batch_indices.cpu(), a.n_slots, pad_slot_id)
    Bd = _per_channel(a.B.to(F64), a.dim)  # [batch, dim, N]
    Cd = _per_channel(a.C.to(F64), a.dim)
    out = torch.zeros(a.batch, a.dim, dtype=F64, device=x.device)
    for b in range(a.batch):
        slot = b if state_batch_indices is None else int(state_batch_indices[b])
        if state_batch_indices is not None and slot == pad_slot_id:
            continue
        d = dt[b].to(F64)
        if dt_bias is not None:
            d = d + dt_bias.to(F64)
        if dt_softplus:
            d = F.softplus(d)
        xb = x[b].to(F64)
        h = torch.exp(d[:, None] * A.to(F64)) * state[slot].to(F64) + (d * xb)[:, None] * Bd[b]
        state[slot] = h.to(state.dtype)
        y = (h * Cd[b]).sum(-1)
        if D is not None:
            y = y + D.to(F64) * xb
        if z is not None:
            y = y * F.silu(z[b].to(F64))
        out[b] = y
    return out.to(x.dtype)


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    activation: str | None = None,
):
    """out[t] = bias + sum_k weight[:, k] * xpad[t + k], xpad = initial_states (or zeros) ++ x."""
    op = "causal_conv1d_ref"
    batch, dim, seqlen, width = _checks.conv_fn_args(op, x, weight, bias, initial_states)
    silu = _checks.activation(op, activation)
    left = (
        initial_states.to(F64)
        if initial_states is not None
        else torch.zeros(batch, dim, width - 1, dtype=F64, device=x.device)
    )
    xpad = torch.cat([left, x.to(F64)], dim=-1)
    w = weight.to(F64)
    out = torch.zeros(batch, dim, seqlen, dtype=F64, device=x.device)
    for t in range(seqlen):
        for k in range(width):
            out[:, :, t] += w[:, k] * xpad[:, :, t + k]
    if bias is not None:
        out = out + bias.to(F64)[:, None]
    if silu:
        out = F.silu(out)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    return out, xpad[:, :, xpad.shape[-1] - (width - 1) :].to(x.dtype)


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    conv_state_indices: torch.Tensor | None = None,
    pad_slot_id: int = -1,
) -> torch.Tensor:
    """One conv step per batch row; conv_state (the last W-1 inputs) shifts left in place."""
    op = "causal_conv1d_update_ref"
    batch, dim, _width, n_slots = _checks.conv_update_args(
        op, x, conv_state, weight, bias, conv_state_indices
    )
    silu = _checks.activation(op, activation)
    if conv_state_indices is not None:
        _checks.slot_indices(op, "conv_state_indices", conv_state_indices.cpu(), n_slots, pad_slot_id)
    out = torch.zeros(batch, dim, dtype=F64, device=x.device)
    for b in range(batch):
        slot = b if conv_state_indices is None else int(conv_state_indices[b])
        if conv_state_indices is not None and slot == pad_slot_id:
            continue
        window = torch.cat([conv_state[slot].to(F64), x[b].to(F64)[:, None]], dim=-1)  # [dim, W]
        y = (window * weight.to(F64)).sum(-1)
        if bias is not None:
            y = y + bias.to(F64)
        out[b] = F.silu(y) if silu else y
        conv_state[slot] = window[:, 1:].to(conv_state.dtype)
    return out.to(x.dtype)
