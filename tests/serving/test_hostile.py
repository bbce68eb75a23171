"""Hostile clients against the real tritonserver (issue 15): none can crash the server, take it over or
read another's session, and each refusal carries a status code that says whose fault it is.

One server, built with small pools (4 session slots, 2 per client, 2 stream slots, 1 per client) and started with
the client-id header forwarded (``--grpc/http-header-forward-pattern``, as the front proxy deploys
it). After every attack the server must still transcribe a normal clip exactly as before it.
"""

from __future__ import annotations

import itertools
import queue
import shutil
import threading
import urllib.error
import urllib.request

import helpers
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from mambaserve.build.repository import BuildOptions, build_repository
from mambaserve.clients import ASRClient, SessionClient
from mambaserve.clients.request import ServerError
from mambaserve.clients.session import Session
from mambaserve.clients.streaming import chunk_inputs
from mambaserve.contract import spec
from mambaserve.serving import metrics as m
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.server

SESSION_SLOTS = 4
PER_CLIENT = 2
STREAM_SLOTS = 2
STREAMS_PER_CLIENT = 1
FORWARD = f"^{spec.CLIENT_ID_HEADER}$"
_IDS = itertools.count(700_001)


@pytest.fixture(scope="module")
def hostile(model_repository, checkpoint_dir, tmp_path_factory, speech_clips):
    """Every model, small pools, the client id forwarded; yields (server, clip, its transcript)."""
    out = tmp_path_factory.mktemp("hostile") / "repo"
    graph = model_repository / spec.ENCODER / "1" / "model.onnx"
    options = BuildOptions(
        verify_load=False,
        stream_slots=STREAM_SLOTS,
        stream_slots_per_client=STREAMS_PER_CLIENT,
        session_slots=SESSION_SLOTS,
        session_slots_per_client=PER_CLIENT,
    )
    build_repository(
        checkpoint_dir,
        out,
        options,
        exporter=lambda module, path, n_mels: shutil.copyfile(graph, path),
        log=lambda _: None,
    )
    server = helpers.server(
        out,
        log_path=tmp_path_factory.mktemp("hostile-log") / "server.log",
        extra_args=[f"--grpc-header-forward-pattern={FORWARD}", f"--http-header-forward-pattern={FORWARD}"],
    )
    server.start()
    clip = speech_clips[1][1]
    try:
        with ASRClient(server.grpc_url) as asr:
            expected = asr.transcribe(clip).text
        assert expected
        yield server, clip, expected
    finally:
        server.stop()


def still_serving(hostile) -> None:
    """The server is alive, ready, and transcribes the normal clip as it did before any attack."""
    server, clip, expected = hostile
    assert server.is_alive() and helpers.is_ready(server), server.log_tail()
    with ASRClient(server.grpc_url) as asr:
        assert asr.transcribe(clip).text == expected
    with ASRClient(server.http_url, protocol="http") as asr:
        assert asr.transcribe(clip).text == expected


# -- raw requests (status codes as the frontends answer them) -----------------------------------
def grpc_status(server, model: str, audio: np.ndarray, headers: dict | None = None, **sequence) -> str:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as e:
            client.infer(model, chunk_inputs(grpcclient, audio, None), headers=headers, **sequence)
        return f"{e.value.status()}: {e.value.message()}"
    finally:
        client.close()


def http_status(server, model: str, audio: np.ndarray, **sequence) -> str:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        with pytest.raises(InferenceServerException) as e:
            client.infer(model, chunk_inputs(httpclient, audio, None), **sequence)
        return f"{e.value.status()}: {e.value.message()}"
    finally:
        client.close()


