"""The prepared GPU check (kernels/gpu_check.py) on a CPU: its dry run goes through every step and
writes its JSON and Markdown, a starved budget skips and says so, the GPU-only timing code runs against
a stand-in for torch.cuda, the device's missing librosa is replaced by an equal filterbank, and
results are published into BENCHMARKS.md only when they come from a GPU.

The dry run goes through kernels/gpu_check.sh (the no-install wrapper the device run uses) with the
packages the device lacks hidden, so an import the device cannot satisfy fails here first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mambaserve.kernels import gpu_check as gc

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    drop = ("TRITON_INTERPRET", "MAMBASERVE_KERNELS_BACKEND", "MAMBASERVE_KERNELS_AUTOTUNE", "OUT")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHON": sys.executable,
    }
    return subprocess.run(
        ["bash", str(ROOT / "kernels" / "gpu_check.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory) -> Path:
    """Two espeak-ng clips and their CPU transcripts, made by --prepare-clips."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to prepare clips (make system-deps)")
    path = tmp_path_factory.mktemp("clips") / "clips.npz"
    run = _gpu_check(
        "--prepare-clips", "--clips", str(path), "--n-clips", "2", "--max-words", "4", "--batch-size", "2"
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        assert len(z["offsets"]) == 3 and z["audio"].dtype == np.int16 and len(z["cpu_transcripts"]) == 2
    assert meta["batch_size"] == 2 and meta["checkpoint_digest"] == gc.checkpoint_digest(
        ROOT / "checkpoints" / "default"
    )
    return path


def test_dry_run_goes_through_every_step_and_writes_json_and_markdown(tiny_clips, tmp_path):
    t0 = time.monotonic()
    run = _gpu_check("--dry-run", "--clips", str(tiny_clips), "--out-dir", str(tmp_path))
    took = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    data = json.loads((tmp_path / gc.RESULTS_JSON).read_text())
    md = (tmp_path / gc.RESULTS_MD).read_text()
    assert data["dry_run"] is True and "DRY RUN" in md and "Nothing here was measured on a GPU" in md
    steps = data["steps"]
    assert list(steps) == list(gc.STEPS)
    for name, step in steps.items():
        assert step["status"] == "ok", (name, step["skipped"], [e["traceback"] for e in step["errors"]])
    c = steps["correctness"]
    assert c["failed"] == 0 and c["passed"] >= 40
    checks = {r["check"] for r in c["rows"]}
    for needed in (
        "selective_scan no initial_state",
        "selective_scan with initial_state",
        "selective_scan chunked == one pass",
        "state_update slots + pad: out",
        "state_update out-of-range slot",
        "conv_update slots + pad: state",
        "causal_conv1d_fn with initial_states",
    ):
        assert needed in checks
    assert {r["dtype"] for r in c["rows"]} == {"fp32", "bf16"}
    k = steps["kernel_timings"]
    assert len(k["scan"]) == len(gc.DRY.scan_shapes) + 3 and all(r["TBps"] is not None for r in k["scan"])
    assert all("compile_ms" in r for r in k["scan"] if r["sweep"])  # the torch.compile pass ran too
    assert any(r.get("torch_ms") for r in k["scan"]) and any(r.get("torch_note") for r in k["scan"])
    assert {r["kernel"] for r in k["decode"]} == {"selective_state_update", "causal_conv1d_update"}
    assert all("compile_ms" in r for r in k["decode"] + k["conv_fn"])
    s = steps["sessions"]
    assert s["check"]["ok"] and s["pool"]["live"] == gc.DRY.sessions and s["decoder"]["logits_finite"]
    r = steps["recognizer"]
    assert r["timed"]["clips"] == 2 and r["agreement"]["of"] == 2 and "equal" in r["agreement"]
    assert r["warmup"] == r["warmup"] | {"batches": 1, "of": 1}
    assert r["cpu_here_first_batch"]["equal_to_gpu"] == r["cpu_here_first_batch"]["clips"]
    assert data["parts"]["Recognizer"].endswith(".Recognizer") and data["parts"]["librosa"].startswith(
        "numpy"
    )
    assert [g["met"] for g in data["goals"]] == [None] * 5  # a dry run meets or misses nothing
    assert "## 4. Offline Recognizer" in md and "| selective_scan | bf16 |" in md
    print(f"dry run took {took:.0f} s")


def test_a_spent_budget_skips_steps_and_still_writes_results(tmp_path):
    run = _gpu_check(
        "--dry-run", "--steps", "1,3", "--budget-s", "0", "--out-dir", str(tmp_path), timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads((tmp_path / gc.RESULTS_JSON).read_text())
    assert list(data["steps"]) == ["correctness", "sessions"]
    assert all(
        s["status"] == "skipped" and "deadline" in s["skipped"][0]["why"] for s in data["steps"].values()
    )
    assert "global deadline" in (tmp_path / gc.RESULTS_MD).read_text()


def test_a_step_past_its_deadline_skips_each_remaining_size(tmp_path):
    run = gc.Run(gc.DRY, True, tmp_path, budget_s=100.0, steps=("correctness",))
    run.step_name, run.step_deadline = "correctness", time.perf_counter() - 1
    gc.step_correctness(run, gc.Dev(dry=True))
    rec = run.data["steps"]["correctness"]
    assert rec["rows"] == [] and not rec["errors"] and len(rec["skipped"]) >= 10
    assert all("deadline" in s["why"] for s in rec["skipped"])
    run.save()
    assert "skipped scan fp32" in (tmp_path / gc.RESULTS_MD).read_text()


def test_without_a_gpu_the_real_run_measures_nothing(tmp_path):
    run = _gpu_check("--out-dir", str(tmp_path), timeout=300)
    assert run.returncode == 2 and "needs a CUDA GPU" in run.stdout and "nothing was measured" in run.stdout
    assert not (tmp_path / gc.RESULTS_JSON).exists()


def test_numpy_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa")
    f = json.loads((ROOT / "checkpoints" / "default" / "config.json").read_text())["features"]
    args = dict(sr=f["sample_rate"], n_fft=f["n_fft"], n_mels=f["n_mels"], fmin=f["f_min"], fmax=f["f_max"])
    ours = gc.mel_filterbank_np(args["sr"], args["n_fft"], args["n_mels"], args["fmin"], args["fmax"])
    theirs = librosa.filters.mel(**args)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


def test_the_adapter_finds_slot_pool_recognizer_and_checkpoint_loading():
    parts = gc.project_parts()
    assert set(parts.where) == {"SlotPool", "Recognizer", "load_checkpoint", "librosa"}
    pool = parts.SlotPool(2, idle_timeout_s=10.0)
    assert {pool.start("a"), pool.start("b")} == {0, 1}
    assert callable(parts.load_checkpoint) and hasattr(parts.Recognizer, "transcribe")


def test_cuda_timing_code_runs_against_a_stand_in_for_torch_cuda(monkeypatch):
    """Dev.time and Dev.graph_time's CUDA branches (events, L2 flush, graph capture and replay) with
    fakes of exactly the torch.cuda names they use: the dry run cannot reach them."""
    names = ("Event", "synchronize", "Stream", "stream", "current_stream", "CUDAGraph", "graph")
    assert all(hasattr(torch.cuda, n) for n in names)

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            assert self.t is not None

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    class Stream:
        def wait_stream(self, other):
            pass

    captured = []

    class Graph:
        def replay(self):
            for fn in captured:
                fn()

    class Capture:
        def __init__(self, graph):
            self.graph = graph

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class StreamCtx(Capture):
        pass

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", StreamCtx)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    dev = gc.Dev(dry=True)
    dev.cuda, dev._flush = True, torch.empty(1024, dtype=torch.int8)
    run = SimpleNamespace(plan=gc.REAL)
    x = torch.zeros(1000)
    calls = []

    def fn():
        calls.append(1)
        x.add_(1)

    t = dev.time(fn, run)
    assert t["ms"] > 0 and 3 <= t["reps"] <= gc.REAL.reps_cap and t["inner"] >= 1
    assert len(calls) == 2 + 1 + t["reps"] * t["inner"]
    captured.append(fn)
    g = dev.graph_time(fn, run)
    assert g is not None and g["ms"] > 0
    info = gc._scan_config(
        {(False, True): SimpleNamespace(best_config="BLOCK_D: 16, num_warps: 4", bench_time=1.25)},
        True,
        4,
        1536,
        16,
        torch.device("cpu"),
    )
    assert info == {"config": "BLOCK_D: 16, num_warps: 4", "autotuned": True, "autotune_bench_s": 1.25}


def test_publish_refuses_a_dry_run_and_splices_gpu_results_into_benchmarks(tmp_path):
    doc = (ROOT / "kernels" / "BENCHMARKS.md").read_text()
    assert gc.MARK_BEGIN in doc and gc.MARK_END in doc
    section = doc[doc.index(gc.MARK_BEGIN) : doc.index(gc.MARK_END)]
    assert "not yet run on a gpu" in section.lower()  # until a GPU session publishes its results
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text(doc)
    dry = {"dry_run": True, "steps": {}}
    (tmp_path / "dry.json").write_text(json.dumps(dry))
    with pytest.raises(SystemExit, match="dry run"):
        gc.publish(tmp_path / "dry.json", tmp_path, bench)
    results = {
        "dry_run": False,
        "started": "2027-01-01T00:00:00+00:00",
        "environment": {"device": "NVIDIA H200"},
        "ceilings": {"hbm_datasheet_Bps": 4.8e12, "copy_measured_Bps": 4.3e12},
        "steps": {
            "sessions": {
                "status": "ok",
                "skipped": [],
                "errors": [],
                "rows": [
                    {
                        "what": "selective_state_update",
                        "sessions": 10000,
                        "ms": 0.6,
                        "TBps": 3.5,
                        "pct_hbm": 72.9,
                    }
                ],
            }
        },
    }
    (tmp_path / "gpu.json").write_text(json.dumps(results))
    gc.publish(tmp_path / "gpu.json", tmp_path, bench)
    out = bench.read_text()
    assert out.startswith(doc[: doc.index(gc.MARK_BEGIN)]) and out.endswith(doc[doc.index(gc.MARK_END) :])
    published = out.split(gc.MARK_BEGIN)[1].split(gc.MARK_END)[0]
    assert "72.9 %" in published and "| yes |" in published and "not yet run" not in published.lower()
    assert "NVIDIA H200" in (tmp_path / gc.RESULTS_MD).read_text()
    assert json.loads((tmp_path / gc.RESULTS_JSON).read_text())["goals"][2]["met"] is True


def test_the_real_plan_fits_an_h200_and_compiles_few_variants():
    p = gc.REAL
    assert p.dim == 1536 and p.dstate == 16 and {b for b, _ in p.scan_shapes} == {1, 4, 16, 64, 256}
    assert min(L for _, L in p.scan_shapes) == 64 and max(L for _, L in p.scan_shapes) == 16384
    for b, length in (*p.scan_shapes, p.scan_extra_shape):
        assert length % p.compile_chunk == 0 and length % 16 == 0  # one Triton specialisation of L
        sequence_bytes = 4 * b * p.dim * length * 2  # u, delta, z, out in bf16
        assert sequence_bytes < 16e9, (b, length)
        if b * length <= p.torch_max_tokens:  # the PyTorch scan keeps [L, b, D, N] fp32 states
            assert b * length * p.dim * p.dstate * 4 < 8e9
    # the autotuner's first shape per batch bucket is what it tunes for: the longest one
    first = {}
    for b, length in p.scan_shapes:
        first.setdefault(b, length)
    assert all(first[b] == max(L for bb, L in p.scan_shapes if bb == b) for b in first)
    assert p.sessions == 10_000 < p.pool_slots and p.sessions + 1 <= 65535  # one launch, plus a pad row
    assert p.pool_slots * p.dim * p.dstate * 4 * 3 < 8e9  # the pool and its two check copies
    assert sum(gc.SHARE_S.values()) >= p.budget_s and p.budget_s <= 420
