"""Turn an audio file (or its bytes) into what the `asr` model takes: float32 mono in [-1, 1] at 16 kHz.

The server only accepts 16 kHz mono, so every client-side caller that starts from a file (the CLI, the
evaluation client, the load tests) goes through this one function instead of each resampling on its own.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
from mambaserve.contract.spec import SAMPLE_RATE

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class AudioError(ValueError):
    """An audio file could not be read or holds no usable samples."""


def _describe(source: AudioSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return repr(getattr(source, "name", source))


def load_audio(path_or_bytes: AudioSource, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read WAV/FLAC (anything libsndfile reads), downmix to mono, resample to `target_sr`.

    Returns a contiguous float32 array in [-1, 1]. Raises FileNotFoundError for a missing path and
    AudioError for a file that is not decodable audio, is empty, or holds NaN/inf samples.
    """
    if not isinstance(target_sr, (int, np.integer)) or target_sr <= 0:
        raise ValueError(f"target_sr must be a positive integer number of Hz, got {target_sr!r}")
    source = path_or_bytes
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"audio file not found: {name}")
        if os.path.isdir(source):
            raise AudioError(f"audio path is a directory, not a file: {name}")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        # Always decode as float32: asking libsndfile for int16 from a float WAV silently gives zeros.
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(
            f"cannot decode audio {name}: {exc} (expected WAV, FLAC or another format libsndfile reads)"
        ) from exc
    if data.shape[0] == 0:
        raise AudioError(f"audio {name} has no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio {name} contains NaN or infinite samples")
    mono = data.mean(axis=1, dtype=np.float64) if data.shape[1] > 1 else data[:, 0].astype(np.float64)
    if sr != target_sr:
        mono = soxr.resample(mono, sr, int(target_sr), quality="HQ")
    # Float files may exceed full scale and resampling can overshoot slightly; the model's contract is [-1, 1].
    return np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32)
