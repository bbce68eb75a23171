"""Real speech for load: clips from a JSONL manifest (the shipped samples or a corpus), decoded once.

Load generators must not decode audio inside the timed loop, so every clip is read into memory up
front as 16 kHz float32. `clip_of_length` builds a clip of an exact duration from real speech (the
benchmark's "5 s clip").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from mambaserve.contract import spec
from mambaserve.loadtest import CHECKOUT

SAMPLES_MANIFEST = Path(str(resources.files("mambaserve.clients") / "samples" / "samples.jsonl"))
"""The sample clips shipped as the clients package's data."""
CORPUS_MANIFEST = CHECKOUT / "data" / "corpus" / "test_espeak.jsonl"


@dataclass(frozen=True)
class Clip:
    id: str
    audio: np.ndarray  # float32, 16 kHz mono
    text: str
    prompt: str | None = None

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / spec.SAMPLE_RATE


def default_manifest() -> Path:
    """A corpus test manifest when the corpus was generated (`make data`), else the shipped samples."""
    return CORPUS_MANIFEST if CORPUS_MANIFEST.is_file() else SAMPLES_MANIFEST


def load_clips(
    manifest: str | Path | None = None, limit: int | None = None, prompts: bool = True, seed: int = 0
) -> list[Clip]:
    """The manifest's clips (a seeded random `limit` of them), decoded; errors name the line/field."""
    from mambaserve.clients.audio import load_audio
    from mambaserve.clients.evaluate import read_manifest

    entries = read_manifest(manifest or default_manifest(), prompt_field="prompt" if prompts else None)
    if not entries:
        raise ValueError(f"manifest {manifest} has no clips")
    if limit is not None and limit < len(entries):
        entries = random.Random(seed).sample(entries, limit)
    return [Clip(e.id, load_audio(e.audio, spec.SAMPLE_RATE), e.text, e.prompt) for e in entries]


def clip_of_length(clips: list[Clip], seconds: float) -> np.ndarray:
    """`seconds` of real speech: clips joined end to end (0.2 s of silence between), cut to length."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    n = round(seconds * spec.SAMPLE_RATE)
    gap = np.zeros(int(0.2 * spec.SAMPLE_RATE), np.float32)
    parts, total, i = [], 0, 0
    while total < n:
        audio = clips[i % len(clips)].audio
        parts += [audio, gap]
        total += audio.shape[0] + gap.shape[0]
        i += 1
    return np.concatenate(parts)[:n].astype(np.float32)
