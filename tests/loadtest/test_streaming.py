"""loadtest/: the stateful locust users (live asr_streaming streams, decoder sessions) against the real server,
and the streaming benchmark's report sections."""

from __future__ import annotations

import csv

import pytest
from mambaserve.contract import spec
from mambaserve.loadtest.clips import SAMPLES_MANIFEST
from mambaserve.loadtest.run import run_locust


@pytest.mark.server
def test_streaming_and_session_users_run_without_failures(triton_server, tmp_path):
    result = run_locust(
        users=4,
        duration="15s",
        http_url=triton_server.http_url,
        grpc_url=triton_server.grpc_url,
        mix="grpc_streaming=1,grpc_session=1",
        manifest=str(SAMPLES_MANIFEST),
        csv_prefix=tmp_path / "stateful",
        extra=["--stream-speed", "4", "--session-prompts", "2", "--session-max-tokens", "8"],
    )
    assert result.exit_code == 0 and result.failures == 0, result.errors
    assert set(result.by_type) == {"gRPC-stream", "gRPC-session"}
    with open(tmp_path / "stateful_stats.csv") as f:
        names = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(f)}
    for name in (
        "asr_streaming chunk",
        "asr_streaming final",
        "decoder_session open",
        "decoder_session generate",
        "decoder_session close",
    ):
        assert names.get(name, 0) > 0, (name, names)
    assert names["asr_streaming chunk"] > names["asr_streaming final"]  # several chunks per utterance
    assert names["decoder_session generate"] >= names["decoder_session close"]
    assert result.audio_seconds > 0


def test_streaming_benchmark_sections_render(tmp_path):
    """The section texts of the streaming benchmark from measured-shaped data (numbers are inputs here)."""
    from mambaserve.loadtest import streaming_bench as sb

    row = {
        "streams": 32,
        "chunk_ms": 320.0,
        "chunks": 10,
        "utterances": 2,
        "errors": 0,
        "all": {"p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 70.0},
        "partial": {"p50_ms": 9.0, "p99_ms": 30.0},
        "final": {"p50_ms": 40.0, "p99_ms": 70.0},
        "avg_batch": {spec.STREAMING_ENCODER: 1.5, spec.STREAMING_DECODER: None},
    }
    text = sb.latency_markdown([row], random_model=False)
    assert (
        "| 320 | 32 | 10 | 2 | 10.0 | 20.0 | 70.0 | 30.0 | 40.0 / 70.0 | 1.50 / – | – / – | – / – | 0 | – |"
        in text
    )
    assert "320 ms chunks: 70.0 ms (not met)" in text
    served = {
        64: {"history": 64, "ms_per_token": 2.0, "mean_ms": 2.1},
        4096: {"history": 4100, "ms_per_token": 2.02, "mean_ms": 2.2},
    }
    assert "Ratio 4096 ÷ 64 (served) = 1.010** (goal ≤ 1.05: met)" in sb.history_markdown(served, None)
    sizes = {
        "decoder_fp32": 116736,
        "decoder_fp16": 58368,
        "encoder_fp32": 145920,
        "layers": 4,
        "d_inner": 384,
        "d_state": 16,
        "d_conv": 4,
    }
    md = sb.memory_markdown(sizes, None)
    assert "**114.0 KB in float32**" in md and "float32 not met, float16 met" in md
