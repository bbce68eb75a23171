"""The Triton kernels, run by the Triton interpreter on CPU tensors, against the float64 references.

TRITON_INTERPRET=1 must be set before `triton.language` is imported (its library functions are jitted
at import), and setting it inside a shared pytest process would leak into every later test (and break
real GPU kernels on a GPU host). So, run normally, this module collects one test that runs this same
file in a child pytest with the interpreter on from the start; run with TRITON_INTERPRET=1 it collects
the individual tests (`TRITON_INTERPRET=1 pytest tests/test_kernels_triton.py` for per-test output).

Outputs are poisoned with NaN before each call so an element a kernel forgets to write shows up.
Shapes are odd and small (the interpreter costs milliseconds per program per time step); GPU speed is
measured nowhere here. Compilation for real GPUs is test_kernels_compile.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from mambaserve import kernels
from mambaserve.kernels import reference as ref
from mambaserve.kernels.causal_conv1d_triton import causal_conv1d_fn_triton, causal_conv1d_update_triton
from mambaserve.kernels.inputs import clone, conv_inputs, rel_err, scan_inputs, state_update_inputs, to64
from mambaserve.kernels.selective_scan_triton import selective_scan_triton
from mambaserve.kernels.selective_state_update_triton import selective_state_update_triton

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def auto_backend(monkeypatch):
    monkeypatch.delenv("MAMBASERVE_KERNELS_BACKEND", raising=False)


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


# ---------------------------------------------------------------- selective scan

SCAN_CASES = [
    # (dtype, dim, dstate, seqlen, case, block_d)
    (F32, 37, 5, 13, dict(), None),  # one masked block of 64 channels
    (F32, 37, 16, 13, dict(strided=True), 8),  # 5 blocks, the last partial
    (F32, 39, 7, 11, dict(groups=3, strided=True), 16),  # group of 13 straddles blocks: per-channel gather
    (F32, 48, 6, 11, dict(groups=3), 16),  # block inside one group: per-block B/C
    (F32, 37, 5, 11, dict(groups=37), 8),  # one group per channel
    (F32, 37, 3, 11, dict(time_invariant=True, strided=True), 16),
    (F32, 37, 5, 11, dict(options=False), None),
    (F16, 39, 7, 13, dict(groups=3, strided=True), 16),
    (BF16, 37, 9, 13, dict(), None),
    (BF16, 37, 5, 13, dict(strided=True, options=False), 8),
]


@pytest.mark.parametrize("dtype,dim,dstate,seqlen,case,block_d", SCAN_CASES)
def test_scan_matches_reference(dtype, dim, dstate, seqlen, case, block_d):
    kw = scan_inputs(2, dim, dstate, seqlen, dtype=dtype, seed=dim + dstate, **case)
    out = nan_like((2, dim, seqlen), dtype)
    last = nan_like((2, dim, dstate), F32)
    got, got_last = selective_scan_triton(
        **kw, return_last_state=True, out=out, last_state_out=last, block_d=block_d
    )
    r, r_last = ref.selective_scan_ref(**to64(kw), return_last_state=True)
    assert got is out and got_last is last
    assert not out.isnan().any() and not last.isnan().any()
    assert rel_err(out, r) < TOL[dtype]
    assert rel_err(last, r_last) < 1e-5


def test_scan_allocates_outputs_and_handles_empty_sequence():
    kw = scan_inputs(2, 21, 5, 0, seed=1)  # L = 0: out is empty, last state is the initial state
    out, last = selective_scan_triton(**kw, return_last_state=True)
    assert out.shape == (2, 21, 0) and torch.equal(last, kw["initial_state"])
    kw = scan_inputs(1, 21, 5, 7, seed=2)
    out = selective_scan_triton(**kw)
    assert out.dtype == F32 and out.is_contiguous()
    assert rel_err(out, ref.selective_scan_ref(**to64(kw))) < 1e-5


def test_chunked_prefill_with_state_carry_equals_one_scan():
    kw = scan_inputs(2, 37, 6, 40, groups=1, strided=True, seed=3)
    full, full_last = selective_scan_triton(**kw, return_last_state=True, block_d=16)
    outs, state = [], kw["initial_state"]
    for a, b in [(0, 13), (13, 14), (14, 14), (14, 40)]:  # includes a 1-step and an empty chunk
        chunk = {k: (v[..., a:b] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        y, state = selective_scan_triton(
            **chunk | {"initial_state": state}, return_last_state=True, block_d=16
        )
        outs.append(y)
    # Same arithmetic in the same order, and the carried state is fp32 in and out: bit-identical.
    assert torch.equal(torch.cat(outs, dim=-1), full)
    assert torch.equal(state, full_last)


def test_softplus_accurate_for_small_steps():
    """Small steps (dt ~ 1e-4..1.5e-3, softplus inputs -9.5..-6.5; Mamba's dt_min is 1e-3), where a naive
    log(1 + exp(x)) in fp32 is off by ~1e-4 relative; the kernels must match float64 at fp32 level."""
    scan = scan_inputs(2, 37, 5, 13, options=False, seed=20)
    scan["delta"] = torch.linspace(-9.5, -6.5, 2 * 37 * 13).reshape(2, 37, 13)
    got = selective_scan_triton(**scan, delta_softplus=True)
    assert rel_err(got, ref.selective_scan_ref(**to64(scan), delta_softplus=True)) < 1e-5
    step = state_update_inputs(3, 37, 5, options=False, seed=21)
    step["dt"] = torch.linspace(-9.5, -6.5, 3 * 37).reshape(3, 37)
    step["state"].zero_()  # then out = softplus(dt) * x * (B . C): its error is the step's error
    theirs = clone(step)
    out = selective_state_update_triton(**step, dt_softplus=True)
    r = ref.selective_state_update_ref(**to64(theirs) | {"state": theirs["state"]}, dt_softplus=True)
    assert rel_err(out, r) < 1e-5
    assert rel_err(step["state"], theirs["state"]) < 1e-5


# ---------------------------------------------------------------- selective state update


@pytest.mark.parametrize(
    "dtype,state_dtype,dim,case,block_d",
    [
        (F32, F32, 39, dict(), None),
        (F32, F32, 39, dict(strided=True, groups=3), 8),  # 13-channel groups straddle blocks: gather
        (F32, F32, 48, dict(groups=3), 16),  # blocks inside one group: per-block B/C
        (F16, F32, 39, dict(strided=True), 16),
        (BF16, BF16, 39, dict(groups=39), None),
        (BF16, F32, 39, dict(options=False, strided=True), 16),
    ],
)
def test_state_update_matches_reference(dtype, state_dtype, dim, case, block_d):
    kw = state_update_inputs(3, dim, 7, n_slots=5, dtype=dtype, state_dtype=state_dtype, seed=4, **case)
    theirs = clone(kw)
    out = nan_like((3, dim), dtype)
    got = selective_state_update_triton(**kw, out=out, block_d=block_d)
    r = ref.selective_state_update_ref(**to64(theirs) | {"state": theirs["state"]})
    assert got is out and not out.isnan().any()
    tol = max(TOL[dtype], TOL[state_dtype])
    assert rel_err(out, r) < tol
    assert rel_err(kw["state"], theirs["state"]) < tol
    assert torch.equal(kw["state"][3:], theirs["state"][3:])  # slots 3, 4: no row maps there


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("pad_slot_id", [-1, 1000])
def test_state_update_slots_and_pads(index_dtype, pad_slot_id):
    kw = state_update_inputs(5, 37, 6, n_slots=8, strided=True, seed=5)
    idx = torch.tensor([6, pad_slot_id, 0, pad_slot_id, 3], dtype=index_dtype)
    before = kw["state"].clone()
    theirs = clone(kw)
    out = nan_like((5, 37), F32)
    selective_state_update_triton(**kw, state_batch_indices=idx, pad_slot_id=pad_slot_id, out=out, block_d=16)
    r = ref.selective_state_update_ref(
        **to64(theirs) | {"state": theirs["state"]}, state_batch_indices=idx, pad_slot_id=pad_slot_id
    )
    assert torch.equal(out[[1, 3]], torch.zeros(2, 37))  # pad rows: zeros
    assert rel_err(out, r) < 1e-5
    for slot in (6, 0, 3):
        assert rel_err(kw["state"][slot], theirs["state"][slot]) < 1e-5
    for slot in (1, 2, 4, 5, 7):
        assert torch.equal(kw["state"][slot], before[slot])  # bit-unchanged
    with pytest.raises(ValueError, match="state_batch_indices must be in"):
        selective_state_update_triton(
            **kw, state_batch_indices=torch.tensor([6, 8, 0, 1, 2], dtype=index_dtype)
        )


# ---------------------------------------------------------------- causal conv1d


@pytest.mark.parametrize(
    "dtype,state_dtype,width,strided,options,block_d",
    [
        (F32, F32, 4, False, True, None),
        (F32, F32, 3, True, True, 16),
        (F32, F32, 2, True, False, 8),
        (F16, F32, 4, True, True, 16),
        (BF16, BF16, 4, False, True, None),
    ],
)
def test_conv_update_matches_reference(dtype, state_dtype, width, strided, options, block_d):
    kw = conv_inputs(
        4,
        37,
        width,
        n_slots=7,
        dtype=dtype,
        state_dtype=state_dtype,
        strided=strided,
        options=options,
        seed=6,
    )
    idx = torch.tensor([5, -1, 0, 2])
    buffer = kw["conv_state"]
    if strided:  # conv_state is a [.., 1:W] window of a wider channel-last buffer
        buffer = torch.randn(7, width + 2, 37).to(state_dtype).permute(0, 2, 1)
        kw["conv_state"] = buffer[..., 1:width]
    buffer_before = buffer.clone()
    theirs = clone(kw)
    out = nan_like((4, 37), dtype)
    causal_conv1d_update_triton(**kw, conv_state_indices=idx, out=out, block_d=block_d)
    r = ref.causal_conv1d_update_ref(
        **to64(theirs) | {"conv_state": theirs["conv_state"]}, conv_state_indices=idx
    )
    assert torch.equal(out[1], torch.zeros(37, dtype=dtype))
    assert rel_err(out, r) < TOL[dtype]
    assert torch.equal(kw["conv_state"], theirs["conv_state"])  # the shift is a copy: exact
    untouched = [1, 3, 4, 6]
    assert torch.equal(buffer[untouched], buffer_before[untouched])
    if strided:  # columns of the wider buffer outside the [.., 1:W] window are never written
        assert torch.equal(buffer[..., 0], buffer_before[..., 0])
        assert torch.equal(buffer[..., width:], buffer_before[..., width:])


@pytest.mark.parametrize(
    "dtype,seqlen,strided,options,blocks",
    [
        (F32, 29, False, True, (None, None)),
        (F32, 29, True, True, (16, 8)),  # several channel and time blocks
        (F32, 2, True, True, (None, None)),  # L < W-1: final states reach into initial_states
        (F16, 13, True, False, (8, 4)),
        (BF16, 13, False, True, (None, 4)),
    ],
)
def test_conv_fn_matches_reference(dtype, seqlen, strided, options, blocks):
    kw = conv_inputs(2, 37, 4, seqlen, dtype=dtype, strided=strided, options=options, seed=7)
    out = nan_like((2, 37, seqlen), dtype)
    got, final = causal_conv1d_fn_triton(
        **kw, return_final_states=True, out=out, block_d=blocks[0], block_l=blocks[1]
    )
    r, r_final = ref.causal_conv1d_ref(**to64(kw), return_final_states=True)
    assert got is out and not out.isnan().any()
    assert rel_err(out, r) < TOL[dtype]
    assert torch.equal(final.double(), r_final)


def test_chunked_conv_prefill_equals_one_pass():
    kw = conv_inputs(2, 37, 4, 30, strided=True, seed=8)
    full, full_final = causal_conv1d_fn_triton(**kw, return_final_states=True, block_l=8)
    outs, state = [], kw["initial_states"]
    for a, b in [(0, 11), (11, 13), (13, 30)]:
        y, state = causal_conv1d_fn_triton(
            kw["x"][..., a:b], kw["weight"], kw["bias"], state, True, "silu", block_l=8
        )
        outs.append(y)
    assert torch.equal(torch.cat(outs, dim=-1), full)
    assert torch.equal(state, full_final)


# ---------------------------------------------------------------- decode == prefill


@pytest.mark.parametrize("groups", [None, 3])
def test_decode_steps_equal_full_scan(groups):
    """Prefill a prompt (conv + scan kernels), then decode token by token with the step kernels on a
    slot pool; the outputs must equal one full pass."""
    batch, dim, dstate, width, prompt, total = 2, 39, 5, 4, 7, 19
    conv = conv_inputs(batch, dim, width, total, seed=9)
    scan = scan_inputs(batch, dim, dstate, total, groups=groups, seed=10)
    scan.pop("initial_state")
    xc_full = causal_conv1d_fn_triton(conv["x"], conv["weight"], conv["bias"], activation="silu")
    y_full = selective_scan_triton(**scan | {"u": xc_full})
    r_full = ref.selective_scan_ref(**to64(scan | {"u": xc_full}))
    assert rel_err(y_full, r_full) < 1e-5

    def upto(t):
        return t[..., :prompt]

    xc, conv_final = causal_conv1d_fn_triton(
        upto(conv["x"]), conv["weight"], conv["bias"], None, True, "silu"
    )
    y, ssm_final = selective_scan_triton(
        xc,
        upto(scan["delta"]),
        scan["A"],
        upto(scan["B"]),
        upto(scan["C"]),
        scan["D"],
        upto(scan["z"]),
        scan["delta_bias"],
        True,
        return_last_state=True,
    )
    slots = torch.tensor([4, 1], dtype=torch.int32)
    conv_pool, ssm_pool = torch.zeros(6, dim, width - 1), torch.zeros(6, dim, dstate)
    conv_pool[slots.long()], ssm_pool[slots.long()] = conv_final, ssm_final
    ys = [y]
    for t in range(prompt, total):
        xt = causal_conv1d_update_triton(
            conv["x"][..., t], conv_pool, conv["weight"], conv["bias"], "silu", slots
        )
        ys.append(
            selective_state_update_triton(
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
    assert (
        rel_err(
            ssm_pool[slots.long()], selective_scan_triton(**scan | {"u": xc_full}, return_last_state=True)[1]
        )
        < 1e-5
    )


# ---------------------------------------------------------------- dispatcher


def test_dispatcher_routes_by_backend(monkeypatch):
    kw = state_update_inputs(2, 8, 4, dtype=torch.float64, state_dtype=torch.float64)
    kernels.selective_state_update(**clone(kw))  # CPU tensors, auto: the PyTorch path takes float64
    monkeypatch.setenv("MAMBASERVE_KERNELS_BACKEND", "triton")
    with pytest.raises(TypeError, match="Triton kernels take float32, float16 or bfloat16"):
        kernels.selective_state_update(**clone(kw))
    step = state_update_inputs(2, 8, 4, seed=11)
    theirs = clone(step)
    out = kernels.selective_state_update(**step)
    assert rel_err(out, ref.selective_state_update_ref(**to64(theirs) | {"state": theirs["state"]})) < 1e-5
    scan = scan_inputs(2, 8, 4, 6, seed=12)
    assert rel_err(kernels.selective_scan(**scan), ref.selective_scan_ref(**to64(scan))) < 1e-5
    conv = conv_inputs(2, 8, 4, 6, seed=13)
    assert rel_err(kernels.causal_conv1d_fn(**conv), ref.causal_conv1d_ref(**to64(conv))) < 1e-5
    upd = conv_inputs(2, 8, 4, seed=14)
    theirs = clone(upd)
    assert rel_err(kernels.causal_conv1d_update(**upd), ref.causal_conv1d_update_ref(**theirs)) < 1e-5
    monkeypatch.setenv("MAMBASERVE_KERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="MAMBASERVE_KERNELS_BACKEND must be auto, torch or triton"):
        kernels.causal_conv1d_update(**upd)


if not INTERPRETED:
    # Parent process: replace the tests above by one that runs them in a child with the interpreter on.
    for _name in [n for n in globals() if n.startswith("test_")]:
        del globals()[_name]

    def test_kernels_under_the_triton_interpreter():
        root = helpers.ROOT
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        env.pop("MAMBASERVE_KERNELS_BACKEND", None)
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(Path(__file__).resolve()),
                "-q",
                "-p",
                "no:cacheprovider",
                "-rfE",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=800,
        )
        report = (child.stdout + child.stderr)[-15000:]
        print(report)
        assert child.returncode == 0, report
        assert " passed" in report and "skipped" not in report, report
