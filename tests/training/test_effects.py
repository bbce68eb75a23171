"""Speaker / channel augmentation: deterministic, finite, sane lengths and levels, SNR as asked."""

from __future__ import annotations

import random

import numpy as np
import pytest
from mambaserve.training import effects as E
from mambaserve.training.synth import EspeakVoice
from mambaserve.training.voices import render

CHAINS = [
    "warp:0.86",
    "warp:1.16",
    "pitch:-300",
    "pitch:250",
    "tempo:0.85",
    "tempo:1.18",
    "reverb:85:80:100:25",
    "band:telephone",
    "band:lowpass:3000",
    "band:highpass:300",
    "codec:alaw",
    "codec:ulaw",
    "codec:gsm",
    "codec:mp3:8",
    "codec:mp3:32",
    "codec:vorbis:-1",
    "noise:white:5",
    "noise:pink:15",
    "noise:brown:30",
    "babble:3:10",
    "warp:1.08,pitch:-150,tempo:0.93,reverb:45:60:70:10,band:telephone,codec:gsm,noise:pink:18",
]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return render(EspeakVoice("en-us", "m3", 160, 50), "the quick brown fox jumps over the lazy dog")


@pytest.fixture(scope="module")
def bank() -> list[np.ndarray]:
    return [render(EspeakVoice("en-gb", "f2", 170, 60), "another talker says something else")]


@pytest.mark.parametrize("chain", CHAINS)
def test_chain_is_deterministic_finite_and_sane(
    chain: str, speech: np.ndarray, bank: list[np.ndarray]
) -> None:
    parsed = E.parse_chain(chain)
    assert E.chain_str(parsed) == chain
    y1 = E.apply_chain(speech, parsed, seed=7, babble=bank)
    y2 = E.apply_chain(speech, parsed, seed=7, babble=bank)
    assert np.array_equal(y1, y2)
    assert y1.dtype == np.float32 and np.isfinite(y1).all()
    tempo = np.prod([float(e.params[0]) for e in parsed if e.kind == "tempo"] or [1.0])
    assert len(y1) == pytest.approx(len(speech) / tempo, rel=0.03)
    assert 0.05 < float(np.abs(y1).max()) < 2.0
    assert float(np.sqrt(np.mean(y1**2))) > 0.005


def test_noise_depends_on_the_seed(speech: np.ndarray) -> None:
    chain = E.parse_chain("noise:white:10")
    assert not np.array_equal(E.apply_chain(speech, chain, 1), E.apply_chain(speech, chain, 2))


@pytest.mark.parametrize("snr", [5.0, 20.0])
def test_noise_is_mixed_at_the_asked_snr(snr: float) -> None:
    t = np.arange(16_000) / 16_000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = E.apply_chain(tone, E.parse_chain(f"noise:pink:{snr:g}"), seed=3)
    scaled = tone * np.float32(0.5 / np.abs(tone).max())  # the chain works at peak 0.5
    noise = y - scaled
    measured = 10 * np.log10(np.mean(scaled.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert measured == pytest.approx(snr, abs=0.1)


def test_coloured_noise_spectra() -> None:
    rng = np.random.default_rng(0)
    spectra = {}
    for color in ("white", "pink", "brown"):
        x = E.coloured_noise(32_000, color, rng)
        assert np.sqrt(np.mean(x**2)) == pytest.approx(1.0, rel=1e-3)
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / 16_000)
        spectra[color] = p[(f > 100) & (f < 500)].mean() / p[(f > 4000) & (f < 8000)].mean()
    assert spectra["white"] < 2 < spectra["pink"] < spectra["brown"]


def test_sample_chain() -> None:
    a = [E.chain_str(E.sample_chain(random.Random(5))) for _ in range(3)]
    assert len(set(a)) == 1  # same rng seed, same chain
    rng = random.Random(0)
    chains = [E.sample_chain(rng) for _ in range(2000)]
    assert all(0 < len(c) <= E.MAX_EFFECTS for c in chains)
    kinds = {e.kind for c in chains for e in c}
    assert kinds == {"warp", "pitch", "tempo", "reverb", "band", "codec", "noise", "babble"}
    for c in chains:
        assert E.parse_chain(E.chain_str(c)) == c
    with pytest.raises(ValueError, match="unknown effect"):
        E.parse_chain("flanger:1")
