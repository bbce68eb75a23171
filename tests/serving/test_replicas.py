"""Two real tritonserver replicas behind the real front (nginx): every sequence and session stays on one
replica (wrong routing would fail it: the other replica holds no state for it), both replicas get
traffic, answers equal the single-server ones, and a replica killed mid-run fails only its own
streams, clearly, while new sequences go to the live one."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import helpers
import pytest
from mambaserve.clients import ASRClient, SessionClient
from mambaserve.clients.request import ServerUnavailableError
from mambaserve.clients.streaming import (
    StreamingClient,
    chunk_audio,
    chunk_inputs,
    new_sequence_id,
    parse_chunk,
)
from mambaserve.contract import spec
from mambaserve.serving import front

pytestmark = pytest.mark.server

STREAMS, SESSIONS = 64, 32
CHUNK_MS = 640
GREEDY = {"method": "greedy", "max_tokens": 24}


@pytest.fixture(scope="module")
def pair(model_repository, tmp_path_factory):
    settings = front.FrontSettings(
        listen_http=f"127.0.0.1:{helpers.free_port()}",
        listen_grpc=f"127.0.0.1:{helpers.free_port()}",
        rate_per_s=1000,
        burst=4000,
        conns=1024,
        fail_timeout_s=60,
    )
    replicas = front.Replicas(model_repository, 2, settings, log_dir=tmp_path_factory.mktemp("replicas"))
    with replicas:
        yield replicas


@pytest.fixture(scope="module")
def clips(speech_clips):
    return [audio for _, audio in speech_clips[:4]]


@pytest.fixture(scope="module")
def offline(pair, clips) -> list[str]:
    """Each clip's offline `asr` transcript, from replica 0 directly."""
    with ASRClient(pair.servers[0].grpc_url) as asr:
        return [asr.transcribe(audio).text for audio in clips]


@pytest.fixture(scope="module")
def session_reference(pair, clips) -> list[str]:
    """Each clip's greedy session transcript, from replica 0 directly."""
    out = []
    with SessionClient(pair.servers[0].grpc_url) as client:
        for audio in clips:
            session = client.open(audio)
            out.append(session.generate(**GREEDY).text)
            session.close()
    return out


def stream_final(url: str, audio, speed: float = 0.0, timeout: float = 120.0) -> str:
    with StreamingClient(url, timeout=timeout) as client:
        results = list(client.stream(audio, chunk_ms=CHUNK_MS, speed=speed))
    assert results[-1].is_final
    return results[-1].text


def session_final(url: str, audio) -> str:
    with SessionClient(url, timeout=120.0) as client:
        session = client.open(audio)
        text = session.generate(**GREEDY).text
        session.close()
        return text


def successes(replica, model: str) -> float:
    return helpers.metrics(replica).get("nv_inference_request_success", model=model)


