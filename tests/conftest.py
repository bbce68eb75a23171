"""Session fixtures shared by every test area (helpers that are not fixtures: tests/helpers.py).

    checkpoint_dir     checkpoints/default if it exists, else a randomly initialised checkpoint (tmp)
    build_output       stdout+stderr of `python -m mambaserve.build` that built `model_repository`
    model_repository   the built repository (tmp), one version per model
    triton_server      a started TritonServer: .http_url, .grpc_url ("127.0.0.1:PORT"), .metrics_url,
                       .repository, .log_path; stopped at the end of the session
    grpc_client        a tritonclient.grpc client of triton_server
    recognizer         the in-process reference (mambaserve.model.recognizer.Recognizer)
    speech_clips       a few espeak-ng sentences at 16 kHz: list of (text, float32 audio)
    tiny_model_config  a small ModelConfig with odd sizes (model and training tests)

Tests mirror the layers: tests/contract, kernels, model, training, serving, build, clients,
loadtest, deploy, demo.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
from mambaserve.model.config import MambaConfig, ModelConfig

SENTENCES = (
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven",
    "serving state space models on triton",
    "please call stella and ask her to bring these things",
)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    if (helpers.CHECKPOINT / "model.safetensors").exists():
        return helpers.CHECKPOINT
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
        cwd=helpers.ROOT,
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
    server = helpers.server(model_repository, log_path=tmp_path_factory.mktemp("server") / "tritonserver.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def grpc_client(triton_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def recognizer(checkpoint_dir):
    from mambaserve.model.recognizer import Recognizer

    return Recognizer(checkpoint_dir)


@pytest.fixture(scope="session")
def speech_clips() -> list[tuple[str, np.ndarray]]:
    voices = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-us+m3")
    return [(text, helpers.espeak(text, voice)) for text, voice in zip(SENTENCES, voices)]


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    """Odd sizes on purpose: non-power-of-two widths and state sizes."""
    cfg = ModelConfig()
    cfg.encoder.mamba = MambaConfig(d_model=24, n_layers=2, d_state=5, d_conv=4, expand=2)
    cfg.decoder.mamba = MambaConfig(d_model=28, n_layers=2, d_state=6, d_conv=3, expand=2)
    cfg.vocab_size = 40
    return cfg
