"""Bridges from encoder frames to the decoder's audio prefix.

``StrideBridge`` keeps time order and causality (one prefix vector per ``stride`` frames), so a
streaming server can feed the decoder's state while audio arrives. ``PerceiverBridge`` summarises
the whole utterance in a fixed number of latents (cross-attention, as in multimodal alignment
work): a shorter prefix for long audio, but it must wait for the end of the utterance.
"""

from __future__ import annotations

import torch
from mambaserve.model.config import BridgeConfig
from torch import Tensor, nn


class StrideBridge(nn.Module):
    def __init__(self, config: BridgeConfig, d_enc: int, d_dec: int) -> None:
        super().__init__()
        self.stride = config.stride
        self.proj = nn.Sequential(nn.Linear(d_enc * config.stride, d_dec), nn.GELU(), nn.Linear(d_dec, d_dec))

    def forward(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, n, d = frames.shape
        p = n // self.stride
        x = frames[:, : p * self.stride].reshape(batch, p, self.stride * d)
        return self.proj(x), lengths // self.stride


class _CrossAttentionLayer(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, latents: Tensor, memory: Tensor, pad_mask: Tensor) -> Tensor:
        q = self.norm_q(latents)
        latents = latents + self.attn(q, memory, memory, key_padding_mask=pad_mask, need_weights=False)[0]
        return latents + self.ff(self.norm_ff(latents))


class PerceiverBridge(nn.Module):
    def __init__(self, config: BridgeConfig, d_enc: int, d_dec: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(config.n_latents, d_dec) * 0.02)
        self.memory_proj = nn.Linear(d_enc, d_dec)
        self.memory_norm = nn.LayerNorm(d_dec)
        self.layers = nn.ModuleList(
            _CrossAttentionLayer(d_dec, config.n_heads) for _ in range(config.n_layers)
        )

    def forward(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, n, _ = frames.shape
        memory = self.memory_norm(self.memory_proj(frames))
        pad_mask = torch.arange(n, device=frames.device)[None, :] >= lengths.clamp_min(1)[:, None]
        latents = self.latents.unsqueeze(0).expand(batch, -1, -1)
        for layer in self.layers:
            latents = layer(latents, memory, pad_mask)
        prefix_lengths = torch.full_like(lengths, self.latents.shape[0])
        return latents, prefix_lengths


def make_bridge(config: BridgeConfig, d_enc: int, d_dec: int) -> nn.Module:
    if config.kind == "stride":
        return StrideBridge(config, d_enc, d_dec)
    if config.kind == "perceiver":
        return PerceiverBridge(config, d_enc, d_dec)
    raise ValueError(f"bridge.kind must be 'stride' or 'perceiver', got {config.kind!r}")
