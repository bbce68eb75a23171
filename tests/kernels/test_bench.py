"""The kernel benchmark script: says plainly that it measured nothing without a GPU, and its GPU code
path runs end to end (tiny shapes, Triton interpreter; those timings mean nothing and say so)."""

from __future__ import annotations

import os
import subprocess
import sys

import helpers

ROOT = helpers.ROOT


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MAMBASERVE_KERNELS_BACKEND")
    }
    return subprocess.run(
        [sys.executable, "-m", "mambaserve.kernels.bench", *args],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_gpu_it_says_nothing_was_measured_and_exits_0():
    run = _bench(CUDA_VISIBLE_DEVICES="")
    assert run.returncode == 0, run.stderr
    assert "needs a CUDA GPU" in run.stdout and "nothing was measured" in run.stdout
    assert "GB/s" not in run.stdout


def test_gpu_code_path_runs_under_the_interpreter():
    run = _bench("--smoke", TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    assert run.returncode == 0, run.stderr[-5000:]
    out = run.stdout
    assert out.count("timings are meaningless") == 2
    for kernel in ("selective_scan", "causal_conv1d_fn", "selective_state_update", "causal_conv1d_update"):
        assert kernel in out
    assert "tokens/s" in out
