"""ONNX encoder -> TensorRT engine (`model.plan`) for Triton's tensorrt_plan platform, on a GPU host.

Nothing here runs on a machine without TensorRT and a CUDA GPU: :func:`unavailable_reason` says why,
and the build then keeps the ONNX encoder. Build the engine *inside* the tritonserver container that
will serve it (or with the same TensorRT version): a plan file is tied to the TensorRT version and
the GPU architecture it was built for.

Written against the TensorRT 10 Python API (the 24.xx NGC containers; explicit batch is implicit
there), with fallbacks for 8.6 where the API differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mambaserve.contract import spec

PLAN_FILENAME = "model.plan"


class TensorRTError(RuntimeError):
    """The engine could not be built or does not match the ONNX model."""


def unavailable_reason() -> str | None:
    """None when an engine can be built here, else the reason in words."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the `tensorrt` Python package is not installed (it comes with NVIDIA's containers or `pip install tensorrt`)"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


@dataclass(frozen=True)
class Profile:
    """One optimization profile: the shapes the engine accepts (frames are feature frames, 100/s)."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = spec.MAX_BATCH_SIZE
    min_frames: int = spec.FEATURE_BUCKET_FRAMES
    opt_frames: int = 8 * spec.FEATURE_BUCKET_FRAMES  # ~5 s of audio
    max_frames: int = 0  # 0: the bucketed length of spec.MAX_AUDIO_SECONDS

    def resolved(self, frames_per_second: float) -> Profile:
        max_frames = self.max_frames
        if max_frames <= 0:
            raw = math.ceil(spec.MAX_AUDIO_SECONDS * frames_per_second)
            max_frames = math.ceil(raw / spec.FEATURE_BUCKET_FRAMES) * spec.FEATURE_BUCKET_FRAMES
        p = Profile(
            self.min_batch, self.opt_batch, self.max_batch, self.min_frames, self.opt_frames, max_frames
        )
        if not (1 <= p.min_batch <= p.opt_batch <= p.max_batch):
            raise ValueError(f"profile batch sizes must satisfy 1 <= min <= opt <= max, got {p}")
        if not (1 <= p.min_frames <= p.opt_frames <= p.max_frames):
            raise ValueError(f"profile frame counts must satisfy 1 <= min <= opt <= max, got {p}")
        return p


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    n_mels: int,
    profile: Profile,
    fp16: bool = False,
    workspace_bytes: int = 4 << 30,
    log: Callable[[str], None] = print,
) -> Path:
    """Parse the ONNX encoder and serialize an engine with one optimization profile."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}:\n{errors}")

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    else:  # TensorRT 8.x before 8.4
        config.max_workspace_size = workspace_bytes
    if fp16:
        if not builder.platform_has_fast_fp16:
            log("  warning: this GPU has no fast FP16; building with --fp16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)

    trt_profile = builder.create_optimization_profile()
    shapes = {
        spec.FEATURES.name: (
            (profile.min_batch, profile.min_frames, n_mels),
            (profile.opt_batch, profile.opt_frames, n_mels),
            (profile.max_batch, profile.max_frames, n_mels),
        ),
        spec.FEATURE_LENGTHS.name: ((profile.min_batch, 1), (profile.opt_batch, 1), (profile.max_batch, 1)),
    }
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(inputs) != sorted(shapes):
        raise TensorRTError(f"ONNX encoder inputs {inputs} differ from the serving contract {sorted(shapes)}")
    for name, (lo, opt, hi) in shapes.items():
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)

    log(
        f"  TensorRT {trt.__version__}: building engine (fp16={fp16}, batch {profile.min_batch}/{profile.opt_batch}/"
        f"{profile.max_batch}, frames {profile.min_frames}/{profile.opt_frames}/{profile.max_frames}) ..."
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError("TensorRT engine build failed (see the TensorRT log above)")
    plan_path = Path(plan_path)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def run_engine(
    plan_path: str | Path, feeds: dict[str, np.ndarray], output_names: Sequence[str]
) -> list[np.ndarray]:
    """Run a serialized engine once on the GPU (used for the parity check against ONNX Runtime)."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise TensorRTError(f"could not deserialize {plan_path}")
    context = engine.create_execution_context()
    device = torch.device("cuda")
    keep = {}
    for name, array in feeds.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        keep[name] = tensor
        context.set_input_shape(name, tuple(array.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    to_torch = {
        getattr(trt.DataType, name): dtype
        for name, dtype in (
            ("FLOAT", torch.float32),
            ("HALF", torch.float16),
            ("INT32", torch.int32),
            ("INT64", torch.int64),
            ("BOOL", torch.bool),
        )
        if hasattr(trt.DataType, name)  # INT64 exists from TensorRT 10
    }
    outputs = {}
    for name in output_names:
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise TensorRTError(f"output '{name}' has an unresolved shape {shape}")
        tensor = torch.empty(shape, dtype=to_torch[engine.get_tensor_dtype(name)], device=device)
        outputs[name] = tensor
        context.set_tensor_address(name, tensor.data_ptr())
    torch.cuda.synchronize()  # the copies above ran on the default stream
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise TensorRTError("TensorRT execution failed")
    stream.synchronize()
    return [outputs[name].cpu().numpy() for name in output_names]
