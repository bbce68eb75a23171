"""Log-mel features: one implementation for training, serving and streaming.

Frames are taken without centring or padding: frame ``i`` covers samples ``[hop*i, hop*i + win)``.
So a frame depends only on its own samples, and a streaming front end that buffers the leftover
samples of each chunk produces exactly the offline frames. Normalisation uses global per-bin
statistics stored in the checkpoint (never per-utterance statistics, which streaming cannot know).
"""

from __future__ import annotations

from pathlib import Path

import torch
from mambaserve.model.config import FeatureConfig
from torch import Tensor, nn


def num_frames(num_samples: Tensor | int, config: FeatureConfig) -> Tensor | int:
    """Frames produced from ``num_samples`` samples (0 when shorter than one window)."""
    if isinstance(num_samples, Tensor):
        return torch.clamp_min((num_samples - config.win_length) // config.hop_length + 1, 0)
    return max(0, (num_samples - config.win_length) // config.hop_length + 1)


def mel_filterbank(config: FeatureConfig) -> Tensor:
    """[n_mels, n_fft // 2 + 1] Slaney mel filterbank (librosa's, so features match its reference)."""
    import librosa

    fb = librosa.filters.mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.f_min,
        fmax=config.f_max,
    )
    return torch.from_numpy(fb).float()


class LogMel(nn.Module):
    """Audio [B, N] (16 kHz float in [-1, 1]) -> normalised log-mel [B, T, n_mels]."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=True), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(config), persistent=False)
        # Normalisation statistics are part of the checkpoint.
        self.register_buffer("mean", torch.zeros(config.n_mels))
        self.register_buffer("std", torch.ones(config.n_mels))

    def log_mel(self, audio: Tensor) -> Tensor:
        """Unnormalised log-mel of every complete window: [B, T, n_mels]."""
        c = self.config
        if audio.shape[-1] < c.win_length:
            return audio.new_zeros(audio.shape[0], 0, c.n_mels)
        frames = audio.unfold(-1, c.win_length, c.hop_length) * self.window
        power = torch.fft.rfft(frames, n=c.n_fft).abs().square()
        return torch.log(power @ self.filterbank.T + c.log_floor)

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
    from mambaserve.model.config import ModelConfig
    from safetensors.torch import load_file

    checkpoint_dir = Path(checkpoint_dir)
    config = ModelConfig.load(checkpoint_dir / "config.json")
    extractor = LogMel(config.features)
    weights = load_file(str(checkpoint_dir / "model.safetensors"))
    extractor.mean.copy_(weights["features.mean"])
    extractor.std.copy_(weights["features.std"])
    return extractor.eval()
