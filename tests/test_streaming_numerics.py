"""Model-side primitives the streaming server relies on, in float64 against one-shot references.

- a decode step addressed into a slot pool (``slots=``) equals a step on a separate state and
  touches no other slot;
- a masked (right-padded) encoder batch continues each row exactly from its carried state.
"""

from __future__ import annotations

import pytest
import torch
from mambaserve.training.config import ModelConfig
from mambaserve.training.mamba import MambaState
from mambaserve.training.model import SpeechMamba


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def model() -> SpeechMamba:
    from mambaserve.training.config import BridgeConfig, DecoderConfig, EncoderConfig, MambaConfig

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
    return MambaState(torch.randn(z.conv.shape, generator=g, dtype=torch.float64),
                      torch.randn(z.ssm.shape, generator=g, dtype=torch.float64))  # fmt: skip


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
                assert torch.equal(new.ssm[:, i], state.ssm[:, i]) and torch.equal(new.conv[:, i], state.conv[:, i])
                continue
            ref, _, ref_state = enc(feats[i : i + 1, : n * s], torch.tensor([n * s]), state.select(torch.tensor([i])))
            assert rel_err(frames[i, :n], ref[0]) < 1e-10
            assert rel_err(new.ssm[:, i], ref_state.ssm[:, 0]) < 1e-10
            assert rel_err(new.conv[:, i], ref_state.conv[:, 0]) < 1e-10
