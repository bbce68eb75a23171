"""Vectorised PyTorch paths of the decode step and the prefill conv (what CPU tensors run).

On CPU these run once per generated token per layer, so they avoid copies: without slot indices the
state is updated through a view of its first rows (in place when autograd does not need the old
values), and one output op replaces per-row work. Arithmetic is float32 (float64 for float64 inputs)
whatever the storage dtype. With autograd on, the update is written out of place and copied back so
backward still sees the old state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _needs_grad(*ts: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _rows_and_slots(idx: torch.Tensor | None, batch: int, n_slots: int, pad_slot_id: int, op: str, name: str):
    """(rows, slots): which batch rows run (None: all) and which state slots they use (None: 0..batch-1)."""
    if idx is None:
        return None, None
    if idx.device.type == "cpu":
        _checks.slot_indices(op, name, idx, n_slots, pad_slot_id)
    keep = idx != pad_slot_id
    if bool(keep.all()):
        return None, idx.long()
    rows = keep.nonzero().squeeze(1)
    return rows, idx[rows].long()


def _scatter_rows(y: torch.Tensor, rows: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor:
    if rows is None:
        return y.to(dtype)
    out = torch.zeros(batch, y.shape[1], dtype=dtype, device=y.device)
    return out.index_copy(0, rows, y.to(dtype))


def selective_state_update_torch(
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
    op = "selective_state_update"
    a = _checks.state_update_args(op, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    rows, slots = _rows_and_slots(
        state_batch_indices, a.batch, a.n_slots, pad_slot_id, op, "state_batch_indices"
    )
    Bg, Cg = a.B, a.C
    if rows is not None:
        x, dt, Bg, Cg = x[rows], dt[rows], Bg[rows], Cg[rows]
        z = None if z is None else z[rows]
    n = x.shape[0]
    cdt = _compute_dtype(state, x)
    d = dt.to(cdt)
    if dt_bias is not None:
        d = d + dt_bias.to(cdt)
    if dt_softplus:
        d = F.softplus(d)
    dA = (d.unsqueeze(-1) * A.to(cdt)).exp_()  # [n, dim, N]: the one large temporary
    dx = (d * x.to(cdt)).unflatten(1, (a.groups, -1)).unsqueeze(-1)  # [n, G, dim/G, 1]
    Bn = Bg.to(cdt).unsqueeze(2)  # [n, G, 1, N]
    grad = _needs_grad(state, x, dt, A, B, dt_bias)
    in_place = slots is None and state.dtype == cdt and not grad
    if in_place:
        h = state[:n].mul_(dA)  # through a view of the first rows: no gather, no scatter, no copy
    else:
        old = state[:n].to(cdt, copy=True) if slots is None else state.index_select(0, slots).to(cdt)
        # Out of place under autograd: backward keeps `old` while `state` is overwritten.
        h = old * dA if grad else old.mul_(dA)
    h.unflatten(1, (a.groups, -1)).addcmul_(dx, Bn)  # += dt x B, broadcast: no [n, dim, N] temporary
    if not in_place:
        if slots is None:
            state[:n].copy_(h)
        else:
            state.index_copy_(0, slots, h.to(state.dtype))
    y = torch.matmul(h.unflatten(1, (a.groups, -1)), Cg.to(cdt).unsqueeze(-1)).flatten(1)  # [n, dim]
    if D is not None:
        y = y + D.to(cdt) * x.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return _scatter_rows(y, rows, a.batch, x.dtype)


def causal_conv1d_update_torch(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    conv_state_indices: torch.Tensor | None = None,
    pad_slot_id: int = -1,
) -> torch.Tensor:
    op = "causal_conv1d_update"
    batch, _dim, _width, n_slots = _checks.conv_update_args(
        op, x, conv_state, weight, bias, conv_state_indices
    )
    silu = _checks.activation(op, activation)
    rows, slots = _rows_and_slots(conv_state_indices, batch, n_slots, pad_slot_id, op, "conv_state_indices")
    if rows is not None:
        x = x[rows]
    n = x.shape[0]
    cdt = _compute_dtype(conv_state, x)
    old = conv_state[:n] if slots is None else conv_state.index_select(0, slots)
    window = torch.cat([old.to(cdt), x.to(cdt).unsqueeze(-1)], dim=-1)  # [n, dim, W]
    y = (window * weight.to(cdt)).sum(-1)
    if bias is not None:
        y = y + bias.to(cdt)
    if silu:
        y = F.silu(y)
    if slots is None:
        conv_state[:n].copy_(window[..., 1:])
    else:
        conv_state.index_copy_(0, slots, window[..., 1:].to(conv_state.dtype))
    return _scatter_rows(y, rows, batch, x.dtype)


def final_conv_states(x: torch.Tensor, initial_states: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last W-1 inputs, reaching into initial_states (or zeros) when L < W-1; x's dtype."""
    keep = width - 1
    seqlen = x.shape[-1]
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if not tracing and seqlen >= keep:
        return x[..., seqlen - keep :].clone(memory_format=torch.contiguous_format)
    left = (
        initial_states.to(x.dtype)
        if initial_states is not None
        else torch.zeros(x.shape[0], x.shape[1], keep, dtype=x.dtype, device=x.device)
    )
    # Traced graphs take this branch for every L: no guard on the (symbolic) length.
    return torch.cat([left, x], dim=-1)[..., -keep:].contiguous()


def causal_conv1d_fn_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    activation: str | None = None,
):
    op = "causal_conv1d_fn"
    _batch, dim, seqlen, width = _checks.conv_fn_args(op, x, weight, bias, initial_states)
    silu = _checks.activation(op, activation)
    cdt = _compute_dtype(x)
    w = weight.to(cdt).unsqueeze(1)  # [dim, 1, W]
    b = None if bias is None else bias.to(cdt)
    if initial_states is None:
        y = F.conv1d(x.to(cdt), w, b, padding=width - 1, groups=dim)[..., :seqlen]
    else:
        xpad = torch.cat([initial_states.to(cdt), x.to(cdt)], dim=-1)
        y = F.conv1d(xpad, w, b, groups=dim)
    if silu:
        y = F.silu(y)
    out = y.to(x.dtype)
    if not return_final_states:
        return out
    return out, final_conv_states(x, initial_states, width)
