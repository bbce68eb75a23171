"""The clients against the real tritonserver serving the real `asr` model.

Speech comes from espeak-ng (a system dependency of the test suite) at sample rates and channel
counts the server never sees directly, so every request also exercises load_audio.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mambaserve.clients.audio import AudioError, load_audio
from mambaserve.clients.client import (
    ASRClient,
    AsyncASRClient,
    ServerError,
    ServerUnavailableError,
    Transcription,
)
from mambaserve.clients.evaluate import score
from mambaserve.contract import spec

pytestmark = pytest.mark.server

SENTENCES = {
    "hello": "hello world",
    "fox": "the quick brown fox jumps over the lazy dog",
    "count": "one two three four five",
}
BIN = Path(sys.executable).parent


def _espeak(text: str, out: Path, rate: int, channels: int) -> Path:
    """espeak-ng speech converted by sox to the rate/channels/format that `out`'s suffix names."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-q", str(raw), "-r", str(rate), "-c", str(channels), str(out)], check=True)
    raw.unlink()
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    paths = {
        "hello": _espeak(SENTENCES["hello"], d / "hello.wav", 22050, 1),
        "fox": _espeak(SENTENCES["fox"], d / "fox.flac", 44100, 2),
        "count": _espeak(SENTENCES["count"], d / "count.wav", 8000, 1),
    }
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    paths["broken"] = d / "broken.wav"
    return paths


