"""The speech model: features -> causal Mamba encoder (+ CTC head) -> bridge -> Mamba decoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mambaserve.model.bridge import make_bridge
from mambaserve.model.config import ModelConfig
from mambaserve.model.decoder import TranscriptDecoder
from mambaserve.model.encoder import SpeechEncoder
from mambaserve.model.features import LogMel
from mambaserve.model.mamba import MambaState
from torch import Tensor, nn


@dataclass
class EncoderOutput:
    """What the decoder needs from the audio: the ONNX encoder in serving returns exactly this."""

    prefix: Tensor  # [B, P, d_dec]
    prefix_lengths: Tensor  # [B]
    ctc_logprobs: Tensor  # [B, T', V]
    ctc_lengths: Tensor  # [B]


class SpeechMamba(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d_enc = config.encoder.mamba.d_model
        d_dec = config.decoder.mamba.d_model
        self.features = LogMel(config.features)
        self.encoder = SpeechEncoder(config.encoder, config.features.n_mels)
        self.ctc_head = nn.Linear(d_enc, config.vocab_size)
        self.bridge = make_bridge(config.bridge, d_enc, d_dec)
        self.decoder = TranscriptDecoder(config.decoder, config.vocab_size)

    def encode(
        self, feats: Tensor, feat_lengths: Tensor, state: MambaState | None = None
    ) -> tuple[EncoderOutput, MambaState]:
        frames, lengths, state = self.encoder(feats, feat_lengths, state)
        ctc_logprobs = F.log_softmax(self.ctc_head(frames).float(), dim=-1)
        prefix, prefix_lengths = self.bridge(frames, lengths)
        return EncoderOutput(prefix, prefix_lengths, ctc_logprobs, lengths), state

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        """The training loss (DDP synchronises gradients through ``forward``)."""
        return self.compute_loss(*args, **kwargs)

    def compute_loss(
        self,
        feats: Tensor,
        feat_lengths: Tensor,
        targets: Sequence[Sequence[int]],
        prompts: Sequence[Sequence[int]],
        ctc_weight: float,
        label_smoothing: float = 0.1,
    ) -> dict[str, Tensor]:
        """Joint CTC + decoder cross-entropy, each averaged per token."""
        enc, _ = self.encode(feats, feat_lengths)
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
        ctc = F.ctc_loss(
            enc.ctc_logprobs.transpose(0, 1),
            flat,
            enc.ctc_lengths.cpu(),
            target_lengths,
            blank=self.config.blank_id,
            reduction="sum",
            zero_infinity=True,
        ) / target_lengths.sum().clamp_min(1)
        logits, labels = self.decoder.forward_train(enc.prefix, enc.prefix_lengths, prompts, targets)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == labels).float().mean()
        return {"loss": ctc_weight * ctc + (1 - ctc_weight) * ce, "ctc": ctc, "ce": ce, "accuracy": accuracy}
