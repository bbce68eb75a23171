"""Selective scan on the CPU: a training-speed autograd path and an ONNX-exportable path.

Same semantics and argument names as mamba-ssm's ``selective_scan_fn`` (plus ``initial_state``),
so that on a GPU the dispatcher can swap in our Triton kernel without the model noticing.

Why two paths:
- Training on 2 CPU cores needs the recurrence to touch memory as little as possible. The
  discretised decays and inputs are built vectorised, one time chunk at a time (so the working set
  stays in cache: past ~20 MB a chunk gets 2-3x slower per element), and only the first-order
  recurrence ``h_t = a_t * h_{t-1} + b_t`` runs as a loop, in a custom autograd function whose
  backward is the same recurrence run in reverse.
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


class _LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t over the leading (time) dimension; returns every h_t."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:  # type: ignore[override]
        hs = torch.empty_like(b)
        h = h0
        for t in range(a.shape[0]):
            h = torch.addcmul(b[t], a[t], h, out=hs[t])
        ctx.save_for_backward(a, hs, h0)
        return hs

    @staticmethod
    def backward(ctx, grad_hs: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        a, hs, h0 = ctx.saved_tensors
        grad_b = torch.empty_like(grad_hs)
        length = a.shape[0]
        g = grad_b[length - 1].copy_(grad_hs[length - 1])
        for t in range(length - 2, -1, -1):
            g = torch.addcmul(grad_hs[t], a[t + 1], g, out=grad_b[t])
        grad_a = torch.empty_like(a)
        torch.mul(grad_b[1:], hs[:-1], out=grad_a[1:])
        torch.mul(grad_b[0], h0, out=grad_a[0])
        grad_h0 = grad_b[0] * a[0]
        return grad_a, grad_b, grad_h0


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
        delta = F.softplus(delta)
    if B.dim() == 4:  # grouped [b, g, n, l]: channel d reads group d // (D // g)
        B = B.repeat_interleave(u.shape[1] // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(u.shape[1] // C.shape[1], dim=1)
    return u, delta, A, B, C


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
    h = u.new_zeros(batch, dim, n) if initial_state is None else initial_state.to(u.dtype)
    chunk = max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(1, batch * dim * n))
    b_eq, c_eq = _bc_equation(B), _bc_equation(C)
    deltau = delta * u
    ys = []
    for start in range(0, length, chunk):
        sl = slice(start, min(length, start + chunk))
        decay = torch.exp(torch.einsum("bdl,dn->lbdn", delta[..., sl], A))
        drive = torch.einsum(f"bdl,{b_eq}->lbdn", deltau[..., sl], B[..., sl])
        hs = _LinearRecurrence.apply(decay, drive, h)
        ys.append(torch.einsum(f"lbdn,{c_eq}->bdl", hs, C[..., sl]))
        h = hs[-1]
    y = torch.cat(ys, dim=-1) if len(ys) != 1 else ys[0]
    if length == 0:
        y = u.new_zeros(batch, dim, 0)
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

    def step(h: Tensor, xs: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a_t, b_t, c_t = xs
        h = a_t * h + b_t
        return h.clone(), (h * c_t).sum(-1)

    h_last, ys = scan(step, h0, (decay, drive, c_steps))
    y = ys.permute(1, 2, 0)
    out = _finish(y, u, D, z, dtype)
    return (out, h_last) if return_last_state else out
