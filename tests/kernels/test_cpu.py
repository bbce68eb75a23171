"""CPU side of mambaserve.kernels: references vs mamba-ssm, the PyTorch paths and the lead's scan_cpu
vs the float64 references, decode == prefill, autograd, and the errors bad input gets.

No Triton here (the interpreter tests are in test_kernels_triton.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch
from mambaserve import kernels
from mambaserve.kernels import reference as ref
from mambaserve.kernels import torch_ops
from mambaserve.kernels.inputs import clone, conv_inputs, rel_err, scan_inputs, state_update_inputs, to64

F64_TOL = 1e-12
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: F64_TOL}


@pytest.fixture(scope="module")
def mamba_ssm():
    """mamba-ssm 2.3.2.post1 installed without its CUDA extension (Makefile recipe); a stub stands in
    for `selective_scan_cuda`, which only its CUDA path calls."""
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref

    return types.SimpleNamespace(
        selective_scan_ref=selective_scan_ref, selective_state_update_ref=selective_state_update_ref
    )


# ---------------------------------------------------------------- references vs mamba-ssm


@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(groups=3),
        dict(time_invariant=True),
        dict(options=False),
        dict(groups=39, strided=True),
    ],
    ids=["shared-BC", "grouped", "time-invariant", "no-options", "per-channel-strided"],
)
def test_scan_reference_matches_mamba_ssm(mamba_ssm, case):
    # mamba-ssm's reference computes in fp32 (it casts u and delta), so agreement is at fp32 level.
    kw = scan_inputs(2, 39, 7, 17, seed=1, **case)
    kw.pop("initial_state", None)  # mamba-ssm's reference has no initial state
    out, last = ref.selective_scan_ref(**to64(kw), return_last_state=True)
    m_out, m_last = mamba_ssm.selective_scan_ref(**kw, return_last_state=True)
    assert rel_err(m_out, out) < 1e-6
    assert rel_err(m_last, last) < 1e-6


@pytest.mark.parametrize("groups", [None, 3])
def test_state_update_reference_matches_mamba_ssm(mamba_ssm, groups):
    kw = to64(state_update_inputs(3, 36, 6, groups=groups, strided=True, seed=2))
    ours, theirs = clone(kw), clone(kw)
    out = ref.selective_state_update_ref(**ours)
    if groups is None:
        m_out = mamba_ssm.selective_state_update_ref(**theirs)
        m_state = theirs["state"]
    else:
        # mamba-ssm groups heads, not channels: 2 heads per group of 12 channels, 6 channels per head,
        # so head h = d // 6 reads group h // 2 = d // 12, as our channel grouping does.
        heads, per_head = 2 * groups, 36 // (2 * groups)
        m_state = theirs["state"].reshape(3, heads, per_head, 6).clone()
        m_out = mamba_ssm.selective_state_update_ref(
            m_state,
            theirs["x"].reshape(3, heads, per_head),
            theirs["dt"].reshape(3, heads, per_head),
            theirs["A"].reshape(heads, per_head, 6),
            theirs["B"],
            theirs["C"],
            D=theirs["D"].reshape(heads, per_head),
            z=theirs["z"].reshape(3, heads, per_head),
            dt_bias=theirs["dt_bias"].reshape(heads, per_head),
            dt_softplus=True,
        ).reshape(3, 36)
        m_state = m_state.reshape(3, 36, 6)
    assert rel_err(out, m_out) < F64_TOL
    assert rel_err(ours["state"], m_state) < F64_TOL
    assert rel_err(ours["state"], kw["state"]) > 1e-3  # the update really happened


def test_state_update_torch_path_matches_mamba_ssm_in_fp32(mamba_ssm):
    kw = state_update_inputs(4, 64, 16, seed=3)
    ours, theirs = clone(kw), clone(kw)
    out = torch_ops.selective_state_update_torch(**ours)
    m_out = mamba_ssm.selective_state_update_ref(**theirs)
    assert rel_err(out, m_out) < 1e-6
    assert rel_err(ours["state"], theirs["state"]) < 1e-6


def test_scan_cpu_paths_match_mamba_ssm_in_fp32(mamba_ssm):
    kw = scan_inputs(2, 48, 16, 40, groups=2, seed=4)
    kw.pop("initial_state")
    m_out, m_last = mamba_ssm.selective_scan_ref(**kw, return_last_state=True)
    out, last = kernels.selective_scan(**kw, return_last_state=True)
    assert rel_err(out, m_out) < 1e-5
    assert rel_err(last, m_last) < 1e-5


# ---------------------------------------------------------------- CPU paths vs float64 references


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize(
    "case",
    [dict(), dict(groups=3, strided=True), dict(options=False)],
    ids=["plain", "grouped-strided", "bare"],
)
def test_selective_scan_cpu_matches_reference(dtype, case):
    kw = scan_inputs(2, 39, 7, 23, dtype=dtype, seed=5, **case)
    out, last = kernels.selective_scan(**kw, return_last_state=True)
    r_out, r_last = ref.selective_scan_ref(**to64(kw), return_last_state=True)
    assert out.dtype == dtype and out.shape == kw["u"].shape
    assert last.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(out, r_out) < TOL[dtype]
    assert rel_err(last, r_last) < (F64_TOL if dtype == torch.float64 else 1e-5)


def test_selective_scan_dispatcher_uses_lead_scan_cpu():
    from mambaserve.kernels.scan_cpu import selective_scan_cpu

    kw = scan_inputs(2, 16, 4, 9, seed=6)
    assert torch.equal(kernels.selective_scan(**kw), selective_scan_cpu(**kw))


@pytest.mark.parametrize(
    "dtype,state_dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float16),
        (torch.float64, torch.float64),
    ],
)
@pytest.mark.parametrize(
    "case",
    [dict(), dict(groups=3, strided=True), dict(options=False)],
    ids=["plain", "grouped-strided", "bare"],
)
@pytest.mark.parametrize("indices", [None, "pads"])
def test_state_update_torch_matches_reference(dtype, state_dtype, case, indices):
    kw = state_update_inputs(4, 39, 7, n_slots=7, dtype=dtype, state_dtype=state_dtype, seed=7, **case)
    if indices:
        kw.update(state_batch_indices=torch.tensor([5, -1, 0, 3]), pad_slot_id=-1)
    before = kw["state"].clone()
    mine, theirs = kw, clone(kw)
    out = kernels.selective_state_update(**mine)
    r_out = ref.selective_state_update_ref(**to64(theirs) | {"state": theirs["state"]})
    assert out.dtype == dtype
    tol = max(TOL[dtype], TOL[state_dtype])
    assert rel_err(out, r_out) < tol
    assert rel_err(mine["state"], theirs["state"]) < tol
    touched = [5, 0, 3] if indices else [0, 1, 2, 3]
    untouched = [s for s in range(7) if s not in touched]
    assert torch.equal(mine["state"][untouched], before[untouched])
    if indices:
        assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("strided", [False, True])
def test_conv_update_torch_matches_reference(dtype, width, strided):
    kw = conv_inputs(4, 37, width, n_slots=6, dtype=dtype, state_dtype=torch.float32, strided=strided, seed=8)
    kw.update(conv_state_indices=torch.tensor([4, 99, 1, 2], dtype=torch.int32), pad_slot_id=99)
    before = kw["conv_state"].clone()
    theirs = clone(kw)
    out = kernels.causal_conv1d_update(**kw)
    r_out = ref.causal_conv1d_update_ref(**theirs)
    assert rel_err(out, r_out) < TOL[dtype]
    assert torch.equal(kw["conv_state"], theirs["conv_state"])  # the shift is a copy: exact
    assert torch.equal(kw["conv_state"][[0, 3, 5]], before[[0, 3, 5]])
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("seqlen", [1, 2, 29])
@pytest.mark.parametrize("options", [False, True])
def test_conv_fn_torch_matches_reference(dtype, seqlen, options):
    kw = conv_inputs(2, 37, 4, seqlen, dtype=dtype, strided=True, options=options, seed=9)
    out, final = kernels.causal_conv1d_fn(**kw, return_final_states=True)
    r_out, r_final = ref.causal_conv1d_ref(**to64(kw), return_final_states=True)
    assert out.dtype == dtype and final.dtype == dtype and final.shape == (2, 37, 3)
    assert rel_err(out, r_out) < TOL[dtype]
    assert torch.equal(final.double(), r_final)  # a slice of the inputs: exact


def test_cpu_decode_steps_equal_prefill():
    """What the model does: prefill a prompt, then decode token by token, in a slot pool."""
    batch, dim, dstate, width, prompt, total = 2, 24, 8, 4, 9, 21
    conv = conv_inputs(batch, dim, width, total, seed=10)
    scan = scan_inputs(batch, dim, dstate, total, seed=11)
    scan.pop("initial_state")
    xc_full = kernels.causal_conv1d_fn(conv["x"], conv["weight"], conv["bias"], activation="silu")
    y_full = kernels.selective_scan(**scan | {"u": xc_full})

    xc, conv_final = kernels.causal_conv1d_fn(
        conv["x"][..., :prompt], conv["weight"], conv["bias"], return_final_states=True, activation="silu"
    )
    sl = lambda t: t[..., :prompt]  # noqa: E731
    y, ssm_final = kernels.selective_scan(
        xc,
        sl(scan["delta"]),
        scan["A"],
        sl(scan["B"]),
        sl(scan["C"]),
        scan["D"],
        sl(scan["z"]),
        scan["delta_bias"],
        True,
        return_last_state=True,
    )
    slots = torch.tensor([3, 1])
    conv_pool = torch.zeros(5, dim, width - 1)
    ssm_pool = torch.zeros(5, dim, dstate)
    conv_pool[slots], ssm_pool[slots] = conv_final, ssm_final
    ys = [y]
    with torch.no_grad():
        for t in range(prompt, total):
            xt = kernels.causal_conv1d_update(
                conv["x"][..., t], conv_pool, conv["weight"], conv["bias"], "silu", slots
            )
            ys.append(
                kernels.selective_state_update(
                    ssm_pool,
                    xt,
                    scan["delta"][..., t],
                    scan["A"],
                    scan["B"][..., t],
                    scan["C"][..., t],
                    scan["D"],
                    scan["z"][..., t],
                    scan["delta_bias"],
                    True,
                    slots,
                )[..., None]
            )
    assert rel_err(torch.cat(ys, dim=-1), y_full) < 1e-5


# ---------------------------------------------------------------- autograd and no_grad


def test_state_update_in_place_under_no_grad_and_differentiable_with_grad():
    kw = to64(state_update_inputs(2, 12, 4, dtype=torch.float64, state_dtype=torch.float64, seed=12))
    state = kw["state"]
    ptr = state.data_ptr()
    with torch.no_grad():
        expected_state = kw["state"].clone()
        expected = ref.selective_state_update_ref(**kw | {"state": expected_state})
        out = kernels.selective_state_update(**kw)
    assert state.data_ptr() == ptr and rel_err(state, expected_state) < F64_TOL
    assert rel_err(out, expected) < F64_TOL

    names = ["x", "dt", "B", "C", "D", "z", "dt_bias"]
    base = {
        k: v.detach().clone().requires_grad_(k in names) for k, v in kw.items() if isinstance(v, torch.Tensor)
    }
    h0 = base.pop("state")

    def step(*args):
        state = h0.clone()
        out = kernels.selective_state_update(state, **dict(zip(names, args)), A=base["A"], dt_softplus=True)
        return out, state

    assert torch.autograd.gradcheck(step, tuple(base[k] for k in names))


def test_conv_paths_differentiable():
    kw = conv_inputs(2, 6, 4, 7, dtype=torch.float64, seed=13)
    args = (
        kw["x"].requires_grad_(),
        kw["weight"].requires_grad_(),
        kw["bias"].requires_grad_(),
        kw["initial_states"].requires_grad_(),
    )
    assert torch.autograd.gradcheck(
        lambda x, w, b, s: kernels.causal_conv1d_fn(x, w, b, s, True, "silu"), args
    )
    up = conv_inputs(3, 6, 4, dtype=torch.float64, seed=14)
    state0 = up["conv_state"]

    def step(x, w, b):
        state = state0.clone()
        return kernels.causal_conv1d_update(x, state, w, b, "silu"), state

    assert torch.autograd.gradcheck(
        step, (up["x"].requires_grad_(), up["weight"].requires_grad_(), up["bias"].requires_grad_())
    )


# ---------------------------------------------------------------- torch.export (what the ONNX export traces)


class _Prefill(torch.nn.Module):
    def __init__(self, dim: int = 8, dstate: int = 4, width: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(dim, width, generator=g))
        self.A = torch.nn.Parameter(-torch.rand(dim, dstate, generator=g) - 0.2)
        self.D = torch.nn.Parameter(torch.randn(dim, generator=g))

    def forward(self, x, dt, B, C, conv0, ssm0):
        xc, conv1 = kernels.causal_conv1d_fn(x, self.w, None, conv0, True, "silu")
        y, ssm1 = kernels.selective_scan(xc, dt, self.A, B, C, self.D, None, None, True, True, ssm0)
        return y, conv1, ssm1


class _Step(_Prefill):
    def forward(self, x, dt, B, C, conv_state, ssm_state):
        xc = kernels.causal_conv1d_update(x, conv_state, self.w, None, "silu")
        return kernels.selective_state_update(ssm_state, xc, dt, self.A, B, C, self.D, dt_softplus=True)


def test_torch_export_with_dynamic_length_and_in_place_decode_step():
    """torch.export must not freeze the sequence length (e.g. by guarding on L >= W-1) and must keep
    the decode step's in-place state updates."""

    def prefill_args(n):
        g = torch.Generator().manual_seed(n)
        return (
            torch.randn(2, 8, n, generator=g),
            torch.randn(2, 8, n, generator=g),
            torch.randn(2, 4, n, generator=g),
            torch.randn(2, 4, n, generator=g),
            torch.randn(2, 8, 3, generator=g),
            torch.randn(2, 8, 4, generator=g),
        )

    model = _Prefill()
    length = torch.export.Dim("L", min=1, max=4096)
    dyn = ({2: length}, {2: length}, {2: length}, {2: length}, None, None)
    exported = torch.export.export(model, prefill_args(16), dynamic_shapes=dyn).module()
    for n in (1, 2, 5, 33):
        for got, want in zip(exported(*prefill_args(n)), model(*prefill_args(n))):
            assert got.shape == want.shape and rel_err(got, want) < 1e-6

    step = _Step()
    args = prefill_args(1)
    args = (args[0][..., 0], args[1][..., 0], args[2][..., 0], args[3][..., 0], args[4], args[5])
    program = torch.export.export(step, tuple(a.clone() for a in args)).module()
    mine = tuple(a.clone() for a in args)
    out = program(*mine)
    want_state = tuple(a.clone() for a in args)
    want = step(*want_state)
    assert rel_err(out, want) < 1e-6
    assert rel_err(mine[4], want_state[4]) < 1e-6 and rel_err(mine[5], want_state[5]) < 1e-6
    assert rel_err(mine[5], args[5]) > 1e-3  # the exported step really updated the state in place


