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


# Tensors between the steps of `asr`. Dims written -1 where the size comes from the checkpoint
# (n_mels, prefix width, vocabulary): `pipeline(...)` fills them in.
FEATURES = TensorSpec("FEATURES", "TYPE_FP32", (-1, -1))  # [T_bucket, n_mels], zero right padding
FEATURE_LENGTHS = TensorSpec("FEATURE_LENGTHS", "TYPE_INT64", (1,))  # valid frames of FEATURES
PREFIX = TensorSpec("PREFIX", "TYPE_FP32", (-1, -1))  # [P, d_decoder] audio prefix of the decoder
PREFIX_LENGTHS = TensorSpec("PREFIX_LENGTHS", "TYPE_INT64", (1,))
CTC_LOGPROBS = TensorSpec("CTC_LOGPROBS", "TYPE_FP32", (-1, -1))  # [T2, vocab] encoder CTC head
CTC_LENGTHS = TensorSpec("CTC_LENGTHS", "TYPE_INT64", (1,))

FEATURE_BUCKET_FRAMES = 64
"""The feature extractor pads FEATURES to a multiple of this many frames (0.64 s): Triton's C++
onnxruntime/TensorRT backends batch only requests of identical shape, so bucketing lets requests of
similar length share an encoder batch. The encoder is causal, so right padding leaves valid frames
unchanged; FEATURE_LENGTHS carries the true length."""

MAX_QUEUE_DELAY_MICROSECONDS = 2_000
"""How long the dynamic batcher of each step waits to fill a batch."""


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: model input/output name -> ensemble tensor name."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]


def _identity(*tensors: TensorSpec) -> dict[str, str]:
    return {t.name: t.name for t in tensors}


ASR_STEPS: tuple[EnsembleStep, ...] = (
    EnsembleStep(FEATURE_EXTRACTOR, _identity(AUDIO), _identity(FEATURES, FEATURE_LENGTHS)),
    EnsembleStep(
        ENCODER,
        _identity(FEATURES, FEATURE_LENGTHS),
        _identity(PREFIX, PREFIX_LENGTHS, CTC_LOGPROBS, CTC_LENGTHS),
    ),
    EnsembleStep(
        DECODER,
        _identity(PREFIX, PREFIX_LENGTHS, CTC_LOGPROBS, CTC_LENGTHS, PROMPT),
        _identity(TRANSCRIPT),
    ),
)
"""The wiring of `asr`; the optional PROMPT goes straight from the ensemble's input to the decoder."""


def pipeline(n_mels: int, prefix_dim: int, vocab_size: int) -> dict[str, ModelSpec]:
    """The tensor contract of every model of the repository, for a checkpoint's sizes.

    ``ragged``: inputs the python models accept with different shapes in one batch (they pad
    themselves); the encoder gets same-shape batches only.
    """
    features = FEATURES.with_dims(-1, n_mels)
    prefix = PREFIX.with_dims(-1, prefix_dim)
    ctc = CTC_LOGPROBS.with_dims(-1, vocab_size)
    return {
        FEATURE_EXTRACTOR: ModelSpec(
            FEATURE_EXTRACTOR,
            inputs=(AUDIO,),
            outputs=(features, FEATURE_LENGTHS),
            extra={"ragged": (AUDIO.name,)},
        ),
        ENCODER: ModelSpec(
            ENCODER,
            inputs=(features, FEATURE_LENGTHS),
            outputs=(prefix, PREFIX_LENGTHS, ctc, CTC_LENGTHS),
        ),
        DECODER: ModelSpec(
            DECODER,
            inputs=(prefix, PREFIX_LENGTHS, ctc, CTC_LENGTHS, PROMPT),
            outputs=(TRANSCRIPT,),
            extra={"ragged": (PREFIX.name, CTC_LOGPROBS.name)},
        ),
        ASR: ModelSpec(ASR, inputs=(AUDIO, PROMPT), outputs=(TRANSCRIPT,), extra={"steps": ASR_STEPS}),
    }
