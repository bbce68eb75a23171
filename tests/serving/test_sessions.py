"""`decoder_session` served by the real tritonserver: decoupled token streaming over gRPC and HTTP
generate_stream (beam: one response), sessions that keep the state after their audio and answer only
their key, and clear errors. Hostile clients: tests/serving/test_hostile.py."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from mambaserve.clients import ASRClient, SessionClient
from mambaserve.clients.request import ServerError
from mambaserve.contract import spec

pytestmark = pytest.mark.server

PROMPT = "serving state space models"
SAMPLE = {"method": "sample", "seed": 5, "temperature": 0.9, "top_k": 20, "min_tokens": 8, "max_tokens": 8}


@pytest.fixture(scope="module")
def sessions(triton_server):
    with SessionClient(triton_server.grpc_url) as client:
        yield client


def reference_ids(recognizer, audio, prompt=None, **kwargs) -> list[int]:
    feats, lengths = recognizer.features([audio])
    return recognizer.decode_ids(recognizer.encode(feats, lengths), [prompt], **kwargs)[0]


def test_each_generation_answers_in_one_final_response(triton_server, speech_clips, recognizer):
    """Raw gRPC stream: the session's key in the answer to START; each generation (greedy, beam,
    sample) in one response with Triton's final flag, its TOKEN_IDS the reference decoding."""
    audio = speech_clips[1][1]
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))

    def request(sid, start=False, end=False, **inputs):
        tensors = []
        for name, value in inputs.items():
            t = getattr(spec, name)
            array = value[None, :] if t is spec.AUDIO else np.array([[value]], dtype=t.numpy_dtype)
            x = grpcclient.InferInput(t.name, list(array.shape), t.wire_dtype)
            x.set_data_from_numpy(array.astype(t.numpy_dtype) if t is not spec.PROMPT else array)
            tensors.append(x)
        client.async_stream_infer(
            spec.DECODER_SESSION, tensors, sequence_id=sid, sequence_start=start, sequence_end=end
        )
        out = []
        while True:
            result, error = answers.get(timeout=120)
            assert error is None, error
            final_flag = result.get_response().parameters["triton_final_response"].bool_param
            row = {
                n: result.as_numpy(n).reshape(-1)[0]
                for n in ("TOKEN", "TOKEN_ID", "TRANSCRIPT", "IS_FINAL", "SESSION_KEY")
            }
            row["TOKEN_IDS"] = result.as_numpy("TOKEN_IDS").reshape(-1).tolist()
            out.append((row, final_flag))
            if final_flag:
                return out

    try:
        opened = request(8101, start=True, AUDIO=audio, MAX_TOKENS=0)
        assert len(opened) == 1 and opened[0][0]["IS_FINAL"]
        key = opened[0][0]["SESSION_KEY"]  # the session's secret: every later request carries it
        assert len(key) >= 32
        # Every method answers with ONE response: the whole result and Triton's final flag (per-token
        # responses crash 2.51 when clients cancel mid-generation; see serving/STREAMING.md).
        (final, flag), *rest = request(8101, PROMPT=PROMPT.encode(), DECODING_METHOD=b"greedy", KEY=key)
        assert not rest and flag and final["IS_FINAL"] and final["TOKEN_ID"] == -1
        ids = reference_ids(recognizer, audio, PROMPT, method="greedy")
        assert final["TOKEN_IDS"] == ids and final["SESSION_KEY"] == b""
        assert final["TRANSCRIPT"].decode() == recognizer.tokenizer.decode(ids)
        beam = request(8101, PROMPT=PROMPT.encode(), DECODING_METHOD=b"beam", KEY=key)
        assert len(beam) == 1 and beam[0][1]
        assert beam[0][0]["TOKEN_IDS"] == reference_ids(recognizer, audio, PROMPT, method="beam")
        sampled = request(
            8101, end=True, DECODING_METHOD=b"sample", SEED=3, MIN_TOKENS=12, MAX_TOKENS=12, KEY=key
        )
        assert len(sampled) == 1 and len(sampled[0][0]["TOKEN_IDS"]) == 12  # end-of-sequence suppressed
    finally:
        client.stop_stream()
        client.close()