# ---------------------------------------------------------------- errors


def test_errors_name_the_field_and_the_limit():
    kw = scan_inputs(2, 12, 4, 5, groups=3, seed=15)
    with pytest.raises(
        ValueError, match=r"selective_scan: z must have shape \[batch, dim, L\] = \[2, 12, 5\]"
    ):
        kernels.selective_scan(**kw | {"z": kw["z"][..., :4]})
    with pytest.raises(ValueError, match=r"B has 5 groups.*dim=12 must be divisible"):
        kernels.selective_scan(**kw | {"B": torch.randn(2, 5, 4, 5)})
    step = state_update_inputs(3, 8, 4, n_slots=4, seed=16)
    with pytest.raises(ValueError, match=r"state_batch_indices must be in \[0, 4\) or equal pad_slot_id=-1"):
        kernels.selective_state_update(**step, state_batch_indices=torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="state_batch_indices repeats a slot"):
        kernels.selective_state_update(**step, state_batch_indices=torch.tensor([2, -1, 2]))
    with pytest.raises(ValueError, match=r"batch=3 rows but state has only 2 slots"):
        kernels.selective_state_update(**step | {"state": step["state"][:2]})
    with pytest.raises(TypeError, match=r"state_batch_indices has dtype torch\.float32"):
        kernels.selective_state_update(**step, state_batch_indices=torch.tensor([0.0, 1.0, 2.0]))
    conv = conv_inputs(2, 8, 4, seed=17)
    with pytest.raises(ValueError, match=r"conv_state must have shape \[slots, dim, W-1\] = \[2, 8, 3\]"):
        kernels.causal_conv1d_update(**conv | {"conv_state": torch.zeros(2, 8, 4)})
    with pytest.raises(ValueError, match='activation must be None, "silu" or "swish"'):
        kernels.causal_conv1d_update(**conv | {"activation": "relu"})


