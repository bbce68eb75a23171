"""A Python-based stand-in for Triton's C++ onnxruntime backend (the pytriton wheel has none).

Installed by the launcher as ``<backend dir>/onnxruntime/model.py``, it serves every model whose
config says ``platform: "onnxruntime_onnx"`` (or ``backend: "onnxruntime"``) from
``<model>/<version>/model.onnx``, so the very same repository is served by the real C++ backend in
NVIDIA's container on a GPU host. Like the C++ backend it batches by concatenating requests of
identical shape along the batch axis (requests of different shapes are run as separate groups), and
reads the same config parameters: ``intra_op_thread_count``, ``inter_op_thread_count``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from mambaserve.serving.backends.common import INVALID_ARG, triton_error

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_NUMPY_TO_TRITON = {
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.bool_): "TYPE_BOOL",
}


def _model_dir_from_cmdline() -> tuple[Path, str] | None:
    """(model_dir, version) from the stub's argv[1] = `<model_dir>/<version>/model.py`.

    auto_complete_config() gets no model path in a Python-based backend; the stub's command line has it.
    """
    try:
        argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
        script = Path(argv[1].decode())
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return script.parent.parent, script.parent.name


def _model_file(model_dir: Path, version: str, config: dict) -> Path:
    filename = config.get("default_model_filename") or "model.onnx"
    return model_dir / str(version) / filename


def _param(config: dict, key: str, default: int) -> int:
    raw = config.get("parameters", {}).get(key, {}).get("string_value", "")
    try:
        return int(raw) if raw != "" else default
    except ValueError:
        raise pb_utils.TritonModelException(f"config parameter {key}={raw!r} must be an integer") from None


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        """Fill in inputs/outputs from the ONNX graph when the config leaves them out (like the C++ backend)."""
        config = auto_complete_model_config.as_dict()
        if config.get("input") and config.get("output"):
            return auto_complete_model_config
        located = _model_dir_from_cmdline()
        if located is None:
            return auto_complete_model_config
        import onnxruntime as ort  # heavy: imported only inside the stub

        path = _model_file(*located, config)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batching = int(config.get("max_batch_size", 0)) > 0
        have_in = {t["name"] for t in config.get("input", [])}
        have_out = {t["name"] for t in config.get("output", [])}
        for kind, tensors, have in (
            ("input", sess.get_inputs(), have_in),
            ("output", sess.get_outputs(), have_out),
        ):
            for t in tensors:
                if t.name in have:
                    continue
                dims = [d if isinstance(d, int) else -1 for d in t.shape]
                entry = {
                    "name": t.name,
                    "data_type": _NUMPY_TO_TRITON[np.dtype(_ORT_TO_NUMPY[t.type])],
                    "dims": dims[1:] if batching else dims,
                }
                (
                    auto_complete_model_config.add_input
                    if kind == "input"
                    else auto_complete_model_config.add_output
                )(entry)
        return auto_complete_model_config

    def initialize(self, args: dict) -> None:
        import onnxruntime as ort  # heavy: imported only inside the stub

        self.config = json.loads(args["model_config"])
        self.name = self.config["name"]
        model_dir = Path(args["model_repository"])
        version = args["model_version"]
        path = _model_file(model_dir, version, self.config)
        if not path.exists():
            located = _model_dir_from_cmdline()
            if located is not None:
                path = _model_file(located[0], version, self.config)
        if not path.exists():
            raise pb_utils.TritonModelException(f"model '{self.name}': ONNX file {path} not found")

        options = ort.SessionOptions()
        options.intra_op_num_threads = _param(self.config, "intra_op_thread_count", 0)
        options.inter_op_num_threads = _param(self.config, "inter_op_thread_count", 0)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.batching = int(self.config.get("max_batch_size", 0)) > 0

        onnx_inputs = {t.name: t for t in self.session.get_inputs()}
        onnx_outputs = {t.name: t for t in self.session.get_outputs()}
        self.inputs: list[tuple[str, np.dtype, bool]] = []
        for t in self.config["input"]:
            if t["name"] not in onnx_inputs:
                raise pb_utils.TritonModelException(
                    f"model '{self.name}': config input '{t['name']}' is not an input of {path.name} "
                    f"(ONNX inputs: {sorted(onnx_inputs)})"
                )
            dtype = np.dtype(_ORT_TO_NUMPY[onnx_inputs[t["name"]].type])
            want = _NUMPY_TO_TRITON.get(dtype)
            if want != t["data_type"]:
                raise pb_utils.TritonModelException(
                    f"model '{self.name}': input '{t['name']}' is {t['data_type']} in config.pbtxt but {want} in the ONNX graph"
                )
            self.inputs.append((t["name"], dtype, bool(t.get("optional", False))))
        missing = sorted(set(onnx_inputs) - {name for name, _, _ in self.inputs})
        if missing:
            raise pb_utils.TritonModelException(
                f"model '{self.name}': ONNX inputs {missing} are not in config.pbtxt"
            )
        self.outputs: list[str] = []
        for t in self.config["output"]:
            if t["name"] not in onnx_outputs:
                raise pb_utils.TritonModelException(
                    f"model '{self.name}': config output '{t['name']}' is not an output of {path.name} "
                    f"(ONNX outputs: {sorted(onnx_outputs)})"
                )
            self.outputs.append(t["name"])
        pid = os.getpid()
        pb_utils.Logger.log_info(f"onnxruntime stand-in: model '{self.name}' loaded {path} (pid {pid})")

    # ------------------------------------------------------------------------------------------
    def _read(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype, optional in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                if optional:
                    continue
                raise ValueError(f"input '{name}' is missing")
            array = tensor.as_numpy()
            if array.dtype != dtype:
                raise ValueError(f"input '{name}' must be {dtype}, got {array.dtype}")
            if self.batching and array.ndim == 0:
                raise ValueError(f"input '{name}' needs a batch dimension")
            feeds[name] = array
        return feeds

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = self._read(request)
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(
                    error=triton_error(f"model '{self.name}': {e}", INVALID_ARG, pb_utils)
                )
                continue
            if self.batching:
                key = tuple((name, a.shape[1:]) for name, a in sorted(feeds.items()))
            else:
                key = ("request", i)
            groups.setdefault(key, []).append((i, feeds))

        for members in groups.values():
            try:
                if len(members) == 1:
                    feeds = members[0][1]
                else:
                    feeds = {
                        name: np.concatenate([f[name] for _, f in members], axis=0) for name in members[0][1]
                    }
                results = self.session.run(self.outputs, feeds)
            except Exception as e:  # any onnxruntime failure becomes this group's error
                error = triton_error(f"model '{self.name}': onnxruntime failed: {e}", pb_utils=pb_utils)
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            offset = 0
            for i, feeds in members:
                n = next(iter(feeds.values())).shape[0] if self.batching else None
                tensors = []
                for name, value in zip(self.outputs, results):
                    part = value[offset : offset + n] if self.batching else value
                    tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(part)))
                offset += n or 0
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.session = None
