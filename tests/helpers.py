"""What the tests share besides fixtures (those are in tests/conftest.py): paths, the error measure,
speech, servers on free ports, readiness and metrics. Imported as `helpers` (pytest's `pythonpath`)."""

from __future__ import annotations

import io
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mambaserve.clients.metrics import Samples, scrape
from mambaserve.contract import spec
from mambaserve.serving.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "default"
REPOSITORY = ROOT / "model_repository"


def rel_err(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64, for tensors or arrays (shapes must agree)."""
    a = torch.as_tensor(np.asarray(actual.detach() if isinstance(actual, torch.Tensor) else actual)).double()
    e = torch.as_tensor(
        np.asarray(expected.detach() if isinstance(expected, torch.Tensor) else expected)
    ).double()
    assert a.shape == e.shape, (tuple(a.shape), tuple(e.shape))
    return float((a - e).norm() / e.norm().clamp_min(1e-300))


def espeak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32 in [-1, 1]."""
    import soundfile as sf
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True
    ).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sr != spec.SAMPLE_RATE:
        audio = soxr.resample(audio, sr, spec.SAMPLE_RATE).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)


def ports() -> dict[str, int]:
    """Free HTTP, gRPC and metrics ports, as TritonServer's keyword arguments."""
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def server(repository, **kwargs) -> TritonServer:
    """A TritonServer on free ports (not started; use it as a context manager), patient at start-up."""
    kwargs.setdefault("startup_timeout", 600)
    return TritonServer(repository, **ports(), **kwargs)


def metrics(server: TritonServer) -> Samples:
    """The server's /metrics, parsed (see mambaserve.clients.metrics)."""
    return scrape(server.metrics_url)


def is_ready(server: TritonServer, path: str = "/v2/health/ready") -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    """True as soon as `predicate()` is; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
