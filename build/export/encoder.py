"""Encoder -> ONNX with dynamic batch and time, and the parity check that makes the build trustworthy.

Exporters can silently freeze a dynamic length (a Python loop over time is unrolled at the trace
length; see build/README.md), and the graph then fails or — worse — returns wrong
numbers at every other length. So the build runs the exported graph in ONNX Runtime at several
(batch, frames) shapes that differ from the trace shape and compares it with PyTorch; any relative
error above the tolerance, or any failure, stops the build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mambaserve.build.errors import ParityError
from mambaserve.build.export.graph import dynamo_export, relative_error
from mambaserve.contract import spec
from torch import Tensor, nn

INPUT_NAMES = (spec.FEATURES.name, spec.FEATURE_LENGTHS.name)
OUTPUT_NAMES = (spec.PREFIX.name, spec.PREFIX_LENGTHS.name, spec.CTC_LOGPROBS.name, spec.CTC_LENGTHS.name)
TRACE_SHAPE = (2, 128)
"""(batch, frames) the exporter traces with; the parity shapes below all differ from it."""
PARITY_SHAPES = ((1, 64), (3, 200), (2, 333), (1, 1000))
"""(batch, frames) at which the ONNX graph must match PyTorch: other lengths than the trace, some not
a multiple of the bucket, and one long clip (10 s)."""
RTOL = 1e-4


def example(batch: int, frames: int, n_mels: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random features and lengths: row 0 full length, the others shorter (right-padded with zeros)."""
    g = torch.Generator().manual_seed(seed * 1000 + batch * 7 + frames)
    features = torch.randn(batch, frames, n_mels, generator=g)
    lengths = torch.full((batch, 1), frames, dtype=torch.long)
    for b in range(1, batch):
        lengths[b, 0] = int(torch.randint(max(1, frames // 2), frames + 1, (1,), generator=g))
        features[b, lengths[b, 0] :] = 0
    return features, lengths


def export_onnx(
    module: nn.Module, path: str | Path, *, n_mels: int, trace_shape: tuple[int, int] = TRACE_SHAPE
) -> Path:
    """Dynamo export (opset 18) with dynamic batch and frames; one self-contained .onnx file."""
    path = Path(path)
    module = module.eval()
    args = example(*trace_shape, n_mels)
    batch = torch.export.Dim("batch", min=1, max=spec.MAX_BATCH_SIZE)
    frames = torch.export.Dim.DYNAMIC
    return dynamo_export(
        module,
        args,
        path,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"features": {0: batch, 1: frames}, "feature_lengths": {0: batch}},
        what="the encoder",
    )


def export_onnx_frozen(
    module: nn.Module, path: str | Path, *, n_mels: int, trace_shape: tuple[int, int] = TRACE_SHAPE
) -> Path:
    """The legacy TorchScript exporter, with dynamic axes declared: it still freezes loop lengths.

    Not used by the build; kept so that the parity check's value can be demonstrated (tests).
    """
    path = Path(path)
    torch.onnx.export(
        module.eval(),
        example(*trace_shape, n_mels),
        str(path),
        dynamo=False,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={
            spec.FEATURES.name: {0: "batch", 1: "frames"},
            spec.FEATURE_LENGTHS.name: {0: "batch"},
            **{name: {0: "batch"} for name in OUTPUT_NAMES},
        },
        opset_version=18,
    )
    return path


@dataclass(frozen=True)
class ParityResult:
    batch: int
    frames: int
    errors: dict[str, float]  # output name -> relative error

    @property
    def worst(self) -> float:
        return max(self.errors.values())


def run_onnx(
    path: str | Path, features: np.ndarray, lengths: np.ndarray, threads: int = 0
) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: features, INPUT_NAMES[1]: lengths})


