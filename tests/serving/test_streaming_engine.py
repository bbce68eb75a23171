"""Model-side primitives the streaming server relies on, in float64 against one-shot references.

- a decode step addressed into a slot pool (``slots=``) equals a step on a separate state and
  touches no other slot;
- a masked (right-padded) encoder batch continues each row exactly from its carried state.
"""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from mambaserve.model.config import ModelConfig
from mambaserve.model.mamba import MambaState
from mambaserve.model.network import SpeechMamba


@pytest.fixture(scope="module")
def model() -> SpeechMamba:
    from mambaserve.model.config import BridgeConfig, DecoderConfig, EncoderConfig, MambaConfig

    config = ModelConfig(
        encoder=EncoderConfig(mamba=MambaConfig(d_model=32, n_layers=2, d_state=4)),
        bridge=BridgeConfig(kind="stride", stride=2),
        decoder=DecoderConfig(mamba=MambaConfig(d_model=32, n_layers=2, d_state=4)),
        vocab_size=64,
    )
    torch.manual_seed(0)
    m = SpeechMamba(config).eval().double()
    with torch.no_grad():  # non-zero biases and D: padding mistakes cannot hide behind zeros
        for name, p in m.named_parameters():
            if name.endswith(("conv_bias", ".D")):
                p.normal_()
    return m


def _random_state(config, batch: int, seed: int) -> MambaState:
    g = torch.Generator().manual_seed(seed)
    z = MambaState.zeros(config, batch)
    return MambaState(
        torch.randn(z.conv.shape, generator=g, dtype=torch.float64),
        torch.randn(z.ssm.shape, generator=g, dtype=torch.float64),
    )


def test_step_on_pool_slots_equals_step_on_own_state(model: SpeechMamba) -> None:
    dec = model.decoder
    cfg = model.config.decoder.mamba
    pool = _random_state(cfg, 7, seed=1)
    untouched = pool.clone()
    slots = torch.tensor([5, 1, 3])
    own = pool.select(slots)  # a copy: the reference steps it without a pool
    tokens = torch.tensor([4, 9, 17])
    with torch.no_grad():
        for _ in range(3):
            ref = dec.head(dec.mamba.step(dec.embed(tokens), own))
            got = dec.head(dec.mamba.step(dec.embed(tokens), pool, slots))
            assert rel_err(got, ref) < 1e-12
            tokens = ref.argmax(-1)
    assert rel_err(pool.ssm[:, slots], own.ssm) < 1e-12
    assert rel_err(pool.conv[:, slots], own.conv) < 1e-12
    others = torch.tensor([0, 2, 4, 6])
    assert torch.equal(pool.ssm[:, others], untouched.ssm[:, others])
    assert torch.equal(pool.conv[:, others], untouched.conv[:, others])


def test_masked_encoder_batch_continues_each_row_from_its_state(model: SpeechMamba) -> None:
    enc = model.encoder
    cfg = model.config.encoder.mamba
    s = model.config.encoder.subsampling
    state = _random_state(cfg, 3, seed=2)
    out_frames = [5, 0, 3]  # a row with nothing new in this chunk must keep its state exactly
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 5 * s, model.config.features.n_mels, generator=g, dtype=torch.float64)
    mask = (torch.arange(5)[None, :] < torch.tensor(out_frames)[:, None]).double()
    with torch.no_grad():
        frames, _, new = enc(feats, torch.tensor([5 * s] * 3), state, mask=mask)
        for i, n in enumerate(out_frames):
            if n == 0:
                assert torch.equal(new.ssm[:, i], state.ssm[:, i]) and torch.equal(
                    new.conv[:, i], state.conv[:, i]
                )
                continue
            ref, _, ref_state = enc(
                feats[i : i + 1, : n * s], torch.tensor([n * s]), state.select(torch.tensor([i]))
            )
            assert rel_err(frames[i, :n], ref[0]) < 1e-10
            assert rel_err(new.ssm[:, i], ref_state.ssm[:, 0]) < 1e-10
            assert rel_err(new.conv[:, i], ref_state.conv[:, 0]) < 1e-10