def _url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------------------------------
# Python API
# -------------------------------------------------------------------------------------------------
def test_sync_and_async_http_and_grpc_agree(triton_server, clips, recognizer):
    audio = load_audio(clips["fox"])
    texts = {}
    for protocol in ("grpc", "http"):
        with ASRClient(_url(triton_server, protocol), protocol=protocol) as client:
            assert client.is_ready()
            from_array = client.transcribe(audio)
            from_path = client.transcribe(clips["fox"])
            assert isinstance(from_array, Transcription)
            assert from_array.audio_seconds == pytest.approx(audio.shape[0] / spec.SAMPLE_RATE)
            assert from_array.latency_s > 0
            assert from_path.text == from_array.text
            texts[f"sync-{protocol}"] = from_array.text

        async def run(protocol=protocol):
            async with AsyncASRClient(_url(triton_server, protocol), protocol=protocol) as client:
                assert await client.is_ready()
                a = await client.transcribe(audio)
                b = await client.transcribe(clips["fox"])
                assert b.text == a.text
                return a.text

        texts[f"async-{protocol}"] = asyncio.run(run())
    assert len(set(texts.values())) == 1, texts
    # What the clients return is what the model says: the in-process reference pipeline's transcript.
    assert texts["sync-grpc"] == recognizer.transcribe([audio])[0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_transcribe_many_keeps_order_and_isolates_failures(triton_server, clips, protocol):
    items = [clips["hello"], clips["fox"], clips["broken"], clips["count"], load_audio(clips["hello"])]
    with ASRClient(_url(triton_server, protocol), protocol=protocol) as client:
        one_by_one = {k: client.transcribe(clips[k]).text for k in ("hello", "fox", "count")}
        results = client.transcribe_many(items, concurrency=3, return_exceptions=True)
        assert isinstance(results[2], AudioError) and "broken.wav" in str(results[2])
        assert [r.text for i, r in enumerate(results) if i != 2] == [
            one_by_one["hello"],
            one_by_one["fox"],
            one_by_one["count"],
            one_by_one["hello"],
        ]
        with pytest.raises(AudioError):
            client.transcribe_many(items, concurrency=2)

    async def run():
        async with AsyncASRClient(_url(triton_server, protocol), protocol=protocol) as client:
            return await client.transcribe_many(items, concurrency=3, return_exceptions=True)

    async_results = asyncio.run(run())
    assert isinstance(async_results[2], AudioError)
    assert [r.text for i, r in enumerate(async_results) if i != 2] == [
        r.text for i, r in enumerate(results) if i != 2
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_prompt_reaches_the_server(triton_server, clips, protocol, recognizer):
    # The client leaves length checks to the server: only a prompt that arrived can be refused for its length.
    with ASRClient(_url(triton_server, protocol), protocol=protocol) as client:
        ok = client.transcribe(clips["hello"], prompt="greetings: ")
        assert ok.text == recognizer.transcribe([load_audio(clips["hello"])], ["greetings: "])[0]
        assert isinstance(client.transcribe(clips["hello"], prompt="naïve café ").text, str)
        too_long = "x" * (spec.MAX_PROMPT_BYTES + 1)
        with pytest.raises(ServerError) as err:
            client.transcribe(clips["hello"], prompt=too_long)
    assert spec.PROMPT.name in err.value.server_message
    assert str(spec.MAX_PROMPT_BYTES) in err.value.server_message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_errors_carry_the_server_message(triton_server, protocol):
    url = _url(triton_server, protocol)
    too_long = np.zeros(int((spec.MAX_AUDIO_SECONDS + 1) * spec.SAMPLE_RATE), dtype=np.float32)
    with ASRClient(url, protocol=protocol) as client:
        with pytest.raises(ServerError) as err:
            client.transcribe(too_long)
        assert err.value.model == spec.ASR and err.value.url == url
        assert spec.AUDIO.name in err.value.server_message
        assert f"{spec.MAX_AUDIO_SECONDS:g}" in err.value.server_message
        assert err.value.server_message in str(err.value)
    with ASRClient(url, protocol=protocol, model="no_such_model") as client:
        assert not client.is_ready()
        with pytest.raises(ServerError, match="no_such_model"):
            client.transcribe(np.zeros(1600, dtype=np.float32))

    async def run():
        async with AsyncASRClient(url, protocol=protocol) as client:
            with pytest.raises(ServerError) as aerr:
                await client.transcribe(too_long)
            return aerr.value.server_message

    assert asyncio.run(run()) == err.value.server_message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server(protocol):
    url = f"127.0.0.1:{_closed_port()}"
    with ASRClient(url, protocol=protocol, timeout=5) as client:
        assert not client.is_ready()
        with pytest.raises(ServerUnavailableError, match="not ready after"):
            client.wait_ready(timeout=0.3, interval=0.1)
        with pytest.raises(ServerUnavailableError, match=url):
            client.transcribe(np.zeros(160, dtype=np.float32))

    async def run():
        async with AsyncASRClient(url, protocol=protocol, timeout=5) as client:
            assert not await client.is_ready()
            with pytest.raises(ServerUnavailableError, match=url):
                await client.transcribe(np.zeros(160, dtype=np.float32))

    asyncio.run(run())


# -------------------------------------------------------------------------------------------------
# mambaserve-transcribe
# -------------------------------------------------------------------------------------------------
def _run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = BIN / script
    assert exe.exists(), f"console script {script} is not installed in {BIN} (pip install -e .)"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


def test_cli_prints_one_line_per_file_and_fails_after_the_rest(triton_server, clips):
    files = [clips["hello"], clips["broken"], clips["count"]]
    proc = _run(
        "mambaserve-transcribe", *map(str, files), "--url", triton_server.grpc_url, "--concurrency", "2"
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(clips["hello"]), str(clips["count"])]
    with ASRClient(triton_server.grpc_url) as client:
        expected = [client.transcribe(clips[k]).text for k in ("hello", "count")]
    for line, text in zip(lines, expected):
        _, latency, got = line.split("\t")
        assert latency.endswith(" ms") and float(latency[:-3]) > 0
        assert got == text
    assert f"{clips['broken']}\tERROR" in proc.stderr
    assert "1 of 3 files failed" in proc.stderr


def test_cli_json_http_with_prompt(triton_server, clips):
    files = [clips["fox"], clips["hello"]]
    proc = _run(
        "mambaserve-transcribe",
        *map(str, files),
        "--url",
        triton_server.http_url,
        "--protocol",
        "http",
        "--prompt",
        "greetings: ",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    with ASRClient(triton_server.http_url, protocol="http") as client:
        expected = [client.transcribe(f, prompt="greetings: ").text for f in files]
    assert [r["text"] for r in rows] == expected
    assert all(r["latency_ms"] > 0 and r["audio_seconds"] > 0.5 for r in rows)


def test_cli_usage_and_unreachable_server(clips):
    assert _run("mambaserve-transcribe", str(clips["hello"]), "--concurrency", "0").returncode == 2
    proc = _run(
        "mambaserve-transcribe", str(clips["hello"]), "--url", f"127.0.0.1:{_closed_port()}", "--timeout", "5"
    )
    assert proc.returncode == 1
    assert "unreachable" in proc.stderr


# -------------------------------------------------------------------------------------------------
# mambaserve-eval
# -------------------------------------------------------------------------------------------------
def test_eval_scores_a_manifest_and_counts_failures(triton_server, clips, tmp_path):
    root = clips["hello"].parent
    rows = [
        {"id": k, "audio": clips[k].name, "text": SENTENCES[k], "duration": sf.info(clips[k]).duration}
        for k in ("hello", "fox", "count")
    ]
    rows.insert(2, {"id": "bad", "audio": "broken.wav", "text": "whatever", "duration": 1.0})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rows.jsonl"
    proc = _run(
        "mambaserve-eval",
        str(manifest),
        "--url",
        triton_server.grpc_url,
        "--concurrency",
        "3",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 4 and summary["n_failed"] == 1 and summary["n_ok"] == 3
    assert summary["failures"][0]["id"] == "bad" and "broken.wav" in summary["failures"][0]["error"]

    per_clip = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    ok = [per_clip[k] for k in ("hello", "fox", "count")]
    wer, cer = score([r["ref"] for r in ok], [r["hyp"] for r in ok])
    assert summary["wer"] == pytest.approx(wer) and summary["cer"] == pytest.approx(cer)
    with ASRClient(triton_server.grpc_url) as client:
        assert [r["hyp"] for r in ok] == [client.transcribe(clips[k]).text for k in ("hello", "fox", "count")]
    audio = sum(load_audio(clips[k]).shape[0] for k in ("hello", "fox", "count")) / spec.SAMPLE_RATE
    assert summary["audio_seconds"] == pytest.approx(audio)
    assert summary["rtfx"] == pytest.approx(audio / summary["wall_seconds"])
    lat = sorted(r["latency_ms"] for r in ok)
    assert lat[0] <= summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= lat[-1]

    limited = _run(
        "mambaserve-eval",
        str(manifest),
        "--url",
        triton_server.http_url,
        "--protocol",
        "http",
        "--limit",
        "2",
        "--no-progress",
    )
    assert limited.returncode == 0, limited.stderr
    assert json.loads(limited.stdout.splitlines()[-1])["n"] == 2


def test_eval_bad_manifest_is_a_usage_error(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "text": "no audio field"}\n')
    proc = _run("mambaserve-eval", str(manifest))
    assert proc.returncode == 2
    assert "field 'audio'" in proc.stderr