def check_parity(
    onnx_path: str | Path,
    module: nn.Module,
    *,
    n_mels: int,
    shapes: Sequence[tuple[int, int]] = PARITY_SHAPES,
    rtol: float = RTOL,
    trace_shape: tuple[int, int] | None = TRACE_SHAPE,
    run: Callable[[np.ndarray, np.ndarray], list[np.ndarray]] | None = None,
    progress: Callable[[ParityResult], None] | None = None,
) -> list[ParityResult]:
    """Compare the exported graph with PyTorch at `shapes`; raise ParityError on any mismatch."""
    if trace_shape is not None and any(tuple(s) == tuple(trace_shape) for s in shapes):
        raise ValueError(f"parity shapes must differ from the trace shape {trace_shape}")
    if len({f for _, f in shapes} - {trace_shape[1] if trace_shape else None}) < 2:
        raise ValueError("parity needs at least two frame counts other than the trace length")
    run = run or (lambda feats, lens: run_onnx(onnx_path, feats, lens))
    module = module.eval()
    traced = f" (traced at batch={trace_shape[0]}, frames={trace_shape[1]})" if trace_shape else ""
    results = []
    for batch, frames in shapes:
        features, lengths = example(batch, frames, n_mels, seed=1)
        with torch.inference_mode():
            expected = [t.detach().cpu().numpy() for t in module(features, lengths)]
        try:
            actual = run(features.numpy(), lengths.numpy())
        except Exception as e:  # any runtime failure at another length is a parity failure
            raise ParityError(
                f"ONNX parity check failed: the exported encoder cannot run at batch={batch}, frames={frames}"
                f"{traced}: {type(e).__name__}: "
                f"{str(e).splitlines()[0][:300]}. The export probably froze a dynamic length."
            ) from e
        shape_errors = [
            f"{name} has shape {list(a.shape)}, PyTorch gives {list(b.shape)}"
            for name, a, b in zip(OUTPUT_NAMES, actual, expected)
            if a.shape != b.shape
        ]
        if shape_errors:
            raise ParityError(
                f"ONNX parity check failed at batch={batch}, frames={frames}{traced}: "
                f"{'; '.join(shape_errors)}. The export froze a dynamic length."
            )
        errors = {name: relative_error(a, b) for name, a, b in zip(OUTPUT_NAMES, actual, expected)}
        result = ParityResult(batch, frames, errors)
        results.append(result)
        if progress:
            progress(result)
        bad = {k: v for k, v in errors.items() if not v <= rtol}
        if bad:
            detail = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
            raise ParityError(
                f"ONNX parity check failed at batch={batch}, frames={frames}{traced}: relative error above {rtol:g} in {detail}. The export probably "
                f"froze a dynamic length or changed the numerics."
            )
    return results


INT8_RTOL = 0.25
"""Largest relative error INT8 weights may add to the CTC log-probs and the prefix on random features
(the default checkpoint: ~0.1 there, transcripts of held-out speech measured in build/README.md)."""


@dataclass(frozen=True)
class Int8Result:
    """What dynamic INT8 quantisation did: sizes, and how far its outputs moved from FP32."""

    fp32_bytes: int
    int8_bytes: int
    logprob_error: float  # relative error of the CTC log-probs (worst parity shape)
    prefix_error: float  # relative error of the decoder prefix


def quantize_int8(onnx_path: str | Path, n_mels: int, *, seed: int = 3) -> Int8Result:
    """Replace `onnx_path` with ONNX Runtime's dynamic INT8 quantisation (MatMul weights as int8,
    activations quantised per call) after checking its outputs against FP32 at two lengths.

    Random features only bound the numeric change (ParityError above INT8_RTOL); what it does to
    transcripts is measured on held-out speech (build/README.md).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path = Path(onnx_path)
    quantized = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    quantize_dynamic(str(onnx_path), str(quantized), weight_type=QuantType.QInt8)
    lp_err = prefix_err = 0.0
    for batch, frames in ((2, 300), (1, 777)):
        features, lengths = example(batch, frames, n_mels, seed=seed)
        ref = run_onnx(onnx_path, features.numpy(), lengths.numpy())
        got = run_onnx(quantized, features.numpy(), lengths.numpy())
        prefix_err = max(prefix_err, relative_error(got[0], ref[0]))
        lp_err = max(lp_err, relative_error(got[2], ref[2]))
    result = Int8Result(onnx_path.stat().st_size, quantized.stat().st_size, lp_err, prefix_err)
    if max(lp_err, prefix_err) > INT8_RTOL:
        quantized.unlink()
        raise ParityError(
            f"INT8 encoder: CTC log-probs off by {lp_err:.2e}, prefix by {prefix_err:.2e} relative "
            f"(limit {INT8_RTOL:g}); build it without --int8"
        )
    quantized.replace(onnx_path)
    return result
