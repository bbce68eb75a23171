"""Log-mel features: one implementation for training, serving and streaming.

Frames are taken without centring or padding: frame ``i`` covers samples ``[hop*i, hop*i + win)``.
So a frame depends only on its own samples, and a streaming front end that buffers the leftover
samples of each chunk produces exactly the offline frames. Normalisation uses global per-bin
statistics stored in the checkpoint (never per-utterance statistics, which streaming cannot know).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mambaserve.model.config import FeatureConfig, ModelConfig
from safetensors.torch import load_file
from torch import Tensor, nn


def num_frames(num_samples: Tensor | int, config: FeatureConfig) -> Tensor | int:
    """Frames produced from ``num_samples`` samples (0 when shorter than one window)."""
    if isinstance(num_samples, Tensor):
        return torch.clamp_min((num_samples - config.win_length) // config.hop_length + 1, 0)
    return max(0, (num_samples - config.win_length) // config.hop_length + 1)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    return np.where(
        hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear
    )


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), (200.0 / 3) * mel)


def mel_filterbank(config: FeatureConfig) -> Tensor:
    """[n_mels, n_fft // 2 + 1] Slaney-normalised triangular mel filters on Slaney's mel scale.

    The same filters as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (its defaults
    ``htk=False, norm="slaney"``), computed the way librosa does, in numpy (tested against librosa
    to float32 rounding): the filterbank is all the feature extractor took from librosa, which
    would otherwise load numba, scipy and llvmlite (~320 MB) into every serving stub.
    """
    n_freqs = config.n_fft // 2 + 1
    fft_freqs = np.linspace(0.0, config.sample_rate / 2, n_freqs)
    mel_edges = np.linspace(_hz_to_mel(config.f_min), _hz_to_mel(config.f_max), config.n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    weights = np.zeros((config.n_mels, n_freqs), dtype=np.float32)
    for i in range(config.n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]  # equal area per filter (Slaney)
    return torch.from_numpy(weights)


def dft_basis(config: FeatureConfig, window: Tensor, blocks: int) -> Tensor:
    """[hop, blocks * 2 * bins]: block j's rows of the windowed real DFT (cos | -sin), side by side."""
    n, bins = config.n_fft, config.n_fft // 2 + 1
    if config.win_length > n:
        raise ValueError(f"features.win_length ({config.win_length}) must not exceed n_fft ({n})")
    t = torch.arange(config.win_length, dtype=torch.float64)[:, None]
    angle = t * torch.arange(bins, dtype=torch.float64)[None, :] * (2 * torch.pi / n)
    w = window.double()[:, None]
    basis = torch.cat([torch.cos(angle) * w, -torch.sin(angle) * w], dim=1)  # [win, 2 * bins]
    basis = torch.nn.functional.pad(basis, (0, 0, 0, blocks * config.hop_length - config.win_length))
    hop = config.hop_length
    return torch.cat([basis[j * hop : (j + 1) * hop] for j in range(blocks)], dim=1).float()


class LogMel(nn.Module):
    """Audio [B, N] (16 kHz float in [-1, 1]) -> normalised log-mel [B, T, n_mels]."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=True), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(config), persistent=False)
        self.dft_blocks = -(-config.win_length // config.hop_length)
        self.register_buffer("dft_basis", dft_basis(config, self.window, self.dft_blocks), persistent=False)
        # Normalisation statistics are part of the checkpoint.
        self.register_buffer("mean", torch.zeros(config.n_mels))
        self.register_buffer("std", torch.ones(config.n_mels))

    def log_mel(self, audio: Tensor) -> Tensor:
        """Unnormalised log-mel of every complete window: [B, T, n_mels]."""
        c = self.config
        if audio.shape[-1] < c.win_length:
            return audio.new_zeros(audio.shape[0], 0, c.n_mels)
        return torch.log(self.power_spectrum(audio) @ self.filterbank.T + c.log_floor)

    def power_spectrum(self, audio: Tensor) -> Tensor:
        """|DFT|^2 of every complete window [B, T, n_fft // 2 + 1], as one MatMul over hop blocks.

        A window of ``win_length`` samples spans ``k = ceil(win / hop)`` blocks of ``hop`` samples, so
        the windowed DFT of frame t is ``sum_j block[t + j] @ W_j``: one [B, T + k - 1, hop] @ [hop,
        k * 2 * bins] MatMul and k shifted adds. No gather (an ``unfold`` exports to ONNX as Gather
        ops, 40 % of a feature graph's time) and no FFT op (ONNX Runtime's DFT of a 400-point window
        is a slow generic kernel: 3x slower here); the same formula runs in training, in PyTorch
        inference and in the exported encoder graph, so they agree to float rounding.
        """
        c = self.config
        hop, k = c.hop_length, self.dft_blocks
        batch = audio.shape[0]
        n_frames = (audio.shape[-1] - c.win_length) // hop + 1
        n_blocks = n_frames + k - 1
        x = audio[:, : n_blocks * hop]
        x = torch.nn.functional.pad(x, (0, n_blocks * hop - x.shape[-1]))
        p = x.reshape(batch, n_blocks, hop) @ self.dft_basis  # [B, n_blocks, k * 2 * bins]
        width = self.dft_basis.shape[1] // k
        spec = p[:, :n_frames, :width]
        for j in range(1, k):
            spec = spec + p[:, j : j + n_frames, j * width : (j + 1) * width]
        bins = width // 2
        return spec[..., :bins].square() + spec[..., bins:].square()

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        feats = (self.log_mel(audio) - self.mean) / self.std
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long, device=audio.device)
        feat_lengths = num_frames(lengths, self.config)
        # Zero the frames that only exist because of padding, so padded batches are deterministic.
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < feat_lengths[:, None]
        return feats * valid.unsqueeze(-1), feat_lengths

    @torch.no_grad()
    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp_min(std, 1e-3))


def load_feature_extractor(checkpoint_dir: str | Path) -> LogMel:
    """The checkpoint's feature extractor alone (the serving front end needs nothing else)."""
    checkpoint_dir = Path(checkpoint_dir)
    config = ModelConfig.load(checkpoint_dir / "config.json")
    extractor = LogMel(config.features)
    weights = load_file(str(checkpoint_dir / "model.safetensors"))
    extractor.mean.copy_(weights["features.mean"])
    extractor.std.copy_(weights["features.std"])
    return extractor.eval()
