"""What the Python-backend models share: config parameters, device and threads, the one way to load
a Recognizer, request validation and padding.

Pure numpy (no triton_python_backend_utils; torch only inside the functions that need it), so it is
importable and testable outside a stub. Validation errors are ValueErrors whose message names the
input and the limit; the models turn them into a `pb_utils.TritonError` for that request only, with the
status code :func:`error_code` picks (the one place that maps an error to a status code).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from mambaserve.contract import spec

CHECKPOINT_DIR = "checkpoint"
"""Inside a python model's version folder: the weights/config/tokenizer that model needs."""

# -- status codes --------------------------------------------------------------------------------
# The codes of `pb_utils.TritonError` in tritonserver 2.51 (the stub has no RESOURCE_EXHAUSTED nor
# PERMISSION_DENIED). What the frontends make of them (measured on 2.51, see tests/serving/test_hostile.py):
INVALID_ARG = "INVALID_ARG"
"""The client's fault, do not retry as is: gRPC INVALID_ARGUMENT, HTTP 400."""
UNAVAILABLE = "UNAVAILABLE"
"""Out of capacity (a full pool, a client over its cap), retry later: gRPC UNAVAILABLE, HTTP 503."""
ALREADY_EXISTS = "ALREADY_EXISTS"
"""START on a correlation ID that is live: gRPC ALREADY_EXISTS, HTTP 400."""
INTERNAL = "INTERNAL"
"""Our fault (a failed decode, a broken batch): gRPC INTERNAL, HTTP 500."""


class RequestError(ValueError):
    """A request refused because of what the client sent; ``code`` is its status code."""

    code = INVALID_ARG


class CapacityError(RequestError):
    """A request refused because a limit of concurrent work is reached (retry later)."""

    code = UNAVAILABLE


def error_code(error: BaseException | None) -> str:
    """The status code of an error: its ``code``, else INVALID_ARG for any ValueError (the validation
    functions here raise those), else INTERNAL."""
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return code
    return INVALID_ARG if isinstance(error, ValueError) else INTERNAL


def triton_error(error: BaseException | str, code: str | None = None, pb_utils=None):
    """``pb_utils.TritonError(message, code)`` for an exception (code from :func:`error_code`) or a
    message (``code`` given, default INTERNAL). Every backend builds its errors here so that clients
    can tell "fix your request" (400) from "retry later" (503) from "our fault" (500)."""
    if pb_utils is None:
        import triton_python_backend_utils as pb_utils  # only inside a python backend stub
    if code is None:
        code = INTERNAL if isinstance(error, str) else error_code(error)
    return pb_utils.TritonError(str(error), getattr(pb_utils.TritonError, code))


def error_response(error: BaseException | str, code: str | None = None, pb_utils=None):
    """An ``InferenceResponse`` carrying :func:`triton_error`."""
    if pb_utils is None:
        import triton_python_backend_utils as pb_utils
    return pb_utils.InferenceResponse(error=triton_error(error, code, pb_utils))


MAX_ABS_SAMPLE = 2.0
"""Audio is float in [-1, 1]; a peak above this is almost surely int16-scaled samples sent as float."""


def checkpoint_dir(args: dict) -> Path:
    """`<model>/<version>/checkpoint` from the initialize() args."""
    return Path(args["model_repository"]) / str(args["model_version"]) / CHECKPOINT_DIR


def parameter(args: dict, key: str, default: str = "") -> str:
    """A `parameters { key: ... }` string value of the model config."""
    config = json.loads(args["model_config"])
    return config.get("parameters", {}).get(key, {}).get("string_value", default) or default


def int_parameter(args: dict, key: str, default: int, minimum: int = 1) -> int:
    raw = parameter(args, key, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"config parameter {key}={raw!r} must be an integer") from None
    if value < minimum:
        raise ValueError(f"config parameter {key}={value} must be >= {minimum}")
    return value


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


def load_recognizer(args: dict, log: Callable[[str], None] | None = None):
    """The model of a python-backend instance, loaded the one way every backend does it.

    The config's ``torch_threads``, the instance's device (``KIND_GPU``: ``cuda:N``), the checkpoint
    beside the model (``<version>/checkpoint``) and -- for a CPU instance of a decoding model -- the
    compiled decode step the build wrote beside it (``decode_step`` parameter). ``log`` gets one line
    saying which step decodes (pass ``pb_utils.Logger.log_info``). Returns a
    :class:`mambaserve.model.recognizer.Recognizer`.
    """
    from mambaserve.model.recognizer import Recognizer

    configure_torch_threads(args)
    device = torch_device(args)
    step = decode_step_path(args, device)  # CPU: the compiled decode step; GPU: PyTorch + the kernels
    recognizer = Recognizer(
        checkpoint_dir(args), device=device, decode_step=step, step_threads=step_threads(args)
    )
    if log is not None:
        log(f"{args['model_name']}: decode steps with {step or 'PyTorch'} on {device}")
    return recognizer


