"""Random inputs for the kernels, in the layouts a Mamba model really produces (tests, benchmark).

`strided=True` gives the non-contiguous views a model hands over: u/delta/z and B/C transposed out
of [batch, L, ...] projections, A transposed, vectors with stride 2, states permuted. Values are
scaled like a trained Mamba: softplus(delta + bias) around 0.05-0.5, A = -exp(...) in about [-4, -0.3].
"""

from __future__ import annotations

import torch


def _rand(shape, dtype, device, gen, *, scale=1.0, shift=0.0, layout=None) -> torch.Tensor:
    """Random tensor of `shape`; `layout` is a permutation of storage order (None: contiguous),
    or "step2" for an innermost stride of 2."""
    if layout == "step2":
        big = torch.randn(*shape[:-1], shape[-1] * 2, generator=gen) * scale + shift
        return big.to(device=device, dtype=dtype)[..., ::2]
    if layout is None:
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device=device, dtype=dtype)
    stored = [shape[i] for i in layout]
    t = (torch.randn(*stored, generator=gen) * scale + shift).to(device=device, dtype=dtype)
    inverse = [layout.index(i) for i in range(len(shape))]
    return t.permute(*inverse)


def _vec(n, dtype, device, gen, strided, *, scale=1.0, shift=0.0) -> torch.Tensor:
    if not strided:
        return (torch.randn(n, generator=gen) * scale + shift).to(device=device, dtype=dtype)
    return (torch.randn(2 * n, generator=gen) * scale + shift).to(device=device, dtype=dtype)[::2]


def _A(dim, dstate, device, gen, strided) -> torch.Tensor:
    a = -torch.exp(torch.rand(dstate, dim, generator=gen) * 2.5 - 1.2).to(device)
    return a.t() if strided else a.t().contiguous()


