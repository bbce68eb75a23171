"""The `asr` ensemble served by a real tritonserver (session fixture `triton_server`), against the
in-process reference (`Recognizer`), over HTTP and gRPC, concurrently, and with bad input."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import helpers
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from mambaserve.build.export.graph import relative_error
from mambaserve.contract import spec
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.server

MODELS = (spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER, spec.ASR)


def _inputs(module, audio: np.ndarray, prompt: bytes | str | None = None, dtype: str | None = None):
    audio = audio if audio.ndim == 2 else audio[None, :]
    a = module.InferInput(spec.AUDIO.name, list(audio.shape), dtype or spec.AUDIO.wire_dtype)
    a.set_data_from_numpy(audio)
    inputs = [a]
    if prompt is not None:
        data = prompt.encode() if isinstance(prompt, str) else prompt
        p = module.InferInput(spec.PROMPT.name, [audio.shape[0], 1], spec.PROMPT.wire_dtype)
        p.set_data_from_numpy(np.array([[data]] * audio.shape[0], dtype=object))
        inputs.append(p)
    return inputs


def transcribe(client, module, audio: np.ndarray, prompt=None) -> list[str]:
    result = client.infer(spec.ASR, _inputs(module, audio, prompt))
    out = result.as_numpy(spec.TRANSCRIPT.name)
    assert out.shape == (audio.shape[0] if audio.ndim == 2 else 1, 1)
    return [v.decode("utf-8") for v in out[:, 0]]


@pytest.fixture(scope="module")
def grpc(grpc_client):
    return grpc_client


@pytest.fixture(scope="module")
def expected(recognizer, speech_clips) -> list[str]:
    return recognizer.transcribe([audio for _, audio in speech_clips])


def test_server_and_every_model_are_ready_with_the_public_contract(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url)
    assert client.is_server_live() and client.is_server_ready()
    for name in MODELS:
        assert client.is_model_ready(name), name
    meta = client.get_model_metadata(spec.ASR)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("AUDIO", "FP32", [-1, -1]),
        ("PROMPT", "BYTES", [-1, 1]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("TRANSCRIPT", "BYTES", [-1, 1])
    ]


def test_build_reported_every_step(build_output):
    for text in (
        "exporting the encoder to ONNX",
        "max relative error",
        "TensorRT engine",
        "skipped:",
        "exporting the decoder's decode step to ONNX",
        "greedy rollout",
        "checking the ensemble wiring",
        "loading every model in a real tritonserver",
        "ready: asr v1, asr_streaming v1, decoder v1, decoder_session v1, encoder v1, feature_extractor v1, "
        "streaming_decoder v1, streaming_encoder v1",
    ):
        assert text in build_output, text


def test_http_and_grpc_give_the_in_process_transcript(triton_server, grpc, speech_clips, expected):
    http = httpclient.InferenceServerClient(triton_server.http_url)
    _, audio = speech_clips[1]
    assert transcribe(http, httpclient, audio) == [expected[1]]
    assert transcribe(grpc, grpcclient, audio) == [expected[1]]


def test_served_transcripts_equal_the_in_process_ones(grpc, recognizer, speech_clips, expected):
    served = [transcribe(grpc, grpcclient, audio)[0] for _, audio in speech_clips]
    assert served == expected
    prompt = "state space"
    with_prompt = [transcribe(grpc, grpcclient, audio, prompt)[0] for _, audio in speech_clips[:2]]
    assert with_prompt == recognizer.transcribe([a for _, a in speech_clips[:2]], prompts=[prompt] * 2)


def test_cpu_decoding_models_run_the_compiled_step_and_match_in_process_with_it(
    triton_server, model_repository, grpc, checkpoint_dir, speech_clips, expected
):
    """CPU instances decode with the build's decoder_step.onnx (ONNX Runtime), not silently with PyTorch;
    the in-process Recognizer given the same file gives the same transcripts, as does the eager one."""
    from mambaserve.model.recognizer import Recognizer

    log = triton_server.log_path.read_text(errors="replace")
    for model in (spec.DECODER, spec.STREAMING_DECODER, spec.DECODER_SESSION):
        line = rf"{model}: decode steps with \S*/{model}/1/{re.escape(spec.DECODER_STEP_FILE)} on cpu"
        assert re.search(line, log), model
    compiled = Recognizer(
        checkpoint_dir, decode_step=model_repository / spec.DECODER / "1" / spec.DECODER_STEP_FILE
    )
    audio = [a for _, a in speech_clips]
    served = [transcribe(grpc, grpcclient, a)[0] for a in audio]
    assert served == compiled.transcribe(audio) == expected


def test_each_stage_matches_pytorch(grpc, recognizer, speech_clips):
    """Features (bucketed), then the ONNX encoder, against the PyTorch pipeline on the valid frames."""
    _, audio = speech_clips[2]
    fe = grpc.infer(spec.FEATURE_EXTRACTOR, _inputs(grpcclient, audio))
    feats, feat_len = fe.as_numpy(spec.FEATURES.name), fe.as_numpy(spec.FEATURE_LENGTHS.name)
    ref_feats, ref_len = recognizer.features([audio])
    n = int(ref_len[0])
    assert feat_len.tolist() == [[n]]
    assert feats.shape[1] % spec.FEATURE_BUCKET_FRAMES == 0 and feats.shape[1] >= n
    assert relative_error(feats[0, :n], ref_feats[0, :n].numpy()) <= 1e-5
    assert not feats[0, n:].any()  # padding is zeros

    def inp(name, value, dtype):
        t = grpcclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        return t

    enc = grpc.infer(
        spec.ENCODER,
        [inp(spec.FEATURES.name, feats, "FP32"), inp(spec.FEATURE_LENGTHS.name, feat_len, "INT64")],
    )
    ref = recognizer.encode(ref_feats, ref_len)
    p, c = int(ref.prefix_lengths[0]), int(ref.ctc_lengths[0])
    assert enc.as_numpy(spec.PREFIX_LENGTHS.name).tolist() == [[p]]
    assert enc.as_numpy(spec.CTC_LENGTHS.name).tolist() == [[c]]
    assert relative_error(enc.as_numpy(spec.PREFIX.name)[0, :p], ref.prefix[0, :p].numpy()) <= 1e-4
    assert (
        relative_error(enc.as_numpy(spec.CTC_LOGPROBS.name)[0, :c], ref.ctc_logprobs[0, :c].numpy()) <= 1e-4
    )


def test_a_client_side_batch_is_one_request(grpc, recognizer, speech_clips):
    clips = [audio for _, audio in speech_clips[:3]]
    longest = max(len(a) for a in clips)
    batch = np.stack([np.pad(a, (0, longest - len(a))) for a in clips]).astype(np.float32)
    assert transcribe(grpc, grpcclient, batch) == recognizer.transcribe(list(batch))


def test_32_concurrent_requests_are_all_correct_and_batched(triton_server, speech_clips, expected):
    before = helpers.metrics(triton_server)
    local = threading.local()

    def one(i: int) -> tuple[int, str]:
        if not hasattr(local, "client"):  # one connection per thread
            local.client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        k = i % len(speech_clips)
        return k, transcribe(local.client, grpcclient, speech_clips[k][1])[0]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert all(text == expected[k] for k, text in results), results
    after = helpers.metrics(triton_server)
    requests = {
        m: after.value("nv_inference_count", model=m) - before.value("nv_inference_count", model=m)
        for m in MODELS[:3]
    }
    executions = {
        m: after.value("nv_inference_exec_count", model=m) - before.value("nv_inference_exec_count", model=m)
        for m in MODELS[:3]
    }
    assert all(requests[m] == 32 for m in requests), requests
    assert any(executions[m] < requests[m] for m in executions), (
        requests,
        executions,
    )  # dynamic batching happened


TOO_LONG = np.zeros(int(spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE) + spec.SAMPLE_RATE, np.float32)
BAD_REQUESTS = {
    "empty audio": (lambda a: (np.zeros((1, 0), np.float32), None, None), ["AUDIO", "empty"]),
    "NaN sample": (
        lambda a: (np.where(np.arange(len(a)) == 100, np.nan, a).astype(np.float32), None, None),
        ["AUDIO", "NaN"],
    ),
    "Inf sample": (
        lambda a: (np.where(np.arange(len(a)) == 7, np.inf, a).astype(np.float32), None, None),
        ["AUDIO", "Inf"],
    ),
    "int16-scaled": (lambda a: ((a * 32767).astype(np.float32), None, None), ["AUDIO", "[-1, 1]"]),
    "too long": (lambda a: (TOO_LONG, None, None), ["AUDIO", f"limit is {spec.MAX_AUDIO_SECONDS:g} s"]),
    "wrong dtype": (lambda a: (a.astype(np.float64), None, "FP64"), ["AUDIO", "FP64"]),
    "wrong rank": (lambda a: (a[None, :, None], None, None), ["AUDIO", "shape"]),
    "prompt not UTF-8": (lambda a: (a, b"\xff\xfeabc", None), ["PROMPT", "UTF-8"]),
    "prompt too long": (
        lambda a: (a, b"x" * (spec.MAX_PROMPT_BYTES + 1), None),
        ["PROMPT", f"{spec.MAX_PROMPT_BYTES} bytes"],
    ),
    "batch over max_batch_size": (
        lambda a: (np.zeros((spec.MAX_BATCH_SIZE + 1, 1600), np.float32), None, None),
        ["batch", str(spec.MAX_BATCH_SIZE)],
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_refused_clearly_and_the_server_keeps_serving(grpc, speech_clips, expected, case):
    make, words = BAD_REQUESTS[case]
    audio, prompt, dtype = make(speech_clips[0][1])
    audio = audio if audio.ndim >= 2 else audio[None, :]
    with pytest.raises(InferenceServerException) as info:
        inputs = _inputs(grpcclient, audio, prompt, dtype)
        grpc.infer(spec.ASR, inputs)
    message = info.value.message()
    for word in words:
        assert word.lower() in message.lower(), message
    assert transcribe(grpc, grpcclient, speech_clips[0][1]) == [expected[0]]


def test_one_bad_request_does_not_fail_the_others_sent_with_it(triton_server, speech_clips, expected):
    """Good and bad requests in flight together (so the batcher can group them): only the bad fail."""
    barrier = threading.Barrier(12)

    def one(i: int):
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        audio = speech_clips[i % 2][1]
        prompt = b"\xff" if i % 3 == 0 else None  # a bad prompt fails in the decoder's batch
        if i % 4 == 1:
            audio = np.full_like(audio, np.nan)  # bad audio fails in the feature extractor's batch
        barrier.wait()
        try:
            return i, transcribe(client, grpcclient, audio, prompt)[0]
        except InferenceServerException as e:
            return i, e

    with ThreadPoolExecutor(12) as pool:
        results = dict(pool.map(one, range(12)))
    for i, result in results.items():
        if i % 3 == 0 or i % 4 == 1:
            assert isinstance(result, InferenceServerException), (i, result)
        else:
            assert result == expected[i % 2], (i, result)