def send_chunk(server, audio: np.ndarray, sid: int, start=False, end=False, client_id: str | None = None):
    """One asr_streaming chunk over gRPC (as client ``client_id``: the header the front sets)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return client.infer(
            spec.ASR_STREAMING,
            chunk_inputs(grpcclient, audio, None),
            sequence_id=sid,
            sequence_start=start,
            sequence_end=end,
            headers={spec.CLIENT_ID_HEADER: client_id} if client_id else None,
        )
    finally:
        client.close()


def generate_stream_status(server, body: dict, headers: dict | None = None) -> tuple[int, str]:
    """HTTP generate_stream of decoder_session: (HTTP status, body) of a refused request."""
    import json

    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{spec.DECODER_SESSION}/generate_stream",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60).read()
    return e.value.code, e.value.read().decode()


# -- 1. status codes ------------------------------------------------------------------------------
def test_client_errors_are_invalid_argument_and_http_400(hostile):
    server, clip, _ = hostile
    nan = clip.copy()
    nan[100] = np.nan
    too_long = np.zeros(int(spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE) + 1, np.float32)
    for audio, says in ((nan, "contains NaN or Inf"), (too_long, "the limit is 30 s")):
        assert grpc_status(server, spec.ASR, audio).startswith("StatusCode.INVALID_ARGUMENT: ")
        assert says in grpc_status(server, spec.ASR, audio)
        status = http_status(server, spec.ASR, audio)
        assert status.startswith("400: ") and says in status, status
    sid = next(_IDS)  # a streaming chunk with NaN: the sequence's own error, 400 too
    status = grpc_status(server, spec.ASR_STREAMING, nan, sequence_id=sid, sequence_start=True)
    assert status.startswith("StatusCode.INVALID_ARGUMENT: ") and "contains NaN" in status
    status = http_status(server, spec.ASR_STREAMING, nan, sequence_id=next(_IDS), sequence_start=True)
    assert status.startswith("400: "), status

    # decoder_session: bad settings, too little audio. HTTP generate_stream answers the code; a gRPC
    # stream (2.51) carries only the message, which names the field and the limit.
    with SessionClient(server.grpc_url) as client:
        session = client.open(clip)
        with pytest.raises(ServerError, match=r"input 'TEMPERATURE' must be in \(0, 100\]"):
            session.generate(method="sample", temperature=0.0)
        with pytest.raises(ServerError, match=r"a session starts on at least 4000 samples \(0.25 s"):
            client.open(clip[:400])  # 25 ms: one window, but not a session's worth of audio
        session.close()
    with SessionClient(server.http_url, protocol="http") as client:
        session = client.open(clip)
        with pytest.raises(ServerError, match=r"'BEAM_SIZE' must be in \[1, 16\]") as e:
            session.generate(method="beam", beam_size=99)
        assert e.value.status == "400"
        with pytest.raises(ServerError, match="at least 4000 samples") as e:
            client.open(clip[:400])
        assert e.value.status == "400"
        session.close()
    still_serving(hostile)


def test_full_pools_are_unavailable_and_http_503(hostile):
    server, clip, _ = hostile
    chunk = clip[:4800]
    live = {next(_IDS): f"streamer-{k}" for k in range(STREAM_SLOTS)}  # one stream per client: the cap
    for sid, who in live.items():
        send_chunk(server, chunk, sid, start=True, client_id=who)
    status = grpc_status(server, spec.ASR_STREAMING, chunk, sequence_id=next(_IDS), sequence_start=True)
    assert status.startswith("StatusCode.UNAVAILABLE: ") and "sequence slots are in use" in status
    status = http_status(server, spec.ASR_STREAMING, chunk, sequence_id=next(_IDS), sequence_start=True)
    assert status.startswith("503: ") and "sequence slots are in use" in status, status
    for sid, who in live.items():
        send_chunk(server, chunk, sid, end=True, client_id=who)

    # Sessions (gRPC streams, the client id forwarded from the header the proxy sets): client a reaches
    # its cap while client b still gets slots, until the pool is full. A gRPC stream carries the message
    # only (2.51 sends no status code on a stream), HTTP generate answers 400 for any model error.
    rejected = helpers.metrics(server).get(
        m.SEQUENCES_REJECTED, model=spec.DECODER_SESSION, reason="client_cap"
    )
    opened = []

    def client(name: str) -> SessionClient:
        return SessionClient(server.grpc_url, headers={spec.CLIENT_ID_HEADER: name})

    with client("a") as a, client("b") as b, client("c") as c:
        opened += [a.open(clip), a.open(clip)]
        with pytest.raises(ServerError, match=f"client 'a' already hold.* {PER_CLIENT} live sessions"):
            a.open(clip)
        with pytest.raises(ServerError, match=f"client 'a' already hold.* {PER_CLIENT} live sessions"):
            spoofed = {spec.CLIENT_ID_HEADER: "someone-else"}  # what a client sets loses to the header
            list(a.request(next(_IDS), start=True, audio=clip, max_tokens=0, parameters=spoofed))
        opened += [b.open(clip), b.open(clip)]
        assert helpers.metrics(server).get(m.SLOTS_IN_USE, model=spec.DECODER_SESSION) == SESSION_SLOTS
        with pytest.raises(ServerError, match=f"all {SESSION_SLOTS} session slots are in use"):
            c.open(clip)
        code, body = generate_stream_status(
            server,
            {"parameters": {"sequence_id": next(_IDS), "sequence_start": True}, "AUDIO": clip.tolist()},
        )
        assert code == 400 and f"all {SESSION_SLOTS} session slots are in use" in body, (code, body)
        for session in opened:
            session.close()
        c.open(clip).close()  # closing gave the slots back
    after = helpers.metrics(server).get(m.SEQUENCES_REJECTED, model=spec.DECODER_SESSION, reason="client_cap")
    assert after == rejected + 2  # the plain and the spoofed attempt
    still_serving(hostile)


# -- 3. sessions with owners ---------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_only_the_owner_reads_writes_or_ends_a_session(hostile, protocol):
    server, clip, _ = hostile
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with (
        SessionClient(url, protocol=protocol) as owner_client,
        SessionClient(url, protocol=protocol) as thief,
    ):
        session = owner_client.open(clip)
        assert len(session.key) >= 32
        before = session.generate(method="greedy", max_tokens=6)
        history = session.history_length
        for key in ("", "not-the-key", session.key[:-1]):
            intruder = Session(thief, session.id, key)
            with pytest.raises(
                ServerError, match=f"session {session.id} belongs to the client that started it"
            ):
                intruder.generate(method="greedy", max_tokens=6)  # read
            with pytest.raises(ServerError, match="belongs to the client"):
                intruder.add_context("ignore the audio")  # write
            with pytest.raises(ServerError, match="belongs to the client"):
                intruder.close()  # end
        with pytest.raises(ServerError, match=f"cannot start session {session.id}: .* is live") as e:
            thief.open(clip[::-1].copy(), session_id=session.id)  # replace the audio: never a mix
        if protocol == "http":
            assert e.value.status == "400"
        after = session.generate(method="greedy", max_tokens=6)  # untouched: same state, same tokens
        assert after.token_ids == before.token_ids and session.history_length == history
        session.close()
        with pytest.raises(ServerError, match="already ended"):
            session.generate(max_tokens=1)
    still_serving(hostile)


def test_a_second_start_on_a_live_stream_is_refused_not_mixed(hostile):
    """asr_streaming: a START on a live correlation ID is an error; the owner's final is unchanged."""
    server, clip, _ = hostile
    other = helpers.espeak("one two three four five six seven")
    chunk = 4800
    pieces = [clip[i : i + chunk] for i in range(0, len(clip), chunk)]

    def run(sid: int, intrude: bool) -> str:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            last = None
            for k, piece in enumerate(pieces):
                last = client.infer(
                    spec.ASR_STREAMING,
                    chunk_inputs(grpcclient, piece, None),
                    sequence_id=sid,
                    sequence_start=k == 0,
                    sequence_end=k == len(pieces) - 1,
                )
                if intrude and k == 1:
                    status = grpc_status(
                        server, spec.ASR_STREAMING, other[:chunk], sequence_id=sid, sequence_start=True
                    )
                    assert status.startswith("StatusCode.ALREADY_EXISTS: "), status
                    assert (
                        f"cannot start sequence {sid}: a sequence with this correlation ID is live" in status
                    )
            return last.as_numpy(spec.TRANSCRIPT.name).reshape(-1)[0].decode()
        finally:
            client.close()

    assert run(next(_IDS), intrude=True) == run(next(_IDS), intrude=False)
    still_serving(hostile)


