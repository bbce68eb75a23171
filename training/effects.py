"""Speaker and channel augmentation at synthesis time (sox + numpy), deterministic per item seed.

A chain is a short list of `Effect`s drawn by `sample_chain(rng)`; its text form (`chain_str`,
e.g. ``"warp:1.08,tempo:0.93,reverb:45:60:70:10,codec:gsm,noise:pink:18"``) is stored in the
manifest item's "effects" field and `parse_chain` reads it back, so any item can be rebuilt.
`apply_chain(audio, chain, seed)` runs it; the same audio, chain and seed give the same samples
(sox runs with ``-D -R``: no dither, default random numbers; numpy noise comes from `seed`).

Effects, in the order they are applied:

* speaker: ``warp:a`` vocal-tract-length / formant warping (sox ``speed a`` then ``tempo 1/a``:
  formants and pitch scale by a, the duration stays), ``pitch:c`` (cents), ``tempo:b`` (speaking rate).
* room: ``reverb:R:H:S:P`` (sox reverb: reverberance, HF damping, room scale, pre-delay ms).
* band: ``band:telephone`` (300–3400 Hz), ``band:lowpass:f``, ``band:highpass:f``.
* codec: ``codec:alaw``, ``codec:ulaw`` (8 kHz G.711), ``codec:gsm`` (8 kHz GSM 06.10),
  ``codec:mp3:k`` (k kbit/s, libsox-fmt-mp3), ``codec:vorbis:q`` (Ogg Vorbis quality q).
* noise: ``noise:white|pink|brown:snr`` (coloured noise at snr dB), ``babble:n:snr`` (n other
  synthetic utterances mixed at snr dB; the caller passes their audio as `babble`).

The output is float32 16 kHz mono, finite, with the input's duration give or take the codec's
padding (≤ 50 ms) and sox's rounding; the caller sets the final level.
"""

from __future__ import annotations

import math
import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .synth import SAMPLE_RATE

__all__ = ["DEFAULT_PROBS", "Effect", "apply_chain", "chain_str", "parse_chain", "sample_chain"]

# Probability of each stage in an augmented item (an augmented item has at least one effect).
# Ranges were set with Whisper tiny.en on clean piper / Pico clips (WER 4.6 %): each effect alone at
# its harshest setting here costs at most a few points (reverb 10.6 %, lowpass 3 kHz, telephone 9 %);
# harsher settings that were tried and dropped: mp3 at 8 kbit/s (47 %), white or pink noise at
# 5–10 dB SNR (40–63 %), babble at 8–15 dB (45–86 %). Noise levels: `_NOISE_MIN_SNR`.
DEFAULT_PROBS = {
    "warp": 0.5,
    "pitch": 0.25,
    "tempo": 0.3,
    "reverb": 0.25,
    "band": 0.2,
    "codec": 0.2,
    "noise": 0.3,
}
MAX_EFFECTS = 4
# Lowest SNR (dB) drawn per noise colour; at these levels Whisper tiny.en's WER on the clean clips
# went 4.6 % -> 23 % (white 20 dB), 27 % (pink 15 dB), 6.8 % (brown 10 dB), 22 % (babble of 3-6 at 20 dB).
_NOISE_MIN_SNR = {"white": 20, "pink": 15, "brown": 10}
_ORDER = ("warp", "pitch", "tempo", "reverb", "band", "codec", "noise", "babble")


@dataclass(frozen=True)
class Effect:
    kind: str
    params: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ":".join((self.kind, *self.params))


def chain_str(chain: Sequence[Effect]) -> str:
    return ",".join(map(str, chain))


def parse_chain(text: str) -> list[Effect]:
    chain = []
    for part in filter(None, text.split(",")):
        kind, *params = part.split(":")
        if kind not in _ORDER:
            raise ValueError(f"parse_chain: unknown effect {kind!r} in {text!r}")
        chain.append(Effect(kind, tuple(params)))
    return chain


def _f(x: float, nd: int = 3) -> str:
    return f"{round(x, nd):g}"


