"""Export-friendly modules: the encoder (features in, everything the decoder needs out; with Triton's
tensor layout) and the decoder's single decode step.

Under ``torch.onnx.export(..., dynamo=True)`` the selective scan takes its ``scan``
higher-order-op path, so the exported encoder graph has an ONNX ``Scan`` over a dynamic number of
frames instead of a loop unrolled (and frozen) at the trace length.

The decode step is written functionally here -- ``(tokens, conv, ssm) -> (logits, conv', ssm')`` --
rather than exported through ``TranscriptDecoder.step``: that step updates the states in place
through ``mambaserve.kernels`` (slice writes), which the exporter turns into ScatterND /
ScatterElements over index ranges (258 nodes; 0.87 ms per step at batch 1 and 9.5 ms at batch 16 in
ONNX Runtime, slower than eager PyTorch). The functional form has ~150 nodes and no scatters. The
build checks it against the in-place PyTorch step (build/export/decoder_step.py), so the two cannot
drift apart unnoticed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from mambaserve.kernels.scan_cpu import softplus_exportable
from mambaserve.model.decoder import TranscriptDecoder
from mambaserve.model.mamba import MambaBlock
from mambaserve.model.network import SpeechMamba
from torch import Tensor, nn


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


class TritonEncoder(nn.Module):
    """The encoder with Triton's tensor layout: lengths travel as [B, 1] (config dims [1]).

    Keeping the per-request length a [1] tensor in the graph itself (rather than a config `reshape`)
    means the same ONNX file works unchanged in the C++ onnxruntime backend, TensorRT and the CPU
    stand-in.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        prefix, prefix_lengths, ctc, ctc_lengths = self.encoder(features, feature_lengths[:, 0])
        return prefix, prefix_lengths[:, None], ctc, ctc_lengths[:, None]


def _rms_norm(norm: nn.RMSNorm, x: Tensor) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * w: the form ONNX Runtime fuses into one SimplifiedLayerNormalization
    (torch's own decomposition, x * rsqrt(...), is left as 7 separate nodes)."""
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight


def block_step(block: MambaBlock, x: Tensor, conv: Tensor, ssm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``MambaBlock.step`` without in-place updates: x [B, d_model], conv [B, d_inner, d_conv-1],
    ssm [B, d_inner, d_state] -> (y, conv', ssm'). Same arithmetic as the kernels' CPU path."""
    xi, z = block.in_proj(_rms_norm(block.norm, x)).chunk(2, dim=-1)
    window = torch.cat([conv, xi.unsqueeze(-1)], dim=-1)  # [B, d_inner, d_conv]
    xc = F.silu((window * block.conv_weight).sum(-1) + block.conv_bias)
    dt, B, C = block._ssm_inputs(xc)
    dt = softplus_exportable(dt + block.dt_proj.bias)
    A = -torch.exp(block.A_log.float())  # a constant of the graph
    # Both [B, d_inner, d_state] products are K=1 MatMuls, not broadcasting Muls: ONNX Runtime walks a
    # broadcast [B, D, 1] x [D, N] in spans of N (16) floats, 25% of a step at batch 16; a MatMul by
    # ones expands dt in one call (exact: x * 1 = x) and the Mul by A then broadcasts over B only.
    dt_wide = torch.matmul(dt.unsqueeze(-1), torch.ones(1, A.shape[1], dtype=dt.dtype, device=dt.device))
    dBx = torch.matmul((dt * xc).unsqueeze(-1), B.unsqueeze(1))  # outer product per row
    h = ssm * torch.exp(dt_wide * A) + dBx
    y = torch.matmul(h, C.unsqueeze(-1)).squeeze(-1) + block.D * xc
    return x + block.out_proj(y * F.silu(z)), window[..., 1:], h


class DecoderStepForExport(nn.Module):
    """One decode step, functional: tokens [B] int64, conv [layers, B, d_inner, d_conv-1],
    ssm [layers, B, d_inner, d_state] -> logits [B, V], conv', ssm' (the states after the token).

    Computes what ``TranscriptDecoder.step(tokens, state)`` computes (which updates ``state`` in
    place), for ``torch.onnx.export``."""

    def __init__(self, decoder: TranscriptDecoder) -> None:
        super().__init__()
        if not isinstance(decoder, TranscriptDecoder):
            raise TypeError(
                f"DecoderStepForExport takes a TranscriptDecoder (model.decoder), got {type(decoder).__name__}"
            )
        # A frozen copy in eval mode: exporting must not switch the caller's model out of training.
        self.decoder = copy.deepcopy(decoder).eval().requires_grad_(False)

    def forward(self, tokens: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.decoder.embed(tokens)
        convs, ssms = [], []
        for i, block in enumerate(self.decoder.mamba.layers):
            x, conv, ssm = block_step(block, x, conv_state[i], ssm_state[i])
            convs.append(conv)
            ssms.append(ssm)
        logits = self.decoder.head(_rms_norm(self.decoder.mamba.norm_f, x))
        return logits, torch.stack(convs), torch.stack(ssms)