def validate_audio(audio: np.ndarray, *, min_samples: int, sample_rate: int = spec.SAMPLE_RATE) -> np.ndarray:
    """AUDIO of one request, [batch, samples] float32; raises ValueError naming the limit."""
    name = spec.AUDIO.name
    if audio.dtype != np.float32:
        raise ValueError(f"input '{name}' must be FP32, got {audio.dtype}")
    if audio.ndim != 2:
        raise ValueError(f"input '{name}' must have shape [batch, samples], got {list(audio.shape)}")
    samples = audio.shape[1]
    if samples == 0:
        raise ValueError(
            f"input '{name}' is empty: send at least {min_samples} samples ({min_samples / sample_rate * 1000:.0f} ms at {sample_rate} Hz)"
        )
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
            raise ValueError(
                f"input '{name}' (row {i}) is not valid UTF-8: {e.reason} at byte {e.start}"
            ) from None
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


def validate_chunk(
    audio: np.ndarray | None, *, max_samples: int, sample_rate: int = spec.SAMPLE_RATE
) -> np.ndarray:
    """AUDIO of one streaming request -> 1-D float32 samples; an empty chunk is allowed (e.g. at END)."""
    name = spec.AUDIO.name
    if audio is None:
        raise ValueError(f"input '{name}' is missing")
    if audio.dtype != np.float32:
        raise ValueError(f"input '{name}' must be FP32, got {audio.dtype}")
    if audio.ndim != 2 or audio.shape[0] != 1:
        raise ValueError(
            f"input '{name}' must have shape [1, samples] (one stream per request), got {list(audio.shape)}"
        )
    if audio.shape[1] > max_samples:
        raise ValueError(
            f"input '{name}' chunk is {audio.shape[1] / sample_rate:.2f} s long; the limit per request is "
            f"{max_samples / sample_rate:g} s ({max_samples} samples at {sample_rate} Hz)"
        )
    samples = audio[0]
    if samples.size:
        finite = np.isfinite(samples)
        if not finite.all():
            raise ValueError(f"input '{name}' contains NaN or Inf (first at sample {int(np.argmin(finite))})")
        peak = float(np.abs(samples).max())
        if peak > MAX_ABS_SAMPLE:
            raise ValueError(
                f"input '{name}' must be float audio in [-1, 1]; its peak is {peak:g} (int16-scaled samples? divide by 32768)"
            )
    return samples


MAX_NEW_TOKENS = 1024
"""Most tokens one decoder_session request may ask for (MAX_TOKENS)."""
MAX_BEAM_SIZE = 16


def _scalar(values: dict, name: str):
    a = values.get(name)
    if a is None:
        return None
    a = np.asarray(a)
    if a.size != 1:
        raise ValueError(f"input '{name}' must hold one value per request, got shape {list(a.shape)}")
    v = a.reshape(-1)[0]
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v


def parse_sampling(values: dict, defaults, *, vocab_size: int):
    """The decoder_session settings inputs of one request (name -> array or None) -> a Sampling
    (``mambaserve.serving.streaming_engine.Sampling``) that overrides ``defaults`` with what the request set.

    Raises ValueError naming the input and its limit.
    """
    from mambaserve.serving.streaming_engine import METHODS  # torch: only when a session model parses

    method = _scalar(values, spec.DECODING_METHOD.name)
    method = str(method).strip().lower() if method is not None else defaults.method
    if method not in METHODS:
        raise ValueError(
            f"input '{spec.DECODING_METHOD.name}' must be one of {', '.join(METHODS)}, got {method!r}"
        )
    kwargs: dict = {"method": method}
    max_tokens = _scalar(values, spec.MAX_TOKENS.name)
    if max_tokens is not None:
        if not 0 <= int(max_tokens) <= MAX_NEW_TOKENS:
            raise ValueError(
                f"input '{spec.MAX_TOKENS.name}' must be in [0, {MAX_NEW_TOKENS}], got {int(max_tokens)}"
            )
        kwargs["max_tokens"] = int(max_tokens)
    min_tokens = _scalar(values, spec.MIN_TOKENS.name)
    if min_tokens is not None:
        limit = kwargs.get("max_tokens", MAX_NEW_TOKENS)
        if not 0 <= int(min_tokens) <= limit:
            raise ValueError(
                f"input '{spec.MIN_TOKENS.name}' must be in [0, {limit}] (MAX_TOKENS), got {int(min_tokens)}"
            )
        kwargs["min_tokens"] = int(min_tokens)
    temperature = _scalar(values, spec.TEMPERATURE.name)
    if temperature is not None:
        t = float(temperature)
        if not (np.isfinite(t) and 0 < t <= 100):
            raise ValueError(f"input '{spec.TEMPERATURE.name}' must be in (0, 100], got {t}")
        kwargs["temperature"] = t
    top_k = _scalar(values, spec.TOP_K.name)
    if top_k is not None:
        if not 0 <= int(top_k) <= vocab_size:
            raise ValueError(
                f"input '{spec.TOP_K.name}' must be in [0, {vocab_size}] (0 = no limit), got {int(top_k)}"
            )
        kwargs["top_k"] = int(top_k)
    seed = _scalar(values, spec.SEED.name)
    if seed is not None:
        if int(seed) < 0:
            raise ValueError(f"input '{spec.SEED.name}' must be >= 0, got {int(seed)}")
        kwargs["seed"] = int(seed)
    beam = _scalar(values, spec.BEAM_SIZE.name)
    if beam is not None:
        if not 1 <= int(beam) <= MAX_BEAM_SIZE:
            raise ValueError(
                f"input '{spec.BEAM_SIZE.name}' must be in [1, {MAX_BEAM_SIZE}], got {int(beam)}"
            )
        kwargs["beam_size"] = int(beam)
    return replace(defaults, **kwargs)