# ---------------------------------------------------------------------------------------------
# The streaming engine (serving/streaming_engine.py) against the offline Recognizer, on the
# repository's checkpoint (tests/conftest.py): chunked == offline for any chunking.
# ---------------------------------------------------------------------------------------------
CHUNKS = (5120, 10240, 2731, 399)  # 320 ms, 640 ms, odd, shorter than one analysis window


@pytest.fixture(scope="module")
def offline(recognizer, speech_clips):
    from mambaserve.model.ctc import ctc_greedy

    clips = [audio for _, audio in speech_clips[:3]]
    feats, lengths = recognizer.features(clips)
    enc = recognizer.encode(feats, lengths)
    return clips, enc, ctc_greedy(enc.ctc_logprobs, enc.ctc_lengths)


def _stream(streams, slots, clips, chunk):
    """Feed clips in chunks, every sequence in the same batch; per clip: results of every call."""
    pos = [0] * len(clips)
    out = [[] for _ in clips]
    while any(p < len(c) or p == 0 for p, c in zip(pos, clips)):
        active = [i for i in range(len(clips)) if pos[i] < len(clips[i]) or pos[i] == 0]
        chunks = [clips[i][pos[i] : pos[i] + chunk] for i in active]
        final = [pos[i] + chunk >= len(clips[i]) for i in active]
        for i, r in zip(active, streams.process([slots[i] for i in active], chunks, final)):
            out[i].append(r)
            pos[i] += chunk
    return out


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_encoder_stream_equals_offline(recognizer, offline, chunk):
    from mambaserve.serving.streaming_engine import EncoderStreams

    clips, enc, ctc_ids = offline
    streams = EncoderStreams(recognizer.model, capacity=5)
    slots = [4, 0, 2]
    for s in slots:
        streams.reset(s)
    for i, results in enumerate(_stream(streams, slots, clips, chunk)):
        prefix = torch.cat([r.prefix for r in results])
        ctc = torch.cat([r.ctc_logprobs for r in results])
        p, t = int(enc.prefix_lengths[i]), int(enc.ctc_lengths[i])
        assert prefix.shape[0] == p and ctc.shape[0] == t and results[-1].frames_total == t
        assert rel_err(prefix, enc.prefix[i, :p]) < 1e-5
        assert rel_err(ctc, enc.ctc_logprobs[i, :t]) < 1e-5
        assert results[-1].ids == ctc_ids[i]
        # every partial path is the offline path of the frames seen so far (causal: never revised)
        for r in results:
            n = r.frames_total
            from mambaserve.model.ctc import ctc_greedy

            assert r.ids == ctc_greedy(enc.ctc_logprobs[i : i + 1, :n], torch.tensor([n]))[0]


@pytest.fixture
def one_torch_thread():
    """As served (build option torch_threads=1): with more threads MKL splits a product's rows by
    batch size, and a row's last bits then depend on the other rows."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_interleaved_sequences_equal_one_by_one_bitwise(recognizer, offline, one_torch_thread):
    """A sequence's outputs do not depend on what else is in the batch: bit-identical."""
    from mambaserve.serving.streaming_engine import EncoderStreams

    clips, _, _ = offline
    together = EncoderStreams(recognizer.model, capacity=3)
    alone = EncoderStreams(recognizer.model, capacity=1)
    for s in range(3):
        together.reset(s)
    batched = _stream(together, [0, 1, 2], clips, 3000)
    for i, clip in enumerate(clips):
        alone.reset(0)
        single = _stream(alone, [0], [clip], 3000)[0]
        assert len(single) == len(batched[i])
        for a, b in zip(single, batched[i]):
            assert torch.equal(a.prefix, b.prefix) and torch.equal(a.ctc_logprobs, b.ctc_logprobs)
            assert a.ids == b.ids


