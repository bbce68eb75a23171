"""Selective scan on the CPU: a training-speed autograd path and an ONNX-exportable path.

Same semantics and argument names as mamba-ssm's ``selective_scan_fn`` (plus ``initial_state``),
so that on a GPU the dispatcher can swap in our Triton kernel without the model noticing.

Why two paths:
- Training on 2 CPU cores needs the scan to touch memory as little as possible. One autograd
  function holds the forward and an analytic backward; both work one time chunk at a time (so the
  working set stays in cache: past ~20 MB a chunk gets 2-3x slower per element), build the
  discretised decays and inputs vectorised, and loop only over the first-order recurrence
  ``h_t = a_t * h_{t-1} + b_t`` (forward) and its reverse (backward). Generic autograd through the
  same einsums was 2-3x slower.
- ``torch.onnx.export`` unrolls a Python loop and freezes it at the trace length. Under export we
  use ``torch._higher_order_ops.scan``, which the dynamo exporter lowers to an ONNX ``Scan`` with a
  dynamic length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 19
"""Target size (elements of the [chunk, B, D, N] state tensors) of one time chunk."""
_MIN_CHUNK = 16
"""Fewest time steps per chunk: below this, per-op overhead outweighs the cache benefit."""


class _SelectiveScan(torch.autograd.Function):
    """The scan core, forward and analytic backward, one time chunk at a time.

    Inputs are already discretisation-ready: delta (after bias and softplus) and u [b, d, l], A [d, n],
    B and C [b, n, l] (or per channel [b, d, n, l]), h0 [b, d, n]. Returns y [b, d, l] (without the D
    skip and the z gate, which autograd handles) and the last state.

    Backward, with g_t the gradient reaching h_t (g_t = gy_t C_t + a_{t+1} g_{t+1}) and q_t = g_t a_t h_{t-1}:
    dC = sum_d gy h, dB = sum_d g delta u, du = delta sum_n g B, ddelta = sum_n q A + u sum_n g B,
    dA = sum_{b,t} q delta, dh0 = a_0 g_0. Only the recurrence for g is a loop.
    """

    @staticmethod
    def forward(
        ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor
    ) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        batch, dim, length = u.shape
        chunk = max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(1, batch * dim * A.shape[1]))
        # Time-major contiguous copies, so every step below reads and writes one contiguous slab.
        delta_t, deltau_t = _time_major(delta), _time_major(delta * u)  # [l, b, d]
        B_t, C_t = _time_major_bc(B), _time_major_bc(C)  # [l, b, 1 or d, n]
        ys = []
        h = h0
        states = []
        for start in range(0, length, chunk):
            sl = slice(start, min(length, start + chunk))
            decay = torch.exp(delta_t[sl, ..., None] * A)  # [lc, b, d, n]
            hs = deltau_t[sl, ..., None] * B_t[sl]  # the drive, overwritten in place by the states
            for t in range(hs.shape[0]):
                h = torch.addcmul(hs[t], decay[t], h, out=hs[t])
            ys.append((hs * C_t[sl]).sum(-1))  # [lc, b, d]
            states.append(hs)
        ctx.save_for_backward(u, delta, A, B, C, h0, *states)
        ctx.chunk = chunk
        return torch.cat(ys).permute(1, 2, 0), h.clone()

    @staticmethod
    def backward(ctx, gy: Tensor, g_last: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, delta, A, B, C, h0, *states = ctx.saved_tensors
        chunk = ctx.chunk
        delta_t, u_t, gy_t = _time_major(delta), _time_major(u), _time_major(gy)
        B_t, C_t = _time_major_bc(B), _time_major_bc(C)
        gu_t, gdelta_t = torch.empty_like(u_t), torch.empty_like(delta_t)
        gB_t, gC_t = torch.empty_like(B_t), torch.empty_like(C_t)
        reduce_bc = B_t.shape[2] == 1  # shared B/C: sum the per-channel gradients over d
        gA = torch.zeros_like(A)
        carry = g_last if g_last is not None else torch.zeros_like(h0)  # gradient reaching the chunk's last h
        for index in range(len(states) - 1, -1, -1):
            hs = states[index]
            sl = slice(index * chunk, index * chunk + hs.shape[0])
            h_before = states[index - 1][-1] if index else h0
            decay = torch.exp(delta_t[sl, ..., None] * A)
            g = gy_t[sl, ..., None] * C_t[sl]  # gy C, then the recurrence below turns it into g
            g[-1] += carry
            for t in range(g.shape[0] - 2, -1, -1):
                torch.addcmul(g[t], decay[t + 1], g[t + 1], out=g[t])
            carry = decay[0] * g[0]
            gc = gy_t[sl, ..., None] * hs
            gC_t[sl] = gc.sum(2, keepdim=True) if reduce_bc else gc
            g_b = (g * B_t[sl]).sum(-1)  # sum_n g B  [lc, b, d]
            gb = (delta_t[sl] * u_t[sl])[..., None] * g
            gB_t[sl] = gb.sum(2, keepdim=True) if reduce_bc else gb
            q = g.mul_(decay)  # g is no longer needed: q_t = g_t a_t h_{t-1}
            q[1:] *= hs[:-1]
            q[0] *= h_before
            gA += torch.einsum("lbdn,lbd->dn", q, delta_t[sl])
            gdelta_t[sl] = (q * A).sum(-1) + u_t[sl] * g_b
            gu_t[sl] = delta_t[sl] * g_b
        return (
            gu_t.permute(1, 2, 0),
            gdelta_t.permute(1, 2, 0),
            gA,
            _from_time_major_bc(gB_t, B),
            _from_time_major_bc(gC_t, C),
            carry,
        )


def _time_major(x: Tensor) -> Tensor:
    """[b, d, l] -> contiguous [l, b, d]."""
    return x.permute(2, 0, 1).contiguous()


def _time_major_bc(x: Tensor) -> Tensor:
    """B or C, [b, n, l] or per channel [b, d, n, l] -> contiguous [l, b, 1 or d, n]."""
    if x.dim() == 3:
        return x.permute(2, 0, 1).unsqueeze(2).contiguous()
    return x.permute(3, 0, 1, 2).contiguous()


def _from_time_major_bc(g: Tensor, like: Tensor) -> Tensor:
    return g[:, :, 0].permute(1, 2, 0) if like.dim() == 3 else g.permute(1, 2, 3, 0)


def _prepare(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Inputs in the compute dtype, delta transformed, grouped B/C expanded to one row per channel."""
    ct = _compute_dtype(u)
    u, delta, A, B, C = u.to(ct), delta.to(ct), A.to(ct), B.to(ct), C.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = softplus_exportable(delta) if torch.compiler.is_exporting() else F.softplus(delta)
    if B.dim() == 4:  # grouped [b, g, n, l]: channel d reads group d // (D // g)
        B = B.repeat_interleave(u.shape[1] // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(u.shape[1] // C.shape[1], dim=1)
    return u, delta, A, B, C


def softplus_exportable(x: Tensor) -> Tensor:
    """relu(x) + log1p(exp(-|x|)) in ops ONNX Runtime vectorises (its Softplus kernel is a scalar loop).

    ONNX has no Log1p; log1p(e) is computed as e * log(u) / (u - 1) with u = 1 + e (Goldberg), a few
    ulps from exact where log(1 + e) would lose ~1e-4 relative for e ~ 1e-3.
    """
    e = torch.exp(-x.abs())
    u = 1 + e
    d = u - 1
    return torch.relu(x) + torch.where(d == 0, e, torch.log(u) * (e / d))


def _compute_dtype(t: Tensor) -> torch.dtype:
    """fp32 accumulation for fp16/bf16/fp32 inputs; float64 stays float64 (references, gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _bc_equation(t: Tensor) -> str:
    return "bdnl" if t.dim() == 4 else "bnl"


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u * D.to(u.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(u.dtype))
    return y.to(dtype)


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with mamba-ssm semantics; differentiable; exportable under torch.export.

    Shapes: u, delta, z [b, d, l]; A [d, n]; B, C [b, n, l] or grouped [b, g, n, l]; D, delta_bias [d];
    initial_state [b, d, n]. Returns y [b, d, l] in u's dtype, and the last state [b, d, n] (fp32, or fp64 for fp64 inputs)
    when ``return_last_state``.
    """
    if torch.compiler.is_exporting():
        return _selective_scan_exportable(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
        )
    dtype = u.dtype
    batch, dim, length = u.shape
    n = A.shape[1]
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h0 = u.new_zeros(batch, dim, n) if initial_state is None else initial_state.to(u.dtype)
    if length == 0:
        y, h = u.new_zeros(batch, dim, 0), h0
    else:
        y, h = _SelectiveScan.apply(u, delta, A, B, C, h0)
    out = _finish(y, u, D, z, dtype)
    return (out, h) if return_last_state else out


def _selective_scan_exportable(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
    initial_state: Tensor | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The same computation as a ``scan`` higher-order op, so ONNX keeps the length dynamic."""
    from torch._higher_order_ops.scan import scan

    dtype = u.dtype
    # Export is inference only. With inputs that require grad, the ONNX exporter's type-promotion
    # pass replays `scan` through its autograd path, which fails on symbolic lengths (torch 2.13).
    u, delta, A, B, C = (t.detach() for t in (u, delta, A, B, C))
    D, z, delta_bias, initial_state = (
        None if t is None else t.detach() for t in (D, z, delta_bias, initial_state)
    )
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    # Time-major step inputs: decay and drive [l, b, d, n], C [l, b, (d,) n].
    decay = torch.exp(delta.permute(2, 0, 1).unsqueeze(-1) * A)
    if B.dim() == 4:
        drive = (delta * u).permute(2, 0, 1).unsqueeze(-1) * B.permute(3, 0, 1, 2)
    else:
        drive = (delta * u).permute(2, 0, 1).unsqueeze(-1) * B.permute(2, 0, 1).unsqueeze(2)
    c_steps = C.permute(3, 0, 1, 2) if C.dim() == 4 else C.permute(2, 0, 1).unsqueeze(2)
    # Build the initial state without symbolic sizes (see the export notes).
    h0 = torch.zeros_like(decay[0]) if initial_state is None else initial_state.to(decay.dtype)

    # The loop body is one multiply-add per step; the read-out C.h runs after the loop as one batched
    # MatMul over all steps. With the read-out inside the body (broadcasting Mul + ReduceSum per step)
    # the encoder graph took 2.2x longer in ONNX Runtime (a per-frame loop of small broadcasting ops).
    def step(h: Tensor, xs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a_t, b_t = xs
        h = a_t * h + b_t
        return h, h.clone()

    h_last, hs = scan(step, h0, (decay, drive))  # hs [l, b, d, n]
    length, batch, dim, n = hs.shape
    if c_steps.shape[2] == 1:  # C shared by the channels: [l*b, d, n] @ [l*b, n, 1]
        ys = torch.matmul(hs.reshape(length * batch, dim, n), c_steps.reshape(length * batch, n, 1))
        ys = ys.reshape(length, batch, dim)
    else:
        ys = (hs * c_steps).sum(-1)
    y = ys.permute(1, 2, 0)
    out = _finish(y, u, D, z, dtype)
    return (out, h_last) if return_last_state else out
