"""Argument validation shared by the references, the PyTorch paths and the Triton wrappers.

Every path raises the same clear error for the same bad input (naming the field and the expected
shape), and the Triton wrappers depend on it: the interpreter does no bounds checking, and on a GPU a
wrong shape reads or writes someone else's memory. The normalised views returned here (grouped B/C as
`[batch, G, N, L]`) are zero-copy, so the checks cost a few microseconds per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def _fmt(names: str, shape: tuple[int, ...]) -> str:
    return f"[{names}] = {list(shape)}"


def tensor(
    op: str,
    name: str,
    t: object,
    shape: tuple[int, ...],
    names: str,
    *,
    device: torch.device | None = None,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
) -> torch.Tensor:
    """Check type, shape, dtype and device of one argument; return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {_fmt(names, shape)}, got {list(t.shape)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected one of {allowed}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device}, but the other tensors are on {device}")
    return t


def optional(op: str, name: str, t: object, shape: tuple[int, ...], names: str, **kw) -> torch.Tensor | None:
    return None if t is None else tensor(op, name, t, shape, names, **kw)


def rank(op: str, name: str, t: object, ranks: tuple[int, ...], names: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ranks:
        raise ValueError(f"{op}: {name} must be {names}, got shape {list(t.shape)}")
    return t


def activation(op: str, act: object) -> bool:
    """True for SiLU; accepts the causal-conv1d spellings None / "silu" / "swish"."""
    if act is None:
        return False
    if act in ("silu", "swish"):
        return True
    raise ValueError(f'{op}: activation must be None, "silu" or "swish", got {act!r}')


def _group_view(op: str, name: str, t: torch.Tensor, batch: int, dim: int, dstate: int, seqlen: int, device):
    """B or C as a zero-copy `[batch, G, N, L]` view; channel d reads group d // (dim // G)."""
    rank(op, name, t, (2, 3, 4), "[batch, N, L], [batch, G, N, L] or time-invariant [dim, N]")
    if t.dim() == 2:
        tensor(op, name, t, (dim, dstate), "dim, N", device=device)
        return t[None, :, :, None].expand(batch, dim, dstate, seqlen)
    if t.dim() == 3:
        tensor(op, name, t, (batch, dstate, seqlen), "batch, N, L", device=device)
        return t.unsqueeze(1)
    groups = t.shape[1]
    if groups < 1 or dim % groups:
        raise ValueError(
            f"{op}: {name} has {groups} groups (dim 1 of {list(t.shape)}); dim={dim} must be divisible by it"
        )
    tensor(op, name, t, (batch, groups, dstate, seqlen), "batch, G, N, L", device=device)
    return t


@dataclass(frozen=True)
class ScanArgs:
    batch: int
    dim: int
    seqlen: int
    dstate: int
    groups: int
    B: torch.Tensor  # [batch, G, N, L] view
    C: torch.Tensor  # [batch, G, N, L] view


def scan_args(op, u, delta, A, B, C, D, z, delta_bias, initial_state) -> ScanArgs:
    rank(op, "u", u, (3,), "[batch, dim, L]")
    batch, dim, seqlen = u.shape
    dev = u.device
    rank(op, "A", A, (2,), "[dim, N]")
    if A.is_complex():
        raise TypeError(f"{op}: complex A is not supported (real-valued Mamba only)")
    dstate = A.shape[1]
    tensor(op, "u", u, (batch, dim, seqlen), "batch, dim, L")
    tensor(op, "delta", delta, (batch, dim, seqlen), "batch, dim, L", device=dev)
    tensor(op, "A", A, (dim, dstate), "dim, N", device=dev)
    Bv = _group_view(op, "B", B, batch, dim, dstate, seqlen, dev)
    Cv = _group_view(op, "C", C, batch, dim, dstate, seqlen, dev)
    optional(op, "D", D, (dim,), "dim", device=dev)
    optional(op, "z", z, (batch, dim, seqlen), "batch, dim, L", device=dev)
    optional(op, "delta_bias", delta_bias, (dim,), "dim", device=dev)
    optional(op, "initial_state", initial_state, (batch, dim, dstate), "batch, dim, N", device=dev)
    if dstate < 1:
        raise ValueError(f"{op}: A must have N >= 1 state columns, got shape {list(A.shape)}")
    return ScanArgs(batch, dim, seqlen, dstate, Bv.shape[1], Bv, Cv)


@dataclass(frozen=True)
class StepArgs:
    batch: int
    dim: int
    dstate: int
    n_slots: int
    groups: int
    B: torch.Tensor  # [batch, G, N] view
    C: torch.Tensor  # [batch, G, N] view


def _step_group_view(op, name, t, batch, dim, dstate, dev) -> torch.Tensor:
    rank(op, name, t, (2, 3), "[batch, N] or grouped [batch, G, N]")
    if t.dim() == 2:
        return tensor(op, name, t, (batch, dstate), "batch, N", device=dev).unsqueeze(1)
    groups = t.shape[1]
    if groups < 1 or dim % groups:
        raise ValueError(
            f"{op}: {name} has {groups} groups (dim 1 of {list(t.shape)}); dim={dim} must be divisible by it"
        )
    return tensor(op, name, t, (batch, groups, dstate), "batch, G, N", device=dev)


def state_update_args(op, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices) -> StepArgs:
    rank(op, "state", state, (3,), "[slots, dim, N]")
    n_slots, dim, dstate = state.shape
    dev = state.device
    tensor(op, "state", state, (n_slots, dim, dstate), "slots, dim, N", dtypes=FLOAT_DTYPES)
    rank(op, "x", x, (2,), "[batch, dim]")
    batch = x.shape[0]
    tensor(op, "x", x, (batch, dim), "batch, dim", device=dev)
    tensor(op, "dt", dt, (batch, dim), "batch, dim", device=dev)
    tensor(op, "A", A, (dim, dstate), "dim, N", device=dev)
    Bv = _step_group_view(op, "B", B, batch, dim, dstate, dev)
    Cv = _step_group_view(op, "C", C, batch, dim, dstate, dev)
    optional(op, "D", D, (dim,), "dim", device=dev)
    optional(op, "z", z, (batch, dim), "batch, dim", device=dev)
    optional(op, "dt_bias", dt_bias, (dim,), "dim", device=dev)
    optional(
        op, "state_batch_indices", state_batch_indices, (batch,), "batch", device=dev, dtypes=INDEX_DTYPES
    )
    if state_batch_indices is None and batch > n_slots:
        raise ValueError(
            f"{op}: batch={batch} rows but state has only {n_slots} slots (pass state_batch_indices)"
        )
    return StepArgs(batch, dim, dstate, n_slots, Bv.shape[1], Bv, Cv)


def conv_update_args(op, x, conv_state, weight, bias, conv_state_indices) -> tuple[int, int, int, int]:
    """Return (batch, dim, width, n_slots)."""
    rank(op, "weight", weight, (2,), "[dim, W]")
    dim, width = weight.shape
    if width < 2:
        raise ValueError(f"{op}: weight width W must be >= 2, got shape {list(weight.shape)}")
    dev = weight.device
    rank(op, "x", x, (2,), "[batch, dim]")
    batch = x.shape[0]
    tensor(op, "x", x, (batch, dim), "batch, dim", device=dev)
    rank(op, "conv_state", conv_state, (3,), "[slots, dim, W-1]")
    n_slots = conv_state.shape[0]
    tensor(op, "conv_state", conv_state, (n_slots, dim, width - 1), "slots, dim, W-1", device=dev)
    optional(op, "bias", bias, (dim,), "dim", device=dev)
    optional(op, "conv_state_indices", conv_state_indices, (batch,), "batch", device=dev, dtypes=INDEX_DTYPES)
    if conv_state_indices is None and batch > n_slots:
        raise ValueError(
            f"{op}: batch={batch} rows but conv_state has only {n_slots} slots (pass conv_state_indices)"
        )
    return batch, dim, width, n_slots


def conv_fn_args(op, x, weight, bias, initial_states) -> tuple[int, int, int, int]:
    """Return (batch, dim, seqlen, width)."""
    rank(op, "x", x, (3,), "[batch, dim, L]")
    batch, dim, seqlen = x.shape
    dev = x.device
    rank(op, "weight", weight, (2,), "[dim, W]")
    width = weight.shape[1]
    if width < 2:
        raise ValueError(f"{op}: weight width W must be >= 2, got shape {list(weight.shape)}")
    tensor(op, "weight", weight, (dim, width), "dim, W", device=dev)
    optional(op, "bias", bias, (dim,), "dim", device=dev)
    optional(op, "initial_states", initial_states, (batch, dim, width - 1), "batch, dim, W-1", device=dev)
    return batch, dim, seqlen, width


def slot_indices(op: str, name: str, idx: torch.Tensor, n_slots: int, pad_slot_id: int) -> None:
    """Every entry is a slot in [0, n_slots) or pad_slot_id, and no slot appears twice.

    Reads the indices, so only called where that costs no device sync (CPU tensors).
    """
    if idx.numel() == 0:
        return
    real = idx[idx != pad_slot_id]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= n_slots):
        raise ValueError(
            f"{op}: {name} must be in [0, {n_slots}) or equal pad_slot_id={pad_slot_id}, got {idx.tolist()}"
        )
    if real.numel() > 1 and torch.unique(real).numel() != real.numel():
        raise ValueError(f"{op}: {name} repeats a slot (each row needs its own slot), got {idx.tolist()}")
