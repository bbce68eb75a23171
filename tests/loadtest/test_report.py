"""loadtest/report: sections against the real server, external sections, goals, Triton statistics."""

from __future__ import annotations

import pytest
from mambaserve.contract import spec
from mambaserve.loadtest import report, server_stats
from mambaserve.loadtest.clips import SAMPLES_MANIFEST, load_clips


def _stats(
    success: int,
    inferences: int,
    executions: int,
    queue_ns: int,
    per_request_ns: int,
    batches: dict[int, tuple[int, int]],
) -> dict:
    """A /v2/models/stats entry: batches = {batch size: (executions, ns per execution)}."""
    return {
        "inference_count": inferences,
        "execution_count": executions,
        "inference_stats": {
            "success": {"count": success, "ns": 0},
            "queue": {"count": success, "ns": queue_ns},
            "compute_input": {"count": success, "ns": 0},
            "compute_infer": {"count": success, "ns": per_request_ns},
            "compute_output": {"count": success, "ns": 0},
        },
        "batch_stats": [
            {
                "batch_size": b,
                "compute_input": {"count": n, "ns": 0},
                "compute_infer": {"count": n, "ns": n * ns},
                "compute_output": {"count": n, "ns": 0},
            }
            for b, (n, ns) in batches.items()
        ],
    }


def test_server_stats_diff_counts_executions_once():
    before = {"decoder": _stats(2, 2, 2, 0, 2 * 10_000_000, {1: (2, 10_000_000)})}
    # then: 8 requests in 2 executions of 4, 40 ms each; every request is charged its execution's 40 ms
    after = {
        "decoder": _stats(
            10,
            10,
            4,
            8 * 5_000_000,
            2 * 10_000_000 + 8 * 40_000_000,
            {1: (2, 10_000_000), 4: (2, 40_000_000)},
        )
    }
    p = server_stats.diff(before, after)["decoder"]
    assert (p.requests, p.executions, p.avg_batch) == (8, 2, 4.0)
    assert p.batch_histogram == {4: 2}
    assert p.compute_ms_per_execution == pytest.approx(40.0)
    assert p.compute_ms_per_request == pytest.approx(40.0)
    assert p.queue_ms_per_request == pytest.approx(5.0)


def test_goals_and_external_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SECTIONS_DIR", tmp_path)
    table = report.goals_table({"rtfx_c16": 250.0, "p50_5s_ms": 180.0})
    assert "| RTFx at concurrency 16 | >= 200 | 250.00 | yes |" in table
    assert "| p50 latency of a 5 s clip (ms) | <= 150 | 180.00 | **no** |" in table
    assert "| in-process time ÷ served time | >= 0.85 | not run | – |" in table
    section = report.external("streaming_chunk_latency", "Streaming chunk latency", "Run X.")
    assert section(None).status == "not run"
    report.write_section(
        "streaming_chunk_latency",
        "Streaming chunk latency",
        "| chunk | ms |\n|---|---|\n| 1 | 20 |",
        {"p50_ms": 20},
        out=tmp_path,
    )
    got = section(None)
    assert got.status == "ok" and "| 1 | 20 |" in got.markdown and got.data == {"p50_ms": 20}


@pytest.mark.server
def test_sections_against_the_real_server(triton_server, checkpoint_dir, tmp_path):
    ctx = report.BenchContext(
        http_url=triton_server.http_url,
        grpc_url=triton_server.grpc_url,
        server_pid=triton_server.pid,
        metrics_url=triton_server.metrics_url,
        checkpoint=checkpoint_dir,
        random_checkpoint=False,
        repository=triton_server.repository,
        clips=load_clips(SAMPLES_MANIFEST, prompts=False),
        out=tmp_path,
        quick=True,
    )
    served = report.served_vs_inprocess(ctx)
    assert served.status == "ok"
    assert served.data["identical_transcripts"] == served.data["clips"]  # same pipeline, same answers
    assert served.data["inprocess_over_served"] > 0
    five = report.five_second_clip(ctx)
    assert five.data["n"] == 20 and 0 < five.data["p50_ms"] <= five.data["p99_ms"]
    prof = five.data["server"]
    assert prof["requests"] == 21  # warm-up + 20, all seen by the server
    for model in (spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER):
        assert prof["profile"][model]["requests"] == 21
        assert prof["cpu_ms_per_request"][model] > 0  # the stub processes were found and measured
    assert prof["decoder_tokens_per_request"] is not None and prof["decoder_tokens_per_request"] >= 0
    assert report.batching_gain(ctx).status == "not run"  # needs the sweep
    text = report.render(
        ctx,
        [served, five],
        {
            "date": "d",
            "commit": "c",
            "machine": report._machine(),
            "load_before": "0",
            "load_after": "0",
            "server": "s",
            "repository": "r",
            "checkpoint": "k",
            "manifest": "m",
        },
    )
    assert "| p50 latency of a 5 s clip (ms) | <= 150 |" in text and "## Latency of a 5 s clip" in text