def test_a_later_prompt_equals_a_fresh_run(triton_server, speech_clips, recognizer, sessions):
    """The kept state serves any later prompt and setting exactly like a fresh session (audio and
    prompt in one request); the default decoding (the checkpoint's: joint CTC beam for the shipped one)
    and greedy equal the offline decoding with that prompt, and the default equals the served `asr`."""
    audio = speech_clips[2][1]
    session = sessions.open(audio)
    first = session.generate("hello world")  # something else first: the kept state must not move
    later = session.generate(PROMPT)
    later_sampled = session.generate(PROMPT, **SAMPLE)
    later_beam = session.generate(PROMPT, method="beam", beam_size=3)
    later_greedy = session.generate(PROMPT, method="greedy")
    session.close()
    assert first.token_ids == reference_ids(recognizer, audio, "hello world")
    assert later_greedy.token_ids == reference_ids(recognizer, audio, PROMPT, method="greedy")

    def fresh(**settings):
        events = list(
            sessions.request(
                91_000 + len(settings), start=True, end=True, audio=audio, prompt=PROMPT, **settings
            )
        )
        return list(events[-1].token_ids), events[-1].transcript  # the final response has them all

    ids, text = fresh()
    assert later.token_ids == ids and later.text == text
    assert ids == reference_ids(recognizer, audio, PROMPT)
    with ASRClient(triton_server.grpc_url) as asr:
        assert later.text == asr.transcribe(audio, prompt=PROMPT).text
    assert later_sampled.token_ids == fresh(**SAMPLE)[0] and len(later_sampled.token_ids) == 8
    assert later_beam.token_ids == fresh(method="beam", beam_size=3)[0]
    assert later_beam.token_ids == reference_ids(recognizer, audio, PROMPT, method="beam", beam_size=3)


def test_context_is_kept_history(speech_clips, sessions):
    audio = speech_clips[0][1]
    a = sessions.open(audio)
    base = a.history_length
    assert base > 0
    grown = a.add_context("glossary mamba triton kernels")
    assert grown > base
    b = sessions.open(audio, context="glossary mamba triton kernels")
    assert b.history_length == grown
    assert a.generate(PROMPT, **SAMPLE).token_ids == b.generate(PROMPT, **SAMPLE).token_ids
    a.close()
    b.close()


def test_http_generate_stream_equals_grpc(triton_server, speech_clips):
    audio = speech_clips[4][1][: spec.SAMPLE_RATE * 2]
    results = []
    for protocol, url in (("grpc", triton_server.grpc_url), ("http", triton_server.http_url)):
        with SessionClient(url, protocol=protocol) as client:
            session = client.open(audio)
            results.append((session.history_length, session.generate(PROMPT, **SAMPLE)))
            session.close()
    (h1, g1), (h2, g2) = results
    assert h1 == h2 and g1.token_ids == g2.token_ids and g1.text == g2.text and len(g1.token_ids) == 8


def test_session_errors_are_clear(triton_server, speech_clips, sessions):
    audio = speech_clips[0][1]
    with pytest.raises(ServerError, match="names no session"):
        list(sessions.request(0, max_tokens=0))
    with pytest.raises(ServerError, match="must carry 'AUDIO'"):
        list(sessions.request(92_001, start=True, prompt="x"))
    with pytest.raises(ServerError, match="unknown session 92002"):
        list(sessions.request(92_002, max_tokens=1))
    session = sessions.open(audio)
    with pytest.raises(ServerError, match="'AUDIO' is accepted on the first request of a session"):
        list(sessions.request(session.id, audio=audio, max_tokens=1))
    with pytest.raises(ServerError, match=r"input 'TEMPERATURE' must be in \(0, 100\]"):
        session.generate(method="sample", temperature=0.0)
    with pytest.raises(ServerError, match=r"'CONTEXT'.*1025 bytes"):
        session.add_context("x" * (spec.MAX_PROMPT_BYTES + 1))
    assert session.generate(max_tokens=2).text is not None  # the session survived its bad requests
    session.close()
    with (
        SessionClient(triton_server.http_url, protocol="http") as http,
        pytest.raises(ServerError, match="names no session"),
    ):
        list(http.request(0, max_tokens=0))