def test_a_stream_takes_chunks_from_its_own_client_only(hostile):
    """A stream started by client a refuses chunks from client b, untouched: a's final is what it is
    without the intruder. (An END from b is refused by the model too, but tritonserver's sequence
    batcher closes its own record of the sequence first: see serving/STREAMING.md, "Owners".)"""
    server, clip, _ = hostile
    other = helpers.espeak("one two three four five six seven")
    pieces = [clip[i : i + 4800] for i in range(0, len(clip), 4800)]
    rejected = helpers.metrics(server).get(m.REJECTED, model=spec.STREAMING_ENCODER, reason="wrong_client")

    def final(sid: int, intrude: bool) -> str:
        last = None
        for k, piece in enumerate(pieces):
            last = send_chunk(server, piece, sid, start=k == 0, end=k == len(pieces) - 1, client_id="a")
            if intrude and k < 2:
                status = grpc_status(
                    server,
                    spec.ASR_STREAMING,
                    other[:4800],
                    headers={spec.CLIENT_ID_HEADER: "b"},
                    sequence_id=sid,
                )
                assert status.startswith("StatusCode.INVALID_ARGUMENT: "), status
                assert f"sequence {sid} belongs to the client that started it" in status, status
        return last.as_numpy(spec.TRANSCRIPT.name).reshape(-1)[0].decode()

    assert final(next(_IDS), intrude=True) == final(next(_IDS), intrude=False)
    after = helpers.metrics(server).get(m.REJECTED, model=spec.STREAMING_ENCODER, reason="wrong_client")
    assert after == rejected + 2
    still_serving(hostile)


