"""The encoder as an export-friendly module: features in, everything the decoder needs out.

Under ``torch.onnx.export(..., dynamo=True)`` the selective scan takes its ``scan``
higher-order-op path, so the exported graph has an ONNX ``Scan`` over a dynamic number of frames
instead of a loop unrolled (and frozen) at the trace length.
"""

from __future__ import annotations

import copy

import torch
from mambaserve.training.config import ModelConfig
from mambaserve.training.model import SpeechMamba
from torch import Tensor, nn

INPUT_NAMES = ("FEATURES", "FEATURE_LENGTHS")
OUTPUT_NAMES = ("PREFIX", "PREFIX_LENGTHS", "CTC_LOGPROBS", "CTC_LENGTHS")


class EncoderForExport(nn.Module):
    """features [B, T, F] fp32, feature_lengths [B] int64 ->
    prefix [B, P, d_dec], prefix_lengths [B], ctc_logprobs [B, T', V], ctc_lengths [B]."""

    def __init__(self, model: SpeechMamba) -> None:
        super().__init__()
        # A frozen copy in eval mode: exporting must not switch the caller's model out of training.
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def forward(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        enc, _ = self.model.encode(features, feature_lengths)
        return enc.prefix, enc.prefix_lengths, enc.ctc_logprobs, enc.ctc_lengths


def example_inputs(config: ModelConfig, batch: int = 2, frames: int = 203, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random normalised features; the lengths differ per row so that padding is exercised."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, frames, config.features.n_mels, generator=g)
    lengths = torch.tensor([frames - 17 * i for i in range(batch)], dtype=torch.long).clamp_min(1)
    return feats, lengths
