"""The serving contract: model names, tensor names, dtypes and dims.

Everything that talks about a tensor (config.pbtxt generation, the Python-backend models, the ONNX
export, clients, load tests, tests) imports the names from here, so that renaming a tensor is a
one-line change and a mismatch cannot hide in a hand-kept copy.

Dims follow config.pbtxt conventions: they exclude the batch dimension when a model batches
(max_batch_size > 0), and -1 means variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

SAMPLE_RATE = 16_000
"""The public models take 16 kHz mono float audio in [-1, 1]."""

MAX_AUDIO_SECONDS = 30.0
"""Longest clip the offline `asr` model accepts; longer audio is rejected with a clear error."""

MAX_PROMPT_BYTES = 1024
"""Longest UTF-8 prompt, in bytes, that any model accepts."""

MAX_BATCH_SIZE = 32
"""max_batch_size of the batching models (a client batch above it is refused by Triton itself)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a Triton model."""

    name: str
    dtype: str  # config.pbtxt data type, e.g. "TYPE_FP32"
    dims: tuple[int, ...]
    optional: bool = False

    def with_dims(self, *dims: int) -> TensorSpec:
        return replace(self, dims=tuple(dims))

    @property
    def numpy_dtype(self) -> str:
        """The numpy dtype tritonclient expects for this tensor ("object" for strings)."""
        return _NUMPY[self.dtype]

    @property
    def wire_dtype(self) -> str:
        """The datatype string of the KServe v2 protocol (what tritonclient's InferInput takes)."""
        return _WIRE[self.dtype]


_NUMPY = {
    "TYPE_FP32": "float32",
    "TYPE_FP16": "float16",
    "TYPE_INT32": "int32",
    "TYPE_INT64": "int64",
    "TYPE_BOOL": "bool",
    "TYPE_STRING": "object",
    "TYPE_UINT64": "uint64",
}
_WIRE = {
    "TYPE_FP32": "FP32",
    "TYPE_FP16": "FP16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_BOOL": "BOOL",
    "TYPE_STRING": "BYTES",
    "TYPE_UINT64": "UINT64",
}

# ---------------------------------------------------------------------------------------------
# Public contract (stable: clients, load tests and outside checks depend on it).
# ---------------------------------------------------------------------------------------------
ASR = "asr"
"""Offline recognition ensemble: feature_extractor -> encoder -> decoder."""

ASR_STREAMING = "asr_streaming"
"""Streaming recognition ensemble (sequence batching; see the streaming issue)."""

AUDIO = TensorSpec("AUDIO", "TYPE_FP32", (-1,))
PROMPT = TensorSpec("PROMPT", "TYPE_STRING", (1,), optional=True)
TRANSCRIPT = TensorSpec("TRANSCRIPT", "TYPE_STRING", (1,))
IS_FINAL = TensorSpec("IS_FINAL", "TYPE_BOOL", (1,))

# ---------------------------------------------------------------------------------------------
# Internal pipeline (free to change together with build/ and the backends).
# ---------------------------------------------------------------------------------------------
FEATURE_EXTRACTOR = "feature_extractor"
ENCODER = "encoder"
DECODER = "decoder"


@dataclass(frozen=True)
class ModelSpec:
    """A model of the repository: what its config.pbtxt declares about tensors and batching."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = MAX_BATCH_SIZE
    extra: dict = field(default_factory=dict)
