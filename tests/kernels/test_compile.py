"""Every Triton kernel compiles to PTX and cubin for sm_80 and sm_90 (fp32 and bf16 signatures, all
optional inputs on and off), here on a CPU-only machine, with no register spills.

The interpreter runs code the GPU compiler rejects, so this is the check that a kernel would load on a
real GPU. It runs in a child process without TRITON_INTERPRET (the mode is fixed when triton.language
is imported). Speed on a GPU is not measured anywhere in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import helpers

KERNELS = {"selective_scan", "selective_state_update", "causal_conv1d_update", "causal_conv1d_fn"}


def test_all_kernels_compile_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, "-m", "mambaserve.kernels.compile_check", "--json"],
        cwd=helpers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode in (0, 1), child.stderr[-5000:]
    results = json.loads(child.stdout)
    failures = [r for r in results if not r["ok"]]
    assert not failures, json.dumps(failures, indent=1)[:8000]
    assert child.returncode == 0
    seen = {(r["kernel"], r["target"], r["dtype"], r["options"]) for r in results}
    expected = {
        (k, t, d, o)
        for k in KERNELS
        for t in ("sm_80", "sm_90")
        for d in ("fp32", "bf16")
        for o in ("on", "off")
    }
    assert seen == expected
    for r in results:
        assert r["cubin_bytes"] > 1000 and r["reg"] > 0, r
        assert r["local"] == 0, f"register spills: {r}"
