"""What the sync and async clients share: request tensors, response parsing, error translation.

Kept apart from the client classes so that HTTP, gRPC, sync and async build byte-identical requests
and report failures the same way.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from mambaserve.clients.audio import AudioSource, load_audio
from mambaserve.contract import spec
from tritonclient.utils import InferenceServerException

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
AFFINITY_HEADER = "x-mambaserve-affinity"
"""Sent with every sequence / session request: a front with several replicas (mambaserve.serving.front)
hashes on it, so that all requests of one sequence reach the replica that holds its state."""

AudioInput = np.ndarray | AudioSource


@dataclass(frozen=True)
class Transcription:
    """One transcript with the time the server round trip took (audio loading excluded)."""

    text: str
    latency_s: float
    audio_seconds: float

    @property
    def rtfx(self) -> float:
        """Seconds of audio transcribed per wall-clock second of this request."""
        return self.audio_seconds / self.latency_s if self.latency_s > 0 else float("inf")


class ASRError(RuntimeError):
    """Base class of the errors the mambaserve clients raise about the server."""


class ServerError(ASRError):
    """The server received the request and refused it; `server_message` is its own explanation."""

    def __init__(self, server_message: str, *, status: str | None, model: str, url: str):
        self.server_message = server_message
        self.status = status
        self.model = model
        self.url = url
        where = f"model '{model}' at {url}"
        code = f" [{status}]" if status else ""
        super().__init__(f"{where} rejected the request{code}: {server_message}")


class ServerUnavailableError(ASRError):
    """The server could not be reached, or did not answer within the timeout."""


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def prepare_audio(audio: AudioInput) -> np.ndarray:
    """A 1-D float32 array at spec.SAMPLE_RATE, from an array already in that form or from a file."""
    if not isinstance(audio, np.ndarray):
        return load_audio(audio, spec.SAMPLE_RATE)
    if audio.ndim == 2 and audio.shape[0] == 1:
        audio = audio[0]
    if audio.ndim != 1:
        raise ValueError(
            f"audio must be a 1-D array of {spec.SAMPLE_RATE} Hz mono samples, "
            f"got shape {audio.shape} (use load_audio() to downmix a file)"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"audio must be floating point in [-1, 1], got dtype {audio.dtype} "
            "(divide int16 PCM by 32768, or use load_audio())"
        )
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    return audio


def expand_prompts(prompt: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    """One prompt for every item: a single prompt (or None) applies to all of them."""
    if prompt is None or isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if len(prompts) != n:
        raise ValueError(f"prompt has {len(prompts)} entries for {n} audio items; pass one per item")
    return prompts


def build_request(module: ModuleType, audio: np.ndarray, prompt: str | None) -> tuple[list, list]:
    """Inputs and requested outputs for one `asr` request; `module` is tritonclient.http or .grpc."""
    audio_in = module.InferInput(spec.AUDIO.name, [1, int(audio.shape[0])], spec.AUDIO.wire_dtype)
    audio_in.set_data_from_numpy(audio[None, :])
    inputs = [audio_in]
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str or None, got {type(prompt).__name__}")
        prompt_in = module.InferInput(spec.PROMPT.name, [1, 1], spec.PROMPT.wire_dtype)
        prompt_in.set_data_from_numpy(np.array([[prompt.encode("utf-8")]], dtype=np.object_))
        inputs.append(prompt_in)
    return inputs, [module.InferRequestedOutput(spec.TRANSCRIPT.name)]


def parse_response(result, *, model: str, url: str) -> str:
    """The UTF-8 transcript of an InferResult."""
    out = result.as_numpy(spec.TRANSCRIPT.name)
    if out is None or out.size != 1:
        shape = None if out is None else out.shape
        raise ServerError(
            f"response has no single {spec.TRANSCRIPT.name} string (got {shape})",
            status=None,
            model=model,
            url=url,
        )
    value = out.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}


def translate_error(
    exc: BaseException, *, model: str, url: str, protocol: str, timeout: float | None
) -> BaseException:
    """Map tritonclient / transport exceptions onto ServerError or ServerUnavailableError."""
    if isinstance(exc, InferenceServerException):
        status = exc.status()
        if "RST_STREAM" in (exc.message() or ""):
            # A proxy (the front) cut the stream: the replica that served it went away mid-sequence.
            return ServerUnavailableError(
                f"{protocol} server at {url}: the stream was cut before its answer (the server behind "
                f"it went away; start the sequence again): {exc.message()}"
            )
        if status in _UNAVAILABLE:
            kind = "timed out" if status == "StatusCode.DEADLINE_EXCEEDED" else "is unreachable"
            return ServerUnavailableError(
                f"{protocol} server at {url} {kind} (timeout {timeout} s): {exc.message()}"
            )
        return ServerError(exc.message() or str(exc), status=status, model=model, url=url)
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return ServerUnavailableError(f"{protocol} server at {url} timed out after {timeout} s")
    if isinstance(exc, OSError) or _is_aiohttp_error(exc) or _is_gevent_timeout(exc):
        detail = str(exc) or type(exc).__name__
        return ServerUnavailableError(f"{protocol} server at {url} is unreachable: {detail}")
    return exc


def _is_aiohttp_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        return False
    return isinstance(exc, aiohttp.ClientError)


def _is_gevent_timeout(exc: BaseException) -> bool:
    try:
        import gevent
    except ImportError:  # pragma: no cover - gevent comes with tritonclient[http]
        return False
    return isinstance(exc, gevent.Timeout)


def source_name(item: AudioInput) -> str:
    """How an item is named in messages: its path, or a description of the array/bytes."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, np.ndarray):
        return f"<array {item.shape}>"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    return repr(item)
