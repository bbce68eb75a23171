"""Causal speech encoder: frame stacking, then Mamba blocks, so it can run chunk by chunk.

Stacking ``subsampling`` feature frames (no overlap) needs no context across chunk borders, and the
Mamba blocks carry their conv and SSM state: fed the same frames in chunks whose lengths are
multiples of ``subsampling``, the encoder gives exactly the offline output.
"""

from __future__ import annotations

from mambaserve.training.config import EncoderConfig
from mambaserve.training.mamba import MambaStack, MambaState
from torch import Tensor, nn


class SpeechEncoder(nn.Module):
    def __init__(self, config: EncoderConfig, n_mels: int) -> None:
        super().__init__()
        self.config = config
        d = config.mamba.d_model
        self.input_proj = nn.Sequential(
            nn.Linear(n_mels * config.subsampling, d), nn.GELU(), nn.Linear(d, d)
        )
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