def sample_chain(rng: random.Random, probs: dict[str, float] | None = None) -> list[Effect]:
    """A random augmentation chain with 1 to `MAX_EFFECTS` effects."""
    probs = {**DEFAULT_PROBS, **(probs or {})}
    while True:
        chain: list[Effect] = []
        if rng.random() < probs["warp"]:
            chain.append(Effect("warp", (_f(rng.uniform(0.86, 1.16)),)))
        if rng.random() < probs["pitch"]:
            chain.append(Effect("pitch", (str(rng.choice((-1, 1)) * rng.randint(80, 350)),)))
        if rng.random() < probs["tempo"]:
            chain.append(Effect("tempo", (_f(rng.uniform(0.85, 1.18)),)))
        if rng.random() < probs["reverb"]:
            chain.append(
                Effect(
                    "reverb",
                    tuple(str(rng.randint(a, b)) for a, b in ((15, 85), (20, 80), (20, 100), (0, 25))),
                )
            )
        if rng.random() < probs["band"]:
            kind = rng.choice(("telephone", "lowpass", "lowpass", "highpass"))
            if kind == "telephone":
                chain.append(Effect("band", ("telephone",)))
            elif kind == "lowpass":
                chain.append(Effect("band", ("lowpass", str(rng.choice((3000, 3500, 4000, 5000, 6000))))))
            else:
                chain.append(Effect("band", ("highpass", str(rng.choice((150, 200, 300, 400))))))
        if rng.random() < probs["codec"]:
            kind = rng.choice(("alaw", "ulaw", "gsm", "gsm", "mp3", "mp3", "vorbis"))
            if kind == "mp3":
                chain.append(Effect("codec", ("mp3", str(rng.choice((16, 24, 32, 48))))))
            elif kind == "vorbis":
                chain.append(Effect("codec", ("vorbis", str(rng.choice((-1, 0, 1))))))
            else:
                chain.append(Effect("codec", (kind,)))
        if rng.random() < probs["noise"]:
            if rng.random() < 0.35:
                chain.append(Effect("babble", (str(rng.randint(3, 6)), str(rng.randint(20, 35)))))
            else:
                color = rng.choice(("white", "pink", "pink", "brown", "brown"))
                chain.append(Effect("noise", (color, str(rng.randint(_NOISE_MIN_SNR[color], 40)))))
        if 0 < len(chain) <= MAX_EFFECTS:
            return chain


