"""The build's one ONNX export recipe, and the error measure of every parity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from mambaserve.build.errors import BuildError
from torch import nn


def dynamo_export(
    module: nn.Module,
    args: tuple,
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict,
    what: str,
) -> Path:
    """The build's one ONNX export recipe: dynamo, opset 18, one self-contained file, checked by onnx.

    Any exporter failure becomes a BuildError naming ``what`` was exported.
    """
    try:
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=18,
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    except Exception as e:  # the exporter raises many types; the build reports them as one failure
        raise BuildError(f"ONNX export of {what} failed: {type(e).__name__}: {e}") from e
    onnx.checker.check_model(str(path))
    return path


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (shapes must agree; inf when they do not)."""
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    actual = actual.astype(np.float64)
    expected = expected.astype(np.float64)
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(actual - expected).max() / scale)