def scan_inputs(
    batch: int,
    dim: int,
    dstate: int,
    seqlen: int,
    *,
    dtype: torch.dtype = torch.float32,
    groups: int | None = None,
    time_invariant: bool = False,
    strided: bool = False,
    options: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict:
    """kwargs for selective_scan: u, delta, A, B, C (+ D, z, delta_bias, delta_softplus, initial_state)."""
    g = torch.Generator().manual_seed(seed)
    lay3 = (0, 2, 1) if strided else None  # stored [batch, L, dim], viewed [batch, dim, L]
    u = _rand((batch, dim, seqlen), dtype, device, g, layout=lay3)
    delta = _rand(
        (batch, dim, seqlen), dtype, device, g, scale=0.5, shift=-1.5 if options else 0.2, layout=lay3
    )
    if not options:
        delta = delta.abs()  # no softplus: delta itself must be a positive step
    if time_invariant:
        B = _rand((dim, dstate), torch.float32, device, g, layout=(1, 0) if strided else None)
        C = _rand((dim, dstate), torch.float32, device, g, layout=(1, 0) if strided else None)
    elif groups is None:
        B = _rand((batch, dstate, seqlen), dtype, device, g, layout=lay3)
        C = _rand((batch, dstate, seqlen), dtype, device, g, layout=lay3)
    else:
        lay4 = (0, 3, 1, 2) if strided else None  # stored [batch, L, G, N]
        B = _rand((batch, groups, dstate, seqlen), dtype, device, g, layout=lay4)
        C = _rand((batch, groups, dstate, seqlen), dtype, device, g, layout=lay4)
    out = dict(u=u, delta=delta, A=_A(dim, dstate, device, g, strided), B=B, C=C)
    if options:
        out.update(
            D=_vec(dim, torch.float32, device, g, strided),
            z=_rand((batch, dim, seqlen), dtype, device, g, layout=lay3),
            delta_bias=_vec(dim, torch.float32, device, g, strided, scale=0.5),
            delta_softplus=True,
            initial_state=_rand(
                (batch, dim, dstate), torch.float32, device, g, layout=(2, 0, 1) if strided else None
            ),
        )
    return out


def state_update_inputs(
    batch: int,
    dim: int,
    dstate: int,
    *,
    n_slots: int | None = None,
    dtype: torch.dtype = torch.float32,
    state_dtype: torch.dtype = torch.float32,
    groups: int | None = None,
    strided: bool = False,
    options: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict:
    """kwargs for selective_state_update: state, x, dt, A, B, C (+ D, z, dt_bias, dt_softplus)."""
    g = torch.Generator().manual_seed(seed)
    n_slots = batch if n_slots is None else n_slots
    lay2 = (1, 0) if strided else None
    state = _rand((n_slots, dim, dstate), state_dtype, device, g, layout=(0, 2, 1) if strided else None)
    x = _rand((batch, dim), dtype, device, g, layout="step2" if strided else None)
    dt = _rand((batch, dim), dtype, device, g, scale=0.5, shift=-1.5 if options else 0.2, layout=lay2)
    if not options:
        dt = dt.abs()
    if groups is None:
        B = _rand((batch, dstate), dtype, device, g, layout="step2" if strided else None)
        C = _rand((batch, dstate), dtype, device, g, layout=lay2)
    else:
        B = _rand((batch, groups, dstate), dtype, device, g, layout=(1, 0, 2) if strided else None)
        C = _rand((batch, groups, dstate), dtype, device, g, layout=(2, 0, 1) if strided else None)
    out = dict(state=state, x=x, dt=dt, A=_A(dim, dstate, device, g, strided), B=B, C=C)
    if options:
        out.update(
            D=_vec(dim, torch.float32, device, g, strided),
            z=_rand((batch, dim), dtype, device, g, layout=lay2),
            dt_bias=_vec(dim, torch.float32, device, g, strided, scale=0.5),
            dt_softplus=True,
        )
    return out


def conv_inputs(
    batch: int,
    dim: int,
    width: int,
    seqlen: int | None = None,
    *,
    n_slots: int | None = None,
    dtype: torch.dtype = torch.float32,
    state_dtype: torch.dtype | None = None,
    strided: bool = False,
    options: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict:
    """seqlen None: kwargs for causal_conv1d_update (x [batch, dim], conv_state); else for
    causal_conv1d_fn (x [batch, dim, L], initial_states when options)."""
    g = torch.Generator().manual_seed(seed)
    state_dtype = dtype if state_dtype is None else state_dtype
    weight = _rand((dim, width), dtype, device, g, scale=0.5, layout=(1, 0) if strided else None)
    out: dict = dict(weight=weight)
    if seqlen is None:
        n_slots = batch if n_slots is None else n_slots
        out["x"] = _rand((batch, dim), dtype, device, g, layout=(1, 0) if strided else None)
        if strided:  # a [slots, dim, W-1] window into a wider buffer, channel-last storage
            buf = _rand((n_slots, dim, width + 2), state_dtype, device, g, layout=(0, 2, 1))
            out["conv_state"] = buf[..., 1:width]
        else:
            out["conv_state"] = _rand((n_slots, dim, width - 1), state_dtype, device, g)
    else:
        out["x"] = _rand((batch, dim, seqlen), dtype, device, g, layout=(0, 2, 1) if strided else None)
        if options:
            out["initial_states"] = _rand(
                (batch, dim, width - 1), dtype, device, g, layout=(0, 2, 1) if strided else None
            )
    if options:
        out["bias"] = _vec(dim, dtype, device, g, strided)
        out["activation"] = "silu"
    return out


def to64(kwargs: dict) -> dict:
    """The same inputs in float64 (after their own rounding), for the reference."""
    return {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in kwargs.items()
    }


def clone(kwargs: dict) -> dict:
    """Copy for in-place ops (tensors cloned; dense layouts keep their strides)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).norm() / e.norm().clamp_min(1e-300))
