"""Clients of the served `asr` model: audio loading, Python API, `mambaserve-transcribe`, `mambaserve-eval`.

Names are resolved lazily so that `import mambaserve.clients` (or `.audio`, `.metrics`) does not pull
in tritonclient.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_audio": "mambaserve.clients.audio",
    "AudioError": "mambaserve.clients.audio",
    "ASRClient": "mambaserve.clients.client",
    "AsyncASRClient": "mambaserve.clients.client",
    "Transcription": "mambaserve.clients.request",
    "ASRError": "mambaserve.clients.request",
    "ServerError": "mambaserve.clients.request",
    "ServerUnavailableError": "mambaserve.clients.request",
    "StreamingClient": "mambaserve.clients.streaming",
    "ChunkResult": "mambaserve.clients.streaming",
    "LiveStream": "mambaserve.clients.streaming",
    "SessionClient": "mambaserve.clients.session",
    "Session": "mambaserve.clients.session",
    "Generation": "mambaserve.clients.session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mambaserve.clients' has no attribute {name!r}")
