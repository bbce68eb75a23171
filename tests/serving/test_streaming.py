"""`asr_streaming` served by the real tritonserver (the session's repository and server, conftest.py).

- the final transcript equals the offline `asr` answer, for several chunk sizes;
- every partial is the CTC greedy path of the audio received so far (causal: it only grows);
- 256 interleaved sequences answer bit-identically to the same sequences run one by one;
- sequence errors (no START, END without START, after END, PROMPT late, bad chunks) are clear.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from mambaserve.clients import ASRClient, StreamingClient
from mambaserve.clients.streaming import chunk_inputs, parse_chunk
from mambaserve.contract import spec
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.server

CHUNK_SAMPLES = (5120, 10240, 2731)  # 320 ms, 640 ms and an odd size


def send(client, chunk: np.ndarray, sid: int, start=False, end=False, prompt=None) -> tuple[str, bool]:
    result = client.infer(
        spec.ASR_STREAMING,
        chunk_inputs(grpcclient, chunk, prompt),
        sequence_id=sid,
        sequence_start=start,
        sequence_end=end,
    )
    return parse_chunk(result)


def run_sequence(client, audio: np.ndarray, chunk: int, sid: int, prompt=None) -> list[tuple[str, bool]]:
    chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    return [
        send(client, c, sid, start=k == 0, end=k == len(chunks) - 1, prompt=prompt if k == 0 else None)
        for k, c in enumerate(chunks)
    ]


@pytest.fixture(scope="module")
def grpc(grpc_client):
    return grpc_client


@pytest.fixture(scope="module")
def offline_texts(triton_server, speech_clips):
    with ASRClient(triton_server.grpc_url) as asr:
        return [asr.transcribe(audio).text for _, audio in speech_clips[:3]]


@pytest.mark.parametrize("chunk", CHUNK_SAMPLES)
def test_final_equals_offline_asr_and_partials_follow_the_audio(
    triton_server, speech_clips, recognizer, offline_texts, chunk
):
    from mambaserve.model.ctc import ctc_greedy
    from mambaserve.model.features import num_frames

    config = recognizer.config
    with StreamingClient(triton_server.grpc_url) as client:
        for (_, audio), offline in zip(speech_clips[:3], offline_texts):
            results = list(client.stream(audio, chunk_ms=chunk * 1000 / spec.SAMPLE_RATE))
            assert [r.is_final for r in results] == [False] * (len(results) - 1) + [True]
            assert results[-1].text == offline
            feats, lengths = recognizer.features([audio])
            logprobs = recognizer.encode(feats, lengths).ctc_logprobs
            for r in results[:-1]:
                seen = (
                    num_frames(round(r.audio_end_s * spec.SAMPLE_RATE), config.features)
                    // config.encoder.subsampling
                )
                ref = ctc_greedy(logprobs[:, :seen], np.array([seen]))[0]
                assert r.text == recognizer.tokenizer.decode(ref)


def test_prompt_on_the_first_chunk_reaches_the_final_decode(triton_server, speech_clips, grpc):
    prompt = "serving state space models"
    audio = speech_clips[3][1]
    with ASRClient(triton_server.grpc_url) as asr:
        offline = asr.transcribe(audio, prompt=prompt).text
    assert run_sequence(grpc, audio, 6400, sid=9101, prompt=prompt)[-1] == (offline, True)


def test_256_interleaved_sequences_equal_one_by_one(triton_server, speech_clips):
    """256 sequences at once (chunks of all of them in flight together, batched by the sequence
    batcher) give exactly what each gives alone: partial and final transcripts, byte for byte."""
    n, chunk = 256, 3200
    clips = [audio for _, audio in speech_clips]
    audios = [clips[i % len(clips)][(i * 397) % 4000 :][: 6400 + (i * 131) % 4000] for i in range(n)]
    base = 7_000_000
    local = threading.local()

    def client():
        if not hasattr(local, "c"):
            local.c = grpcclient.InferenceServerClient(triton_server.grpc_url)
        return local.c

    chunked = [[a[k : k + chunk] for k in range(0, len(a), chunk)] for a in audios]
    together: list[list] = [[] for _ in range(n)]
    with ThreadPoolExecutor(32) as pool:
        for k in range(max(len(c) for c in chunked)):  # round k: chunk k of every sequence, concurrently
            live = [i for i in range(n) if k < len(chunked[i])]

            def one(i: int, k: int = k) -> tuple[int, tuple[str, bool]]:
                c = chunked[i]
                return i, send(client(), c[k], base + i, start=k == 0, end=k == len(c) - 1)

            for i, answer in pool.map(one, live):
                together[i].append(answer)
    alone_client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    for i in range(n):
        alone = run_sequence(alone_client, audios[i], chunk, sid=base + n + i)
        assert alone == together[i], f"sequence {i} differs when interleaved"
    assert all(t[-1][1] and not any(f for _, f in t[:-1]) for t in together)


def test_sequence_errors_are_clear(grpc, speech_clips):
    audio = speech_clips[0][1]
    chunk = audio[:3200]
    with pytest.raises(InferenceServerException, match="START"):
        send(grpc, chunk, 9201)  # a first request without START
    with pytest.raises(InferenceServerException, match="START"):
        send(grpc, chunk, 9202, end=True)  # END without START
    send(grpc, chunk, 9203, start=True)
    with pytest.raises(InferenceServerException, match="PROMPT' is accepted on the first chunk"):
        send(grpc, chunk, 9203, prompt="late")
    with pytest.raises(InferenceServerException, match="NaN or Inf"):
        send(grpc, np.full(800, np.nan, np.float32), 9203)
    with pytest.raises(InferenceServerException, match="the limit per request is 30 s"):
        send(grpc, np.zeros(int(spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE) + 1, np.float32), 9203)
    _, final = send(grpc, audio[:0], 9203, end=True)  # a bare END (empty chunk) finishes it
    assert final
    with pytest.raises(InferenceServerException, match="START"):
        send(grpc, chunk, 9203)  # after END the correlation ID is unknown again
    two = grpcclient.InferInput(spec.AUDIO.name, [2, 800], "FP32")
    two.set_data_from_numpy(np.zeros((2, 800), np.float32))
    with pytest.raises(InferenceServerException, match="batch-size 1"):  # Triton itself, for sequences
        grpc.infer(spec.ASR_STREAMING, [two], sequence_id=9204, sequence_start=True, sequence_end=True)
