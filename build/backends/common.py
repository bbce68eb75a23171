"""What the Python-backend models share: request validation, padding, device and config parameters.

Pure numpy (no triton_python_backend_utils), so it is importable and testable outside a stub.
Validation errors are ValueErrors whose message names the input and the limit; the models turn
them into a `pb_utils.TritonError` for that request only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from mambaserve.build import spec

CHECKPOINT_DIR = "checkpoint"
"""Inside a python model's version folder: the weights/config/tokenizer that model needs."""

MAX_ABS_SAMPLE = 2.0
"""Audio is float in [-1, 1]; a peak above this is almost surely int16-scaled samples sent as float."""


def checkpoint_dir(args: dict) -> Path:
    """`<model>/<version>/checkpoint` from the initialize() args."""
    return Path(args["model_repository"]) / str(args["model_version"]) / CHECKPOINT_DIR


def parameter(args: dict, key: str, default: str = "") -> str:
    """A `parameters { key: ... }` string value of the model config."""
    config = json.loads(args["model_config"])
    return config.get("parameters", {}).get(key, {}).get("string_value", default) or default


def torch_device(args: dict) -> str:
    """`cuda:N` for a KIND_GPU instance (when CUDA is there), else `cpu`."""
    if args.get("model_instance_kind") == "GPU":
        import torch

        if torch.cuda.is_available():
            return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cpu"


def configure_torch_threads(args: dict) -> None:
    """`torch_threads` parameter: each python model instance is its own process with its own pool."""
    value = parameter(args, "torch_threads")
    if value:
        import torch

        threads = int(value)
        if threads > 0:
            torch.set_num_threads(threads)


DECODE_STEPS = ("onnx", "torch")


def decode_step_path(args: dict, device: str) -> Path | None:
    """The ``decoder_step.onnx`` a CPU instance decodes with, or None for the PyTorch step.

    ``decode_step`` parameter: ``onnx`` (default: the compiled step, if the build wrote it beside this
    model) or ``torch`` (eager PyTorch; also what GPU instances always use -- the Triton kernels).
    """
    choice = parameter(args, "decode_step", "onnx")
    if choice not in DECODE_STEPS:
        raise ValueError(f"parameter decode_step must be one of {DECODE_STEPS}, got {choice!r}")
    if choice == "torch" or device != "cpu":
        return None
    path = checkpoint_dir(args).parent / spec.DECODER_STEP_FILE
    return path if path.is_file() else None


def step_threads(args: dict) -> int:
    """ONNX Runtime intra-op threads of the decode step: the instance's ``torch_threads`` (default 1)."""
    value = parameter(args, "torch_threads")
    return int(value) if value else 1


def validate_audio(audio: np.ndarray, *, min_samples: int, sample_rate: int = spec.SAMPLE_RATE) -> np.ndarray:
    """AUDIO of one request, [batch, samples] float32; raises ValueError naming the limit."""
    name = spec.AUDIO.name
    if audio.dtype != np.float32:
        raise ValueError(f"input '{name}' must be FP32, got {audio.dtype}")
    if audio.ndim != 2:
        raise ValueError(f"input '{name}' must have shape [batch, samples], got {list(audio.shape)}")
    samples = audio.shape[1]
    if samples == 0:
        raise ValueError(f"input '{name}' is empty: send at least {min_samples} samples ({min_samples / sample_rate * 1000:.0f} ms at {sample_rate} Hz)")
    if samples < min_samples:
        raise ValueError(
            f"input '{name}' has {samples} samples, shorter than one analysis window: send at least "
            f"{min_samples} samples ({min_samples / sample_rate * 1000:.0f} ms at {sample_rate} Hz)"
        )
    max_samples = int(spec.MAX_AUDIO_SECONDS * sample_rate)
    if samples > max_samples:
        raise ValueError(
            f"input '{name}' is {samples / sample_rate:.2f} s long; the limit is {spec.MAX_AUDIO_SECONDS:g} s "
            f"({max_samples} samples at {sample_rate} Hz): split longer audio"
        )
    finite = np.isfinite(audio)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(f"input '{name}' contains NaN or Inf (first at sample {col} of row {row})")
    peak = float(np.abs(audio).max())
    if peak > MAX_ABS_SAMPLE:
        raise ValueError(
            f"input '{name}' must be float audio in [-1, 1]; its peak is {peak:g} (int16-scaled samples? divide by 32768)"
        )
    return audio


def decode_prompts(raw: np.ndarray | None, batch: int) -> list[str | None]:
    """PROMPT of one request ([batch, 1] bytes) -> one str or None per row; raises ValueError."""
    name = spec.PROMPT.name
    if raw is None:
        return [None] * batch
    if raw.ndim != 2 or raw.shape[1] != 1:
        raise ValueError(f"input '{name}' must have shape [batch, 1], got {list(raw.shape)}")
    if raw.shape[0] != batch:
        raise ValueError(f"input '{name}' has {raw.shape[0]} rows but AUDIO has {batch}")
    prompts: list[str | None] = []
    for i, value in enumerate(raw[:, 0]):
        data = value if isinstance(value, bytes) else str(value).encode()
        if len(data) > spec.MAX_PROMPT_BYTES:
            raise ValueError(
                f"input '{name}' (row {i}) is {len(data)} bytes; the limit is {spec.MAX_PROMPT_BYTES} bytes of UTF-8"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"input '{name}' (row {i}) is not valid UTF-8: {e.reason} at byte {e.start}") from None
        prompts.append(text if text else None)
    return prompts


def bucket_frames(frames: int, bucket: int = spec.FEATURE_BUCKET_FRAMES) -> int:
    """Padded length: the next multiple of `bucket` (at least one bucket)."""
    return max(1, math.ceil(frames / bucket)) * bucket


def pad_stack(arrays: list[np.ndarray], axis_len: int | None = None) -> np.ndarray:
    """Stack [n_i, T_i, ...] arrays into [sum n_i, max T_i, ...] with zero right padding on axis 1."""
    length = axis_len if axis_len is not None else max(a.shape[1] for a in arrays)
    rows = sum(a.shape[0] for a in arrays)
    out = np.zeros((rows, length, *arrays[0].shape[2:]), dtype=arrays[0].dtype)
    offset = 0
    for a in arrays:
        out[offset : offset + a.shape[0], : a.shape[1]] = a
        offset += a.shape[0]
    return out