# ---- application ----------------------------------------------------------------------------------
def _sox(audio: np.ndarray, effects: list[str], out_rate: int = SAMPLE_RATE) -> np.ndarray:
    raw = ["-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1"]
    out = subprocess.run(
        [
            "sox",
            "-q",
            "-D",
            "-R",
            "-V1",
            *raw,
            "-",
            "-t",
            "f32",
            "-r",
            str(out_rate),
            "-c",
            "1",
            "-",
            *effects,
        ],
        input=np.ascontiguousarray(audio, dtype="<f4").tobytes(),
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


def _sox_effects(chain: Sequence[Effect]) -> list[str]:
    """The speaker, room and band stages as one sox effects list."""
    args: list[str] = []
    for e in chain:
        p = e.params
        if e.kind == "warp":
            a = float(p[0])
            args += ["speed", _f(a, 4), "rate", "-v", str(SAMPLE_RATE), "tempo", "-s", _f(1 / a, 4)]
        elif e.kind == "pitch":
            args += ["pitch", p[0], "rate", "-v", str(SAMPLE_RATE)]
        elif e.kind == "tempo":
            args += ["tempo", "-s", p[0]]
        elif e.kind == "reverb":
            args += ["reverb", *p[:3], p[3]]
        elif e.kind == "band":
            if p[0] == "telephone":
                args += ["sinc", "300-3400"]
            elif p[0] == "lowpass":
                args += ["sinc", f"-{p[1]}"]
            elif p[0] == "highpass":
                args += ["sinc", p[1]]
            else:
                raise ValueError(f"unknown band {p}")
    return args


_CODECS = {
    "alaw": (["-t", "wav", "-r", "8000", "-e", "a-law", "-b", "8"], "wav"),
    "ulaw": (["-t", "wav", "-r", "8000", "-e", "u-law", "-b", "8"], "wav"),
    "gsm": (["-t", "gsm", "-r", "8000"], "gsm"),
}


def _codec(audio: np.ndarray, params: tuple[str, ...]) -> np.ndarray:
    kind = params[0]
    if kind in _CODECS:
        enc, dec_type = _CODECS[kind]
    elif kind == "mp3":
        enc, dec_type = ["-t", "mp3", "-C", params[1]], "mp3"
    elif kind == "vorbis":
        enc, dec_type = ["-t", "vorbis", "-C", params[1]], "vorbis"
    else:
        raise ValueError(f"unknown codec {kind!r}")
    raw = ["-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1"]
    x = np.clip(audio, -1.0, 1.0)  # a codec input must be in range
    coded = subprocess.run(
        ["sox", "-q", "-D", "-R", "-V1", *raw, "-", "-c", "1", *enc, "-"],
        input=np.ascontiguousarray(x, dtype="<f4").tobytes(),
        capture_output=True,
        check=True,
    ).stdout
    out = subprocess.run(
        ["sox", "-q", "-D", "-R", "-V1", "-t", dec_type, "-", *raw, "-"],
        input=coded,
        capture_output=True,
        check=True,
    ).stdout
    y = np.frombuffer(out, dtype="<f4").astype(np.float32)
    # Keep the utterance's length: drop the decoder's tail padding, zero-pad a short read.
    return y[: len(audio)] if len(y) >= len(audio) else np.pad(y, (0, len(audio) - len(y)))


def coloured_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f^k power spectrum (white k=0, pink k=1, brown k=2)."""
    k = {"white": 0.0, "pink": 1.0, "brown": 2.0}[color]
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    spec *= (np.maximum(f, 20.0)) ** (-k / 2)
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    s, n = _rms(speech), _rms(noise)
    if s == 0 or n == 0:
        return speech
    return (speech + noise * (s / (n * 10 ** (snr_db / 20)))).astype(np.float32)


def _babble(n: int, talkers: int, bank: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    if not bank:
        raise ValueError("babble effect needs a non-empty babble bank")
    out = np.zeros(n, np.float32)
    for _ in range(talkers):
        clip = bank[int(rng.integers(len(bank)))]
        clip = clip / (_rms(clip) + 1e-9)
        reps = math.ceil((n + len(clip)) / max(len(clip), 1)) + 1
        loop = np.tile(clip, reps)
        start = int(rng.integers(len(clip)))
        out += loop[start : start + n]
    return out


def apply_chain(
    audio: np.ndarray, chain: Sequence[Effect], seed: int, babble: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Run `chain` on float32 16 kHz `audio`; deterministic for (audio, chain, seed, babble)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"apply_chain: expected non-empty 1-D audio, got shape {x.shape}")
    chain = sorted(chain, key=lambda e: _ORDER.index(e.kind))
    # Work at a common level so that reverb and codecs behave alike whatever the voice's loudness.
    x = x * np.float32(0.5 / (float(np.abs(x).max()) + 1e-9))
    sox_args = _sox_effects([e for e in chain if e.kind in ("warp", "pitch", "tempo", "reverb", "band")])
    if sox_args:
        x = _sox(x, sox_args)
        x = x * np.float32(0.5 / (float(np.abs(x).max()) + 1e-9))
    rng = np.random.default_rng(seed)
    for e in chain:
        if e.kind == "codec":
            x = _codec(x, e.params)
        elif e.kind == "noise":
            x = _mix_at_snr(x, coloured_noise(len(x), e.params[0], rng), float(e.params[1]))
        elif e.kind == "babble":
            x = _mix_at_snr(x, _babble(len(x), int(e.params[0]), babble, rng), float(e.params[1]))
    if not np.isfinite(x).all():
        raise RuntimeError(f"apply_chain: non-finite output for {chain_str(chain)}")
    return x.astype(np.float32)