def test_streams_and_sessions_keep_to_one_replica_and_both_replicas_serve(
    pair, clips, offline, session_reference
):
    before = [(successes(s, spec.ASR_STREAMING), successes(s, spec.DECODER_SESSION)) for s in pair.servers]
    jobs = [("stream", i % len(clips)) for i in range(STREAMS)] + [
        ("session", i % len(clips)) for i in range(SESSIONS)
    ]
    jobs = jobs[::2] + jobs[1::2]  # streams and sessions interleaved in time

    def run(job):
        kind, clip = job
        if kind == "stream":
            return stream_final(pair.front.grpc_url, clips[clip])
        return session_final(pair.front.grpc_url, clips[clip])

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(run, jobs))
    for (kind, clip), answer in zip(jobs, answers):
        expected = offline[clip] if kind == "stream" else session_reference[clip]
        assert answer == expected, (kind, clip)
    after = [(successes(s, spec.ASR_STREAMING), successes(s, spec.DECODER_SESSION)) for s in pair.servers]
    for i, ((s0, d0), (s1, d1)) in enumerate(zip(before, after)):
        assert s1 > s0, f"replica {i} served no asr_streaming request"
        assert d1 > d0, f"replica {i} served no decoder_session request"
    # Every chunk of a stream counts once where it ran: all chunks together = what was sent.
    chunks = sum(-(-len(clips[c]) // (CHUNK_MS * spec.SAMPLE_RATE // 1000)) for k, c in jobs if k == "stream")
    assert sum(s1 - s0 for (s0, _), (s1, _) in zip(before, after)) == chunks


def test_offline_requests_spread_over_both_replicas(pair, clips, offline):
    before = [successes(s, spec.ASR) for s in pair.servers]
    with ASRClient(pair.front.grpc_url) as asr:
        texts = asr.transcribe_many([clips[i % len(clips)] for i in range(16)], concurrency=4)
    assert [t.text for t in texts] == [offline[i % len(clips)] for i in range(16)]
    after = [successes(s, spec.ASR) for s in pair.servers]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_http_sequences_without_the_header_keep_to_one_replica(pair, clips, offline):
    """Plain tritonclient.http, no affinity header: the front keys each chunk by the sequence_id in the
    request's JSON (front.js); a chunk sent to the other replica would be refused (no START there)."""
    import tritonclient.http as httpclient

    n = 16
    chunked = [chunk_audio(clips[i % len(clips)], CHUNK_MS * spec.SAMPLE_RATE // 1000) for i in range(n)]
    sids = [new_sequence_id() for _ in range(n)]
    finals: list[str | None] = [None] * n
    before = [successes(s, spec.ASR_STREAMING) for s in pair.servers]
    client = httpclient.InferenceServerClient(pair.front.http_url)
    try:
        for k in range(max(len(c) for c in chunked)):  # chunk k of every sequence, then chunk k + 1
            for i, chunks in enumerate(chunked):
                if k < len(chunks):
                    result = client.infer(
                        spec.ASR_STREAMING,
                        chunk_inputs(httpclient, chunks[k], None),
                        sequence_id=sids[i],
                        sequence_start=k == 0,
                        sequence_end=k == len(chunks) - 1,
                    )
                    text, final = parse_chunk(result)
                    if final:
                        finals[i] = text
    finally:
        client.close()
    assert finals == [offline[i % len(clips)] for i in range(n)]
    after = [successes(s, spec.ASR_STREAMING) for s in pair.servers]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("x-mambaserve-replica", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-mambaserve-replica", "")


def test_make_serve_replicas_starts_the_lot_and_restarts_a_dead_replica(model_repository, clips, offline):
    """What `make serve REPLICAS=2` runs: the CLI, on the public ports, until SIGTERM."""
    http_port, grpc_port = helpers.free_port(), helpers.free_port()
    env = {**os.environ, "HTTP_PORT": str(http_port), "GRPC_PORT": str(grpc_port)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mambaserve.serving.front",
            "--repository",
            str(model_repository),
            "--replicas",
            "2",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=helpers.ROOT,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()

    def wait_line(pattern: str, timeout: float = 600) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = re.search(pattern, lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, f"the front CLI exited with {proc.returncode}"
                continue
            if m:
                return m
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s")

    try:
        pids = [int(wait_line(rf"replica {i}: .*\(pid (\d+),").group(1)) for i in range(2)]
        wait_line(r"\] ready \(Ctrl-C stops\)")
        with ASRClient(f"127.0.0.1:{grpc_port}") as asr:
            assert asr.transcribe(clips[0]).text == offline[0]
            os.killpg(pids[1], signal.SIGKILL)
            wait_line(r"replica 1 ready again")
            texts = asr.transcribe_many([clips[i % len(clips)] for i in range(8)], concurrency=4)
            assert [t.text for t in texts] == [offline[i % len(clips)] for i in range(8)]
        assert stream_final(f"127.0.0.1:{grpc_port}", clips[1]) == offline[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert not helpers.wait_for(lambda: _listening(http_port) or _listening(grpc_port), timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_killed_replica_fails_only_its_streams_and_new_ones_go_to_the_live_one(pair, clips, offline):
    dead, live = pair.servers[1], pair.servers[0]
    outcomes: list = [None] * 24
    started = threading.Barrier(len(outcomes) + 1)

    def run(i: int) -> None:
        started.wait()
        try:
            outcomes[i] = stream_final(pair.front.grpc_url, clips[i % len(clips)], speed=1.0, timeout=60.0)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(outcomes))]
    for t in threads:
        t.start()
    started.wait()
    # Mid-run: the streams are real-time paced (a few seconds each); wait until both replicas hold some.
    assert helpers.wait_for(
        lambda: all(successes(s, spec.ASR_STREAMING) > 0 for s in pair.servers), timeout=30
    )
    busy = successes(dead, spec.ASR_STREAMING)
    assert helpers.wait_for(lambda: successes(dead, spec.ASR_STREAMING) > busy, timeout=30)
    os.killpg(dead.pid, signal.SIGKILL)  # the server and its python stubs
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a stream hung after its replica died"
    failed = [o for o in outcomes if isinstance(o, Exception)]
    finished = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, str)]
    assert failed, "no stream was on the killed replica"
    assert finished, "no stream survived on the live replica"
    for exc in failed:
        # Cut mid-stream ("the stream was cut ...") or refused at its start (nginx: 502): either way the
        # client's "try again" error, never a wrong transcript or a hang.
        assert isinstance(exc, ServerUnavailableError) and str(exc), repr(exc)
    for i, text in finished:
        assert text == offline[i % len(clips)]

    # Readiness through the front: the dead replica says so, the front as a whole is ready (the live one).
    base = f"http://{pair.front.http_url}"
    assert http_status(f"{base}/front/replicas/1/ready")[0] >= 500
    assert http_status(f"{base}/front/replicas/0/ready")[0] == 200
    status, answered_by = http_status(f"{base}/v2/health/ready")
    assert status == 200 and answered_by.endswith(live.http_url)

    # New sequences and sessions: all on the live replica, all correct.
    before = successes(live, spec.ASR_STREAMING)
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda i: stream_final(pair.front.grpc_url, clips[i % len(clips)]), range(8)))
    assert texts == [offline[i % len(clips)] for i in range(8)]
    assert successes(live, spec.ASR_STREAMING) > before
    assert session_final(pair.front.grpc_url, clips[0])
