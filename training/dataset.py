"""A torch Dataset over manifest items, and the collate function that pads a batch.

Audio is returned as float32 in [-1, 1], mono, 16 kHz: what the served models take (mambaserve.contract.spec).
Tokenisation is left to the training code, so texts and prompts stay strings here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from .manifest import SAMPLE_RATE, load_manifest

__all__ = ["ManifestDataset", "collate_audio", "load_audio"]


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 mono samples in [-1, 1]. Multi-channel audio is averaged; another rate is an error
    (resampling silently would hide a data problem the manifest check should have caught)."""
    # Always decode as float32: soundfile's int16 read of a float WAV returns zeros.
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise ValueError(f"load_audio: {path} has sample rate {sr} Hz, need {sample_rate} Hz")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


class ManifestDataset(torch.utils.data.Dataset):
    """Items: {"id", "audio" (1-D float32 tensor), "text", "prompt" ("" if none), "hotwords" (list)}.

    Built from a manifest path (validated: bad items are counted, logged and skipped; see
    `self.report`) or from already validated items.
    """

    def __init__(self, source: str | Path | Sequence[dict[str, Any]], sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.report = None
        if isinstance(source, str | Path):
            self.items, self.report = load_manifest(source, sample_rate=sample_rate)
        else:
            self.items = list(source)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def durations(self) -> list[float]:
        """Per-item seconds, for `BucketBatchSampler`."""
        return [float(it["duration"]) for it in self.items]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {
            "id": item["id"],
            "audio": torch.from_numpy(load_audio(item["audio"], self.sample_rate)),
            "text": item["text"],
            "prompt": item.get("prompt") or "",
            "hotwords": list(item.get("hotwords") or []),
        }


def collate_audio(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of dataset items into {"audio": [B, N] float32 (zero-padded), "audio_lengths": [B]
    int64, "ids", "texts", "prompts", "hotwords": lists}."""
    if not batch:
        raise ValueError("collate_audio: empty batch")
    lengths = torch.tensor([int(b["audio"].shape[0]) for b in batch], dtype=torch.int64)
    audio = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)
    for i, b in enumerate(batch):
        if b["audio"].dim() != 1:
            raise ValueError(
                f"collate_audio: item {b['id']!r} audio must be 1-D, got shape {tuple(b['audio'].shape)}"
            )
        audio[i, : b["audio"].shape[0]] = b["audio"]
    return {
        "ids": [b["id"] for b in batch],
        "audio": audio,
        "audio_lengths": lengths,
        "texts": [b["text"] for b in batch],
        "prompts": [b.get("prompt") or "" for b in batch],
        "hotwords": [list(b.get("hotwords") or []) for b in batch],
    }