def test_cuda_routing_falls_back_to_pytorch_when_autograd_needs_a_backward(monkeypatch):
    """The Triton kernels are forward-only. No GPU here, so only the routing decision is checked, on a
    stand-in for a CUDA tensor."""
    from mambaserve.kernels import _use_triton

    monkeypatch.delenv("MAMBASERVE_KERNELS_BACKEND", raising=False)
    cuda = types.SimpleNamespace(is_cuda=True)
    w = torch.zeros(3, requires_grad=True)
    assert _use_triton(cuda, torch.zeros(3), None)
    assert not _use_triton(cuda, torch.zeros(3), w)
    with torch.no_grad():
        assert _use_triton(cuda, w)
    assert not _use_triton(torch.zeros(3), torch.zeros(3))
    monkeypatch.setenv("MAMBASERVE_KERNELS_BACKEND", "triton")
    assert _use_triton(torch.zeros(3), w)


# ---------------------------------------------------------------- light import


def test_import_and_cpu_calls_do_not_import_triton():
    code = (
        "import sys, torch\n"
        "from mambaserve import kernels\n"
        "from mambaserve.kernels.inputs import state_update_inputs, conv_inputs, scan_inputs\n"
        "kernels.selective_state_update(**state_update_inputs(2, 8, 4))\n"
        "kernels.causal_conv1d_update(**conv_inputs(2, 8, 4))\n"
        "kernels.causal_conv1d_fn(**conv_inputs(2, 8, 4, 6))\n"
        "kernels.selective_scan(**scan_inputs(2, 8, 4, 6))\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MAMBASERVE_KERNELS_BACKEND"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
