"""loadtest/perf_analyzer: the automated install and a real-audio run against the real server."""

from __future__ import annotations

import json
import subprocess

import pytest
from mambaserve.contract import spec
from mambaserve.loadtest import perf_analyzer as pa
from mambaserve.loadtest.clips import SAMPLES_MANIFEST, clip_of_length, load_clips


def test_input_data_is_the_real_audio(tmp_path):
    clips = load_clips(SAMPLES_MANIFEST)
    audio = [clip_of_length(clips, 1.5), clips[1].audio]
    data = json.loads(pa.write_input_data(tmp_path / "in.json", audio).read_text())["data"]
    assert [d[spec.AUDIO.name]["shape"] for d in data] == [[24000], [len(clips[1].audio)]]
    assert data[1][spec.AUDIO.name]["content"][:50] == pytest.approx(clips[1].audio[:50].tolist(), abs=1e-6)


@pytest.mark.server
def test_install_and_run_on_asr(triton_server, tmp_path):
    exe = pa.install()  # downloads the tritonclient 2.47.0 wheel once (.cache/perf_analyzer)
    assert subprocess.run([str(exe), "--version"], capture_output=True).returncode == 0
    assert pa.install() == exe  # idempotent
    clips = load_clips(SAMPLES_MANIFEST)
    data = pa.write_input_data(tmp_path / "in.json", [clip_of_length(clips, 3.0), clips[0].audio])
    rows = pa.run(
        url=triton_server.grpc_url,
        input_data=data,
        concurrency="1:2:1",
        measurement_ms=1500,
        stability=100,
        max_trials=10,
    )
    assert [r["concurrency"] for r in rows] == [1, 2]
    for r in rows:
        assert r["infer_per_sec"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["compute_ms"] > 0
