"""The ONNX export and its parity check: dynamic lengths kept, frozen lengths caught, a failed build
leaves the repository untouched."""

from __future__ import annotations

import shutil

import pytest
import torch
from mambaserve.build.errors import ParityError
from mambaserve.build.export.encoder import check_parity, example, export_onnx, export_onnx_frozen, run_onnx
from mambaserve.build.export.graph import relative_error
from mambaserve.build.export.modules import TritonEncoder
from mambaserve.build.repository import BuildOptions, build_repository
from mambaserve.build.versioning import versions
from mambaserve.contract import spec
from torch import nn
from torch._higher_order_ops.scan import scan

N_MELS = 8


class _Recurrent(nn.Module):
    """A tiny causal recurrent encoder with the encoder's signature (a decaying running sum)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(2 * N_MELS, 6)
        self.head = nn.Linear(6, 5)
        self.decay = nn.Parameter(torch.rand(6))

    def frames(self, features):
        b, t, f = features.shape
        return self.proj(features[:, : (t // 2) * 2].reshape(b, t // 2, 2 * f)), torch.sigmoid(self.decay)

    def outputs(self, y, lengths):
        return y, lengths // 2, torch.log_softmax(self.head(y), -1), lengths // 2


class ScanEncoder(_Recurrent):
    def forward(self, features, lengths):
        x, a = self.frames(features)

        def step(h, x_t):
            h = a * h + x_t
            return h, h.clone()

        _, ys = scan(
            step, torch.zeros_like(x[:, 0], memory_format=torch.contiguous_format), x.transpose(0, 1)
        )
        return self.outputs(ys.transpose(0, 1), lengths)


class LoopEncoder(_Recurrent):
    def forward(self, features, lengths):
        x, a = self.frames(features)
        h, ys = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):  # unrolled, and frozen, at the trace length by both exporters
            h = a * h + x[:, t]
            ys.append(h)
        return self.outputs(torch.stack(ys, 1), lengths)


def test_a_scan_encoder_keeps_dynamic_lengths(tmp_path):
    module = TritonEncoder(ScanEncoder())
    path = export_onnx(module, tmp_path / "scan.onnx", n_mels=N_MELS)
    results = check_parity(path, module, n_mels=N_MELS, shapes=((1, 64), (3, 200), (2, 333)))
    assert [(r.batch, r.frames) for r in results] == [(1, 64), (3, 200), (2, 333)]
    assert all(r.worst <= 1e-5 for r in results)


@pytest.mark.parametrize("exporter", [export_onnx, export_onnx_frozen])
def test_parity_catches_a_length_frozen_at_trace_time(tmp_path, exporter):
    module = TritonEncoder(LoopEncoder())
    path = exporter(module, tmp_path / "loop.onnx", n_mels=N_MELS, trace_shape=(2, 32))
    features, lengths = example(3, 32, N_MELS)  # at the trace length the frozen graph still looks right
    onnx_prefix = run_onnx(path, features.numpy(), lengths.numpy())[0]
    assert relative_error(onnx_prefix, module(features, lengths)[0].detach().numpy()) <= 1e-5
    with pytest.raises(
        ParityError, match=r"frames=64 .*PREFIX has shape \[1, 16, 6\], PyTorch gives \[1, 32, 6\]"
    ):
        check_parity(path, module, n_mels=N_MELS, shapes=((1, 64), (2, 200)), trace_shape=(2, 32))


def test_parity_needs_two_other_lengths():
    with pytest.raises(ValueError, match="two frame counts"):
        check_parity("unused.onnx", nn.Identity(), n_mels=N_MELS, shapes=((1, 128), (3, 64)))


def test_the_built_encoder_matches_pytorch_at_more_lengths(model_repository, checkpoint_dir):
    from mambaserve.build.export.modules import EncoderForExport
    from mambaserve.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint_dir)
    module = TritonEncoder(EncoderForExport(ckpt.model))
    path = model_repository / spec.ENCODER / "1" / "model.onnx"
    results = check_parity(
        path, module, n_mels=ckpt.config.features.n_mels, shapes=((2, 97), (4, 512), (1, 1500))
    )
    assert all(r.worst <= 1e-4 for r in results), results


def export_with_a_python_loop_scan(module, path, *, n_mels):
    """The classic trap: the selective scan as a Python loop over time (the kernels' float64
    reference) while exporting. The dynamo exporter unrolls it at the trace length."""
    from mambaserve import kernels
    from mambaserve.kernels.reference import selective_scan_ref

    original = kernels.selective_scan
    kernels.selective_scan = selective_scan_ref
    try:
        return export_onnx(module, path, n_mels=n_mels, trace_shape=(2, 16))  # short: the loop is unrolled
    finally:
        kernels.selective_scan = original


def test_a_build_whose_export_freezes_the_length_fails_and_changes_nothing(
    model_repository, checkpoint_dir, tmp_path
):
    out = tmp_path / "repo"
    shutil.copytree(model_repository, out)
    before = {p.relative_to(out) for p in out.rglob("*")}
    lines = []
    with pytest.raises(
        ParityError, match=r"ONNX parity check failed.* at batch=1, frames=64: .*froze a dynamic length"
    ):
        build_repository(
            checkpoint_dir,
            out,
            BuildOptions(verify_load=False),
            exporter=export_with_a_python_loop_scan,
            log=lines.append,
        )
    assert {p.relative_to(out) for p in out.rglob("*")} == before
    assert versions(out / spec.ENCODER) == [1]
    assert any("exporting the encoder" in line for line in lines)


def test_int8_encoder_is_smaller_runs_at_any_length_and_keeps_the_transcripts(
    model_repository, tmp_path, recognizer, speech_clips
):
    """--int8: dynamic INT8 weights. Outputs stay within the build's bound, the graph keeps its dynamic
    lengths, and the speech clips' transcripts barely move (held-out accuracy: build/README.md)."""
    from mambaserve.build.export.encoder import INT8_RTOL, quantize_int8

    path = tmp_path / "model.onnx"
    shutil.copyfile(model_repository / spec.ENCODER / "1" / "model.onnx", path)
    fp32 = tmp_path / "fp32.onnx"
    shutil.copyfile(path, fp32)
    result = quantize_int8(path, recognizer.config.features.n_mels)
    assert result.int8_bytes < result.fp32_bytes / 2
    assert result.logprob_error <= INT8_RTOL and result.prefix_error <= INT8_RTOL
    same = 0
    for _, audio in speech_clips:
        feats, lengths = recognizer.features([audio])
        args = (feats.numpy(), lengths.numpy().reshape(-1, 1))
        texts = []
        for model in (fp32, path):
            out = run_onnx(model, *args)
            texts.append(recognizer.lexicon_search.decode(out[2][0, : int(out[3].reshape(-1)[0])]))
        same += texts[0] == texts[1]
    assert same >= len(speech_clips) - 1, f"INT8 changed {len(speech_clips) - same} of {len(speech_clips)}"
