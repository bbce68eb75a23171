"""loadtest/: locust users (HTTP + gRPC offline asr) against the real server, headless, with CSV + summary."""

from __future__ import annotations

import json

import helpers
import pytest
from mambaserve.contract import spec
from mambaserve.loadtest.clips import SAMPLES_MANIFEST, clip_of_length, load_clips
from mambaserve.loadtest.mix import parse_mix
from mambaserve.loadtest.run import run_locust


def _asr_successes(server) -> float:
    return helpers.metrics(server).value("nv_inference_request_success", model=spec.ASR)


@pytest.mark.server
def test_short_headless_run_has_no_failures(triton_server, tmp_path):
    before = _asr_successes(triton_server)
    result = run_locust(
        users=4,
        duration="20s",
        http_url=triton_server.http_url,
        grpc_url=triton_server.grpc_url,
        mix="http_asr=1,grpc_asr=1",
        manifest=str(SAMPLES_MANIFEST),
        csv_prefix=tmp_path / "asr",
    )
    assert result.exit_code == 0 and result.failures == 0, result.errors
    assert set(result.by_type) == {"HTTP", "gRPC"}
    assert all(row.requests > 0 for row in result.by_type.values())
    assert result.requests == sum(row.requests for row in result.by_type.values())
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.rtfx > 0 and result.audio_seconds > 0
    # the server counted exactly the requests locust reports
    assert _asr_successes(triton_server) - before == result.requests
    for suffix in ("_stats.csv", "_stats_history.csv", "_failures.csv", "_requests.json"):
        assert (tmp_path / f"asr{suffix}").exists(), suffix


@pytest.mark.server
def test_mix_selects_users_and_wrong_answers_are_failures(triton_server, tmp_path):
    clips = load_clips(SAMPLES_MANIFEST)
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({c.id: "certainly not this transcript" for c in clips}))
    result = run_locust(
        users=1,
        duration="4s",
        http_url=triton_server.http_url,
        grpc_url=triton_server.grpc_url,
        mix="grpc_asr=1",
        manifest=str(SAMPLES_MANIFEST),
        expect=str(expect),
        csv_prefix=tmp_path / "wrong",
    )
    assert set(result.by_type) == {"gRPC"}
    assert result.requests > 0 and result.failures == result.requests
    assert result.exit_code == 1
    assert all("WrongAnswer" in e["error"] for e in result.errors), result.errors


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ("udp_asr=1", "unknown user 'udp_asr'"),
        ("grpc_asr=x", "must be a number"),
        ("grpc_asr=0", "at least one user"),
    ],
)
def test_bad_mix_is_refused(mix, message):
    with pytest.raises(ValueError, match=message):
        parse_mix(mix, ("http_asr", "grpc_asr"))


def test_clip_of_length_is_exact_real_speech():
    clips = load_clips(SAMPLES_MANIFEST)
    audio = clip_of_length(clips, 5.0)
    assert audio.shape == (5 * spec.SAMPLE_RATE,) and audio.dtype.name == "float32"
    assert (audio[: clips[0].audio.shape[0]] == clips[0].audio).all()
