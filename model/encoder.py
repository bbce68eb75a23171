"""Causal speech encoder: frame stacking, then Mamba blocks, so it can run chunk by chunk.

Stacking ``subsampling`` feature frames (no overlap) needs no context across chunk borders, and the
Mamba blocks carry their conv and SSM state: fed the same frames in chunks whose lengths are
multiples of ``subsampling``, the encoder gives exactly the offline output.
"""

from __future__ import annotations

from mambaserve.model.config import EncoderConfig
from mambaserve.model.mamba import MambaStack, MambaState
from torch import Tensor, nn


class StackConv(nn.Module):
    """[..., s * n_mels] stacks -> [..., d]: two strided 2-D convolutions inside each stack, then a projection."""

    def __init__(self, subsampling: int, n_mels: int, channels: int, d: int) -> None:
        super().__init__()
        if subsampling % 4:
            raise ValueError("the conv front end needs a subsampling factor divisible by 4")
        self.subsampling, self.n_mels = subsampling, n_mels
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=(2, 3), stride=(2, 2), padding=(0, 1)),
            nn.GELU(),
            nn.Conv2d(channels, channels, kernel_size=(2, 3), stride=(2, 2), padding=(0, 1)),
            nn.GELU(),
        )
        freq = (n_mels + 1) // 2
        freq = (freq + 1) // 2
        self.proj = nn.Linear(channels * (subsampling // 4) * freq, d)

    def forward(self, stacks: Tensor) -> Tensor:
        lead = stacks.shape[:-1]
        x = stacks.reshape(-1, 1, self.subsampling, self.n_mels)
        return self.proj(self.conv(x).flatten(1)).reshape(*lead, -1)


class SpeechEncoder(nn.Module):
    def __init__(self, config: EncoderConfig, n_mels: int) -> None:
        super().__init__()
        self.config = config
        d = config.mamba.d_model
        if config.frontend == "conv":
            self.input_proj: nn.Module = StackConv(config.subsampling, n_mels, config.frontend_channels, d)
        elif config.frontend == "linear":
            self.input_proj = nn.Sequential(
                nn.Linear(n_mels * config.subsampling, d), nn.GELU(), nn.Linear(d, d)
            )
        else:
            raise ValueError(f"encoder.frontend must be 'linear' or 'conv', got {config.frontend!r}")
        self.dropout = nn.Dropout(config.dropout)
        self.mamba = MambaStack(config.mamba, config.dropout)

    def forward(
        self, feats: Tensor, feat_lengths: Tensor, state: MambaState | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, MambaState]:
        """feats [B, T, F] -> frames [B, T // s, d]; trailing frames that do not fill a stack are dropped.

        ``mask`` [B, T // s] (1 = real output frame) makes right padding exact for the carried state,
        so a streaming server can run chunks of different lengths from different states in one batch.
        """
        s = self.config.subsampling
        batch, frames, n_mels = feats.shape
        out_frames = frames // s
        x = feats[:, : out_frames * s].reshape(batch, out_frames, s * n_mels)
        x, state = self.mamba(self.dropout(self.input_proj(x)), state, mask=mask)
        return x, feat_lengths // s, state
