"""Mamba decoder language model over ``[audio prefix][prompt][BOS] transcript [EOS]``.

The prompt sits after the audio, right before BOS: the state after the audio can be computed while
audio streams in, and a session can try several prompts from a copy of that one state. Decoding
carries only the fixed-size Mamba state, so the cost per token does not grow with the history.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mambaserve.model.config import DecoderConfig
from mambaserve.model.mamba import MambaStack, MambaState
from mambaserve.model.tokenizer import BOS_ID, EOS_ID
from torch import Tensor, nn


class TranscriptDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        d = config.mamba.d_model
        self.embed = nn.Embedding(vocab_size, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.dropout = nn.Dropout(config.dropout)
        self.mamba = MambaStack(config.mamba, config.dropout)
        self.head = nn.Linear(d, vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied

    def assemble(
        self,
        prefix: Tensor,
        prefix_lengths: Tensor,
        prompts: Sequence[Sequence[int]],
        tails: Sequence[Sequence[int]],
        left_pad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per item ``prefix[:P] + embed(prompt) + embed([BOS] + tail)``, padded into one batch.

        Returns embeddings [B, L, d], mask [B, L] (1 = real) and the position of BOS per item.
        """
        device = prefix.device
        seqs, bos_at = [], []
        for i, (prompt, tail) in enumerate(zip(prompts, tails)):
            ids = torch.tensor([*prompt, BOS_ID, *tail], dtype=torch.long, device=device)
            p = int(prefix_lengths[i])
            seqs.append(torch.cat([prefix[i, :p], self.embed(ids)]))
            bos_at.append(p + len(prompt))
        longest = max(len(s) for s in seqs)
        x = prefix.new_zeros(len(seqs), longest, prefix.shape[-1])
        mask = torch.zeros(len(seqs), longest, device=device)
        bos = torch.tensor(bos_at, device=device)
        for i, s in enumerate(seqs):
            start = longest - len(s) if left_pad else 0
            x[i, start : start + len(s)] = s
            mask[i, start : start + len(s)] = 1
            if left_pad:
                bos[i] += start
        return x, mask, bos

    def forward_train(
        self,
        prefix: Tensor,
        prefix_lengths: Tensor,
        prompts: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing. Returns logits [n_tokens, V] and labels [n_tokens] (targets then EOS)."""

        x, _, bos = self.assemble(prefix, prefix_lengths, prompts, targets, left_pad=False)
        hidden, _ = self.mamba(self.dropout(x))  # right padding: causal, so real positions are exact
        rows = torch.cat([torch.full((len(t) + 1,), i, dtype=torch.long) for i, t in enumerate(targets)])
        cols = torch.cat([int(bos[i]) + torch.arange(len(t) + 1) for i, t in enumerate(targets)])
        labels = torch.cat([torch.tensor([*t, EOS_ID], dtype=torch.long) for t in targets])
        return self.head(hidden[rows.to(x.device), cols.to(x.device)]), labels.to(x.device)

    def prefill(
        self, prefix: Tensor, prefix_lengths: Tensor, prompts: Sequence[Sequence[int]]
    ) -> tuple[Tensor, MambaState]:
        """Run ``[prefix][prompt][BOS]`` for a batch; returns next-token logits [B, V] and the state."""
        x, mask, _ = self.assemble(prefix, prefix_lengths, prompts, [[] for _ in prompts], left_pad=True)
        hidden, state = self.mamba(x, mask=mask)
        return self.head(hidden[:, -1]), state

    def feed(self, x: Tensor, mask: Tensor, state: MambaState | None) -> tuple[Tensor, MambaState]:
        """Advance a state over already-embedded inputs [B, L, d] (streaming prefix, session prompts)."""
        hidden, state = self.mamba(x, state, mask=mask)
        return self.head(hidden[:, -1]), state

    def step(self, tokens: Tensor, state: MambaState) -> Tensor:
        """One token per row: tokens [B] -> logits [B, V]; ``state`` is updated in place."""
        return self.head(self.mamba.step(self.embed(tokens), state))
