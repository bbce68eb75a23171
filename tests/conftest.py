"""Session fixtures shared by every test area: a checkpoint, a model repository built from it with the
real build command, and a real tritonserver serving it on free ports.

    checkpoint_dir     checkpoints/default if it exists, else a randomly initialised checkpoint (tmp)
    build_output       stdout+stderr of `python -m mambaserve.build` that built `model_repository`
    model_repository   the built repository (tmp), one version per model
    triton_server      a started TritonServer: .http_url, .grpc_url ("127.0.0.1:PORT"), .metrics_url,
                       .repository, .log_path; stopped at the end of the session
    recognizer         the in-process reference (mambaserve.model.recognizer.Recognizer)
    speech_clips       a few espeak-ng sentences at 16 kHz: list of (text, float32 audio)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default"

SENTENCES = (
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven",
    "serving state space models on triton",
    "please call stella and ask her to bring these things",
)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    if (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        return DEFAULT_CHECKPOINT
    from mambaserve.model.checkpoint import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("checkpoint") / "random", seed=0)


@pytest.fixture(scope="session")
def _built(checkpoint_dir, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("repo") / "model_repository"
    proc = subprocess.run(
        [sys.executable, "-m", "mambaserve.build", "--checkpoint", str(checkpoint_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"`python -m mambaserve.build` failed (exit {proc.returncode}):\n{output[-4000:]}")
    return out, output


@pytest.fixture(scope="session")
def model_repository(_built) -> Path:
    return _built[0]


@pytest.fixture(scope="session")
def build_output(_built) -> str:
    return _built[1]


@pytest.fixture(scope="session")
def triton_server(model_repository, tmp_path_factory):
    from mambaserve.serving.server import TritonServer, free_port

    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    server = TritonServer(
        model_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=log,
        startup_timeout=600,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def recognizer(checkpoint_dir):
    from mambaserve.model.recognizer import Recognizer

    return Recognizer(checkpoint_dir)


def espeak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32 in [-1, 1]."""
    import io

    import soundfile as sf
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True
    ).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sr != 16_000:
        audio = soxr.resample(audio, sr, 16_000).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)


@pytest.fixture(scope="session")
def speech_clips() -> list[tuple[str, np.ndarray]]:
    voices = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-us+m3")
    return [(text, espeak(text, voice)) for text, voice in zip(SENTENCES, voices)]
