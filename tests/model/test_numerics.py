"""The state properties the serving design relies on, checked in float64 against full recomputation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import rel_err
from mambaserve.kernels.scan_cpu import selective_scan_cpu
from mambaserve.model.config import FeatureConfig
from mambaserve.model.ctc import CTCPrefixScorer, ctc_greedy
from mambaserve.model.features import LogMel, mel_filterbank, num_frames
from mambaserve.model.network import SpeechMamba
from mambaserve.model.search import beam_search, greedy_search


@pytest.fixture
def model64(tiny_model_config) -> SpeechMamba:
    torch.manual_seed(0)
    model = SpeechMamba(tiny_model_config).eval().double()
    # Random (not zero) conv biases and D so that padding mistakes cannot hide behind zeros.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("conv_bias", ".D")):
                p.normal_()
    return model


def test_features_match_librosa() -> None:
    import librosa

    cfg = FeatureConfig()
    audio = np.random.default_rng(0).standard_normal(16000 * 2 + 123).astype(np.float32) * 0.1
    ref = librosa.feature.melspectrogram(
        y=audio,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        center=False,
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min,
        fmax=cfg.f_max,
    )
    ref = np.log(ref + cfg.log_floor).T
    feats, lengths = LogMel(cfg)(torch.from_numpy(audio)[None])
    assert feats.shape[1] == ref.shape[0] == int(lengths[0]) == num_frames(len(audio), cfg)
    assert rel_err(feats[0], torch.from_numpy(ref)) < 1e-5


@pytest.mark.parametrize(
    "settings",
    [{}, {"n_mels": 40, "f_min": 0.0, "f_max": 8000.0}, {"n_fft": 512, "n_mels": 64, "f_max": 7000.0}],
)
def test_mel_filterbank_is_librosas(settings) -> None:
    import librosa

    cfg = FeatureConfig(**settings)
    ref = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max
    )
    ours = mel_filterbank(cfg).numpy()
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_serving_code_does_not_load_librosa() -> None:
    """librosa (numba, scipy, llvmlite: ~320 MB per stub) is a test reference only."""
    code = (
        "import sys\n"
        "from mambaserve.model.features import LogMel, load_feature_extractor\n"
        "from mambaserve.model.recognizer import Recognizer\n"
        "from mambaserve.serving import state, streaming_engine\n"
        "from mambaserve.model.config import FeatureConfig\n"
        "LogMel(FeatureConfig())\n"
        "print(sorted(m for m in ('librosa', 'numba', 'llvmlite') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_features_of_a_chunk_border_are_exact() -> None:
    """A frame depends only on its own samples: features of audio split at a hop boundary concatenate."""
    cfg = FeatureConfig()
    lm = LogMel(cfg)
    audio = torch.randn(1, 16000) * 0.1
    full, _ = lm(audio)
    cut = 160 * 37
    a, _ = lm(audio[:, : cut + cfg.win_length - cfg.hop_length])
    b, _ = lm(audio[:, cut:])
    assert rel_err(torch.cat([a, b], 1), full) < 1e-6


def test_padding_does_not_change_features() -> None:
    lm = LogMel(FeatureConfig())
    a = torch.randn(1, 8000) * 0.1
    padded = torch.cat([a, torch.zeros(1, 3000)], 1)
    f1, l1 = lm(a)
    f2, l2 = lm(torch.cat([padded, torch.randn(1, 11000) * 0.1]), torch.tensor([8000, 11000]))
    assert int(l2[0]) == int(l1[0])
    assert rel_err(f2[0, : int(l1[0])], f1[0]) < 1e-6
    assert float(f2[0, int(l1[0]) :].abs().max()) == 0.0


@pytest.mark.parametrize("frontend", ["linear", "conv"])
def test_chunked_encoder_equals_full(tiny_model_config, frontend: str) -> None:
    tiny_model_config.encoder.frontend = frontend
    torch.manual_seed(0)
    model64 = SpeechMamba(tiny_model_config).eval().double()
    feats = torch.randn(2, 88, 80, dtype=torch.float64)
    lengths = torch.tensor([88, 88])
    with torch.no_grad():
        full, _ = model64.encode(feats, lengths)
        state, logprobs = None, []
        for a, b in [(0, 4), (4, 24), (24, 28), (28, 88)]:  # multiples of the 4x subsampling
            out, state = model64.encode(feats[:, a:b], torch.tensor([b - a] * 2), state)
            logprobs.append(out.ctc_logprobs)
    assert rel_err(torch.cat(logprobs, 1), full.ctc_logprobs) < 1e-10


def test_right_padding_leaves_valid_encoder_outputs_unchanged(model64: SpeechMamba) -> None:
    feats = torch.randn(1, 60, 80, dtype=torch.float64)
    padded = torch.cat([feats, torch.randn(1, 40, 80, dtype=torch.float64)], 1)
    with torch.no_grad():
        a, _ = model64.encode(feats, torch.tensor([60]))
        b, _ = model64.encode(padded, torch.tensor([60]))
    assert int(a.ctc_lengths[0]) == int(b.ctc_lengths[0]) == 15
    assert rel_err(b.ctc_logprobs[:, :15], a.ctc_logprobs) < 1e-10


def _prefix(model: SpeechMamba, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    d = model.config.decoder.mamba.d_model
    prefix = torch.randn(batch, 9, d, generator=g, dtype=torch.float64)
    return prefix, torch.tensor([9, 5, 7][:batch])


def test_incremental_decoding_equals_full_forward(model64: SpeechMamba) -> None:
    """Prefill + one step per token gives the logits of one full pass, per item, in a ragged batch."""
    dec = model64.decoder
    prefix, lengths = _prefix(model64)
    prompts = [[5, 6], [], [9, 10, 11, 12]]
    tails = [[20, 21, 22, 23, 24, 25], [30, 31, 32, 33, 34, 35], [7, 7, 7, 8, 8, 8]]
    with torch.no_grad():
        x, _, bos = dec.assemble(prefix, lengths, prompts, tails, left_pad=False)
        hidden, _ = dec.mamba(x)
        logits, state = dec.prefill(prefix, lengths, prompts)
        steps = [logits]
        for j in range(6):
            steps.append(dec.step(torch.tensor([t[j] for t in tails]), state))
    incremental = torch.stack(steps, 1)
    for i in range(3):
        full = dec.head(hidden[i, int(bos[i]) : int(bos[i]) + 7])
        assert rel_err(incremental[i], full) < 1e-5


def test_left_padded_batch_equals_single_items(model64: SpeechMamba) -> None:
    dec = model64.decoder
    prefix, lengths = _prefix(model64)
    prompts = [[5, 6], [], [9, 10, 11, 12]]
    with torch.no_grad():
        batched, state = dec.prefill(prefix, lengths, prompts)
        for i in range(3):
            single, s = dec.prefill(prefix[i : i + 1], lengths[i : i + 1], prompts[i : i + 1])
            assert rel_err(batched[i], single[0]) < 1e-10
            assert rel_err(state.ssm[:, i], s.ssm[:, 0]) < 1e-10
            assert rel_err(state.conv[:, i], s.conv[:, 0]) < 1e-10


def test_right_padded_batch_from_carried_states_equals_single_items(model64: SpeechMamba) -> None:
    """Streaming layout: rows continue from different states with different chunk lengths."""
    stack = model64.decoder.mamba
    g = torch.Generator().manual_seed(5)
    d = model64.config.decoder.mamba.d_model
    from mambaserve.model.mamba import MambaState

    state = MambaState.zeros(model64.config.decoder.mamba, 3)
    state = MambaState(
        torch.randn(state.conv.shape, generator=g, dtype=torch.float64),
        torch.randn(state.ssm.shape, generator=g, dtype=torch.float64),
    )
    lengths = [7, 2, 5]
    x = torch.randn(3, 7, d, generator=g, dtype=torch.float64)
    mask = (torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]).double()
    with torch.no_grad():
        out, new = stack(x, state, mask=mask)
        for i, n in enumerate(lengths):
            ref_out, ref = stack(x[i : i + 1, :n], state.select(torch.tensor([i])))
            assert rel_err(out[i, :n], ref_out[0]) < 1e-10
            assert rel_err(new.ssm[:, i], ref.ssm[:, 0]) < 1e-10
            assert rel_err(new.conv[:, i], ref.conv[:, 0]) < 1e-10


def test_decoder_state_size_is_fixed(model64: SpeechMamba) -> None:
    dec = model64.decoder
    prefix, lengths = _prefix(model64, 1)
    with torch.no_grad():
        _, short = dec.prefill(prefix, lengths, [[4] * 3])
        _, long = dec.prefill(prefix, lengths, [[4] * 300])
    assert short.nbytes() == long.nbytes()


@pytest.mark.parametrize("min_chunk", [16, 2])
def test_scan_gradients_match_float64_finite_differences(
    monkeypatch: pytest.MonkeyPatch, min_chunk: int
) -> None:
    """Analytic backward of the CPU scan, in one chunk and across several (the gradient carry)."""
    from mambaserve.kernels import scan_cpu

    monkeypatch.setattr(scan_cpu, "_MIN_CHUNK", min_chunk)
    monkeypatch.setattr(scan_cpu, "_CHUNK_ELEMENTS", 1)
    torch.manual_seed(0)
    b, d, length, n = 1, 3, 6, 2
    args = [
        torch.randn(b, d, length),
        torch.randn(b, d, length),
        -torch.rand(d, n),
        torch.randn(b, n, length),
        torch.randn(b, n, length),
        torch.randn(d),
        torch.randn(b, d, length),
        torch.randn(d),
        torch.randn(b, d, n),
    ]
    args = [a.double().requires_grad_() for a in args]

    def f(u, dl, A, B, C, D, z, db, h0):
        return selective_scan_cpu(u, dl, A, B, C, D, z, db, True, True, h0)

    assert torch.autograd.gradcheck(f, args)


def _brute_force_prefix_prob(logprobs: torch.Tensor, prefix: list[int], blank: int) -> float:
    """Sum over every alignment whose collapsed labels start with ``prefix`` (tiny T, V only)."""
    import itertools

    t_len, vocab = logprobs.shape
    total = 0.0
    for path in itertools.product(range(vocab), repeat=t_len):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed[: len(prefix)] == prefix:
            total += float(torch.exp(sum(logprobs[t, c] for t, c in enumerate(path))))
    return total


def _brute_force_exact_prob(logprobs: torch.Tensor, labels: list[int], blank: int) -> float:
    import itertools

    t_len, vocab = logprobs.shape
    total = 0.0
    for path in itertools.product(range(vocab), repeat=t_len):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == labels:
            total += float(torch.exp(sum(logprobs[t, c] for t, c in enumerate(path))))
    return total


def test_ctc_prefix_scores_match_brute_force() -> None:
    torch.manual_seed(3)
    blank, eos, t_len, vocab = 0, 3, 5, 4  # labels 1, 2 (3 doubles as eos: never emitted by CTC here)
    logprobs = torch.log_softmax(torch.randn(t_len, vocab, dtype=torch.float64), -1)
    logprobs[:, eos] = -1e4
    logprobs = torch.log_softmax(logprobs, -1)
    # A batch of two hypotheses over the same posteriors, one of them padded in time (length 4).
    padded = torch.cat([logprobs[:4], torch.log_softmax(torch.randn(1, vocab, dtype=torch.float64), -1)])
    scorer = CTCPrefixScorer(torch.stack([logprobs, padded]).double(), torch.tensor([5, 4]), blank, eos)
    state = scorer.initial_state()
    cand = torch.tensor([[1, 2, eos], [1, 2, eos]])
    psi, r_n, r_b = scorer.score(state, cand)
    for row, lp in ((0, logprobs), (1, logprobs[:4])):
        for k, c in enumerate([1, 2]):
            assert abs(float(psi[row, k].exp()) - _brute_force_prefix_prob(lp, [c], blank)) < 1e-9
        assert abs(float(psi[row, 2].exp()) - _brute_force_exact_prob(lp, [], blank)) < 1e-9
    # Extend by label 1, then score "1 1", "1 2" and "1" + eos.
    state = CTCPrefixScorer.advance(state, torch.tensor([0, 1]), torch.tensor([0, 0]), cand, psi, r_n, r_b)
    psi2, _, _ = scorer.score(state, cand)
    for row, lp in ((0, logprobs), (1, logprobs[:4])):
        assert abs(float(psi2[row, 0].exp()) - _brute_force_prefix_prob(lp, [1, 1], blank)) < 1e-9
        assert abs(float(psi2[row, 1].exp()) - _brute_force_prefix_prob(lp, [1, 2], blank)) < 1e-9
        assert abs(float(psi2[row, 2].exp()) - _brute_force_exact_prob(lp, [1], blank)) < 1e-9


def test_ctc_greedy_collapses_repeats_and_blanks() -> None:
    path = torch.tensor([[0, 5, 5, 0, 5, 7, 7, 0]])
    logprobs = torch.nn.functional.one_hot(path, 9).float().log()
    assert ctc_greedy(logprobs, torch.tensor([8])) == [[5, 5, 7]]
    assert ctc_greedy(logprobs, torch.tensor([3])) == [[5]]


def test_beam_of_one_equals_greedy(model64: SpeechMamba) -> None:
    torch.manual_seed(0)
    feats = torch.randn(3, 64, 80, dtype=torch.float64)
    with torch.no_grad():
        enc, _ = model64.encode(feats, torch.tensor([64, 40, 52]))
        prompts = [[5], [], [6, 7]]
        greedy = greedy_search(model64.decoder, enc, prompts, [12, 12, 12], eos_id=3)
        beam = beam_search(model64.decoder, enc, prompts, [12, 12, 12], eos_id=3, blank_id=0, beam_size=1)
    assert greedy == beam
    assert all(len(g) <= 12 for g in greedy)


def test_decode_steps_reuse_A_until_A_log_changes(model64: SpeechMamba) -> None:
    """-exp(A_log) is kept between decode steps; optimizer steps, load_state_dict and dtype moves must
    show up in the next step, and training (autograd on) never sees a cached value."""
    block = model64.decoder.mamba.layers[0]
    with torch.no_grad():
        first = block._A()
        assert block._A() is first and torch.equal(first, -torch.exp(block.A_log.float()))
        block.A_log.add_(0.25)  # what an optimizer step does
        assert torch.equal(block._A(), -torch.exp(block.A_log.float()))
        saved = {k: v.clone() for k, v in block.state_dict().items()}
        saved["A_log"] -= 1.0
        block.load_state_dict(saved)
        assert torch.equal(block._A(), -torch.exp(block.A_log.float()))
    block.float()
    with torch.no_grad():
        assert torch.equal(block._A(), -torch.exp(block.A_log))
    with torch.enable_grad():
        assert block._A().requires_grad  # training: computed in the graph, gradients reach A_log