@pytest.fixture(scope="module")
def onnx_step(recognizer, tmp_path_factory):
    """The compiled decode step of the checkpoint, as the build writes it (CPU instances run this)."""
    from mambaserve.build.export.decoder_step import export_decoder_step
    from mambaserve.build.export.modules import DecoderStepForExport
    from mambaserve.model.onnx_step import OnnxDecodeStep

    path = tmp_path_factory.mktemp("step") / "decoder_step.onnx"
    return OnnxDecodeStep(export_decoder_step(DecoderStepForExport(recognizer.model.decoder), path))


@pytest.fixture(params=["torch", "onnx"])
def decode_step(request):
    """None: the PyTorch step straight into the pool rows (GPU path); else the ONNX Runtime step."""
    return None if request.param == "torch" else request.getfixturevalue("onnx_step")


def _decoder_inputs(recognizer, offline):
    _clips, enc, _ = offline
    prompts = [None, "hello there", "serving state space models"]
    return enc, [recognizer.validate_prompt(p) for p in prompts], prompts


def test_streamed_decoder_final_equals_offline_greedy(recognizer, offline, decode_step):
    from mambaserve.model.recognizer import Recognizer
    from mambaserve.model.search import max_decode_lengths
    from mambaserve.model.tokenizer import BOS_ID
    from mambaserve.serving.streaming_engine import DecoderPool, Sampling, max_decode_length

    enc, prompt_ids, prompts = _decoder_inputs(recognizer, offline)
    dec = recognizer.model.decoder
    pool = DecoderPool(dec, capacity=6, step=decode_step)
    slots = [5, 1, 3]
    pool.reset(slots)
    for start in range(0, int(enc.prefix_lengths.max()), 3):  # the prefix arrives 3 vectors at a time
        pool.feed(
            slots, [enc.prefix[i, start : min(start + 3, int(enc.prefix_lengths[i]))] for i in range(3)]
        )
    logits = pool.feed_tokens(slots, [[*p, BOS_ID] for p in prompt_ids])
    with torch.no_grad():
        ref_logits, _ = dec.prefill(enc.prefix, enc.prefix_lengths, prompt_ids)
    assert rel_err(logits, ref_logits) < 1e-5
    budgets = [max_decode_length(int(n), recognizer.config) for n in enc.ctc_lengths]
    assert budgets == max_decode_lengths(
        enc.ctc_lengths,
        recognizer.frame_seconds,
        recognizer.config.decoding.max_tokens_per_second,
        recognizer.config.decoding.min_tokens,
    )
    ids = pool.generate(slots, logits, [Sampling()] * 3, budgets, recognizer.config.eos_id)
    assert ids == recognizer.decode_ids(enc, prompts, method="greedy")
    if decode_step is not None:  # offline with the same compiled step: the served pair (asr vs asr_streaming)
        same_step = Recognizer(recognizer.checkpoint, decode_step=decode_step)
        assert ids == same_step.decode_ids(enc, prompts, method="greedy")