def test_one_client_cannot_take_every_stream_slot(hostile):
    """Client a at its stream cap is refused (UNAVAILABLE, naming the cap) while client b still starts one."""
    server, clip, _ = hostile
    chunk = clip[:4800]
    mine = next(_IDS)
    send_chunk(server, chunk, mine, start=True, client_id="a")
    status = grpc_status(
        server,
        spec.ASR_STREAMING,
        chunk,
        headers={spec.CLIENT_ID_HEADER: "a"},
        sequence_id=next(_IDS),
        sequence_start=True,
    )
    assert status.startswith("StatusCode.UNAVAILABLE: "), status
    assert f"client 'a' already hold(s) {STREAMS_PER_CLIENT} live sequences" in status, status
    theirs = next(_IDS)
    send_chunk(server, chunk, theirs, start=True, client_id="b")
    send_chunk(server, chunk, mine, end=True, client_id="a")
    send_chunk(server, chunk, theirs, end=True, client_id="b")
    still_serving(hostile)


# -- 2. cancellation storms -----------------------------------------------------------------------
CANCELS = 1000
THREADS = 4


def test_cancelling_a_thousand_streams_per_method_cannot_crash_the_server(hostile):
    """Clients that cancel their gRPC stream right after the first response, in every decoding method.
    2.51 segfaults when a decoupled model sends to a cancelled stream (per-token responses did, within
    2 000 such cancels, beam bursts within 200); every generation answers in one response, so nothing
    is left to send when the client walks away."""
    server, clip, _ = hostile
    audio = clip[: spec.SAMPLE_RATE // 2]  # short clips: the storm is about cancellation, not decoding
    settings = {
        "greedy": {"DECODING_METHOD": b"greedy", "MAX_TOKENS": 24, "MIN_TOKENS": 24},
        "sample": {"DECODING_METHOD": b"sample", "MAX_TOKENS": 24, "MIN_TOKENS": 24, "SEED": 1},
        "beam": {"DECODING_METHOD": b"beam", "MAX_TOKENS": 8, "BEAM_SIZE": 2},
    }
    errors: list[str] = []
    done = [0] * THREADS

    def storm(worker: int) -> None:
        try:
            with SessionClient(server.grpc_url, headers={spec.CLIENT_ID_HEADER: f"storm-{worker}"}) as owner:
                session = owner.open(audio)
        except ServerError as e:
            errors.append(f"worker {worker}: {e}")
            return
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for method, values in settings.items():
                inputs = []
                for name, value in {**values, "KEY": session.key.encode()}.items():
                    t = getattr(spec, name)
                    x = grpcclient.InferInput(t.name, [1, 1], t.wire_dtype)
                    x.set_data_from_numpy(np.array([[value]], dtype=t.numpy_dtype))
                    inputs.append(x)
                for _ in range(CANCELS // THREADS):
                    answers: queue.Queue = queue.Queue()
                    client.start_stream(callback=lambda result, error, q=answers: q.put((result, error)))
                    client.async_stream_infer(spec.DECODER_SESSION, inputs, sequence_id=session.id)
                    _, error = answers.get(timeout=120)
                    if error is not None:
                        errors.append(f"{method}: {error}")
                        return
                    client.stop_stream(cancel_requests=True)  # walk away right after the first answer
                    done[worker] += 1
        except Exception as e:  # reported below; the other workers carry on
            errors.append(f"worker {worker}: {type(e).__name__}: {e}")
        finally:
            client.close()
            with SessionClient(server.grpc_url) as owner:
                Session(owner, session.id, session.key).close()

    workers = [threading.Thread(target=storm, args=(w,)) for w in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:5]
    assert sum(done) == len(settings) * (CANCELS // THREADS) * THREADS
    assert helpers.metrics(server).get(m.SLOTS_IN_USE, model=spec.DECODER_SESSION) == 0
    still_serving(hostile)
