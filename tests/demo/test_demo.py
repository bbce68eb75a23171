"""`make demo` (python -m mambaserve.demo) on an up-to-date repository, and its staleness rule."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mambaserve.build.versioning import BUILD_INFO
from mambaserve.contract import spec
from mambaserve.demo import DEFAULT_SAMPLES, staleness
from mambaserve.serving.server import free_port

pytestmark = pytest.mark.server


def test_staleness(model_repository, checkpoint_dir, tmp_path):
    assert staleness(checkpoint_dir, model_repository) is None
    assert "no version yet" in staleness(checkpoint_dir, tmp_path / "empty")
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    info_path = repo / spec.DECODER / "1" / BUILD_INFO
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "checkpoint_sha256": "0" * 64}))
    assert "decoder was built from another checkpoint" in staleness(checkpoint_dir, repo)
    info_path.write_text(json.dumps({**info, "build_format": -1}))
    assert "build format" in staleness(checkpoint_dir, repo)


def test_demo_transcribes_the_shipped_samples(model_repository, checkpoint_dir, tmp_path):
    samples = [json.loads(line) for line in Path(DEFAULT_SAMPLES).read_text().splitlines() if line.strip()]
    assert samples, "clients/samples/samples.jsonl is empty"
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    env = dict(
        os.environ, HTTP_PORT=str(free_port()), GRPC_PORT=str(free_port()), METRICS_PORT=str(free_port())
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mambaserve.demo",
            "--checkpoint",
            str(checkpoint_dir),
            "--repository",
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "up to date" in out  # built from the same checkpoint: no rebuild
    assert f"gRPC 127.0.0.1:{env['GRPC_PORT']}" in out
    for row in samples:
        assert f"[{row['id']}]" in out and f"reference:  {row['text']}" in out
    assert out.count("transcript:") == len(samples)
    assert f"== {len(samples)} clips, WER" in out and "stopping tritonserver" in out
    assert out.rstrip().endswith("clients/README.md)") and "make web" in out  # how to open the page