def test_session_copies_generate_like_a_fresh_state(recognizer, offline, decode_step):
    """A kept state copied into working rows gives what a fresh prefill gives, for greedy, seeded
    sampling and beam search; the kept state itself does not change."""
    from mambaserve.model.tokenizer import BOS_ID
    from mambaserve.serving.streaming_engine import DecoderPool, Sampling

    enc, prompt_ids, _ = _decoder_inputs(recognizer, offline)
    dec = recognizer.model.decoder
    cfg = recognizer.config
    sessions = DecoderPool(dec, capacity=4)
    sessions.reset([2])
    sessions.feed([2], [enc.prefix[0, : int(enc.prefix_lengths[0])]])
    kept = sessions.state.select(torch.tensor([2])).clone()
    work = DecoderPool(dec, capacity=3, step=decode_step)
    settings = [
        Sampling(),
        Sampling(method="sample", seed=11, temperature=0.8, top_k=40, min_tokens=5),
        Sampling(method="sample", seed=11, temperature=0.8, top_k=40, min_tokens=5),
    ]
    budget = [12] * 3

    def run(prompts):
        sessions.copy_to([2, 2, 2], work, [0, 1, 2])
        logits = work.feed_tokens([0, 1, 2], [[*p, BOS_ID] for p in prompts])
        return work.generate([0, 1, 2], logits, settings, budget, cfg.eos_id)

    first = run([prompt_ids[1]] * 3)
    again = run([prompt_ids[1]] * 3)
    assert first == again and first[1] == first[2] and len(first[1]) >= 5
    assert torch.equal(sessions.state.ssm[:, 2:3], kept.ssm) and torch.equal(
        sessions.state.conv[:, 2:3], kept.conv
    )
    # fresh: prefill of [prefix][prompt][BOS] in one go, then the offline greedy search
    one = type(enc)(enc.prefix[:1], enc.prefix_lengths[:1], enc.ctc_logprobs[:1], enc.ctc_lengths[:1])
    from mambaserve.model.search import beam_search, greedy_search

    with torch.no_grad():
        assert [first[0]] == greedy_search(dec, one, [prompt_ids[1]], [12], cfg.eos_id, step=decode_step)
        sessions.copy_to([2], work, [0])
        logits = work.feed_tokens([0], [[*prompt_ids[1], BOS_ID]])
        beam = work.beam([0], logits, [Sampling(method="beam", beam_size=3)], [12], cfg.eos_id, cfg.blank_id)
        assert beam == beam_search(
            dec, one, [prompt_ids[1]], [12], cfg.eos_id, cfg.blank_id, beam_size=3, step=decode_step
        )


def test_compiled_generation_is_bitwise_batch_invariant(recognizer, offline, onnx_step, one_torch_thread):
    """With the ONNX Runtime step, rows generating together give exactly the tokens and final states
    (bit for bit) that each gives alone, with no padding rows."""
    from mambaserve.model.tokenizer import BOS_ID
    from mambaserve.serving.streaming_engine import DecoderPool, Sampling

    enc, prompt_ids, _ = _decoder_inputs(recognizer, offline)
    dec = recognizer.model.decoder
    cfg = recognizer.config
    settings = [
        Sampling(),
        Sampling(method="sample", seed=3, temperature=0.9, top_k=20),
        Sampling(min_tokens=6),
    ]
    budgets = [20, 9, 14]

    def run(rows: list[int]) -> tuple[list[list[int]], MambaState]:
        pool = DecoderPool(dec, capacity=5, step=onnx_step)
        slots = [4 - r for r in rows]
        pool.reset(slots)
        pool.feed(slots, [enc.prefix[r, : int(enc.prefix_lengths[r])] for r in rows])
        logits = pool.feed_tokens(slots, [[*prompt_ids[r], BOS_ID] for r in rows])
        ids = pool.generate(
            slots, logits, [settings[r] for r in rows], [budgets[r] for r in rows], cfg.eos_id
        )
        return ids, pool.state.select(torch.tensor(slots))

    together, state = run([0, 1, 2])
    for r in range(3):
        alone, own = run([r])
        assert alone[0] == together[r]
        assert torch.equal(own.ssm[:, 0], state.ssm[:, r]) and torch.equal(own.conv[:, 0], state.conv[:, r])


def test_state_per_sequence_has_a_fixed_size(recognizer):
    from mambaserve.serving.streaming_engine import DecoderPool, EncoderStreams

    c = recognizer.config
    enc_bytes = EncoderStreams(recognizer.model, capacity=2).state_nbytes()
    dec_bytes = DecoderPool(recognizer.model.decoder, capacity=2).state_nbytes()
    assert enc_bytes == 4 * c.encoder.mamba.n_layers * c.encoder.mamba.d_inner * (
        c.encoder.mamba.d_conv - 1 + c.encoder.mamba.d_state
    )
    assert dec_bytes == 4 * c.decoder.mamba.n_layers * c.decoder.mamba.d_inner * (
        c.decoder.mamba.d_conv - 1 + c.decoder.mamba.d_state
    )
    half = DecoderPool(recognizer.model.decoder, capacity=2, dtype=torch.float16).state_nbytes()
    assert half * 2 == dec_bytes
