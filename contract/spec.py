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

    def as_optional(self) -> TensorSpec:
        return replace(self, optional=True)

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

DECODER_SESSION = "decoder_session"
"""Decoupled decoder with sessions: the state after a session's audio (and CONTEXT) is kept per
correlation ID; each request generates from a copy of it and streams its tokens."""

# decoder_session inputs (besides AUDIO on the session's first request and the optional PROMPT).
CONTEXT = TensorSpec("CONTEXT", "TYPE_STRING", (1,), optional=True)
"""Text appended to the session's kept history (unlike PROMPT, which only this request sees)."""
DECODING_METHOD = TensorSpec("DECODING_METHOD", "TYPE_STRING", (1,), optional=True)  # greedy | beam | sample
MAX_TOKENS = TensorSpec("MAX_TOKENS", "TYPE_INT32", (1,), optional=True)  # 0: no generation (history only)
MIN_TOKENS = TensorSpec("MIN_TOKENS", "TYPE_INT32", (1,), optional=True)  # end-of-sequence suppressed before
TEMPERATURE = TensorSpec("TEMPERATURE", "TYPE_FP32", (1,), optional=True)  # sample only
TOP_K = TensorSpec("TOP_K", "TYPE_INT32", (1,), optional=True)  # sample only; 0 = whole vocabulary
SEED = TensorSpec("SEED", "TYPE_INT64", (1,), optional=True)  # sample only: same seed, same tokens
BEAM_SIZE = TensorSpec("BEAM_SIZE", "TYPE_INT32", (1,), optional=True)  # beam only
SESSION_SETTINGS = (DECODING_METHOD, MAX_TOKENS, MIN_TOKENS, TEMPERATURE, TOP_K, SEED, BEAM_SIZE)
SESSION_KEY = TensorSpec("SESSION_KEY", "TYPE_STRING", (1,))
"""The session's secret, an output of every response: a new key in the answers to START ("" in the
others), which every later request of the session must carry as KEY (the correlation ID alone is not
a credential: without the key nobody reads, feeds or ends the session)."""
KEY = TensorSpec("KEY", "TYPE_STRING", (1,), optional=True)
"""Input: the SESSION_KEY the session's START answered (Triton forbids one name for an input and an
output of a model, hence two names)."""
# decoder_session outputs, in every streamed response.
TOKEN = TensorSpec("TOKEN", "TYPE_STRING", (1,))  # the text this token adds ("" in the final response)
TOKEN_ID = TensorSpec("TOKEN_ID", "TYPE_INT32", (1,))  # -1 in the final response
HISTORY_LENGTH = TensorSpec("HISTORY_LENGTH", "TYPE_INT64", (1,))  # positions the session's state has seen
TOKEN_IDS = TensorSpec("TOKEN_IDS", "TYPE_INT32", (-1,))  # every token id of TRANSCRIPT so far

# ---------------------------------------------------------------------------------------------
# Internal pipeline (free to change together with build/ and the backends).
# ---------------------------------------------------------------------------------------------
FEATURE_EXTRACTOR = "feature_extractor"
ENCODER = "encoder"
DECODER = "decoder"
STREAMING_ENCODER = "streaming_encoder"
"""asr_streaming step 1 (stateful): chunk -> features -> causal encoder -> CTC partial + prefix vectors."""
STREAMING_DECODER = "streaming_decoder"
"""asr_streaming step 2 (stateful): feeds the prefix into the decoder state; decodes at END."""


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


DECODER_STEP_FILE = "decoder_step.onnx"
"""The decoder's single decode step as ONNX, written by the build next to every python model that
decodes (``<model>/<version>/decoder_step.onnx``); CPU instances run it with ONNX Runtime."""

# The decode step graph (not a Triton model: loaded by the python models themselves). Shapes with the
# batch first for TOKENS/LOGITS and second (after the layer axis) for the states.
TOKENS = TensorSpec("TOKENS", "TYPE_INT64", (-1,))  # [B] the last token of each row
CONV_STATE = TensorSpec("CONV_STATE", "TYPE_FP32", (-1, -1, -1, -1))  # [layers, B, d_inner, d_conv - 1]
SSM_STATE = TensorSpec("SSM_STATE", "TYPE_FP32", (-1, -1, -1, -1))  # [layers, B, d_inner, d_state]
LOGITS = TensorSpec("LOGITS", "TYPE_FP32", (-1, -1))  # [B, vocab] next-token logits
CONV_STATE_OUT = TensorSpec("CONV_STATE_OUT", "TYPE_FP32", (-1, -1, -1, -1))  # the states after the token
SSM_STATE_OUT = TensorSpec("SSM_STATE_OUT", "TYPE_FP32", (-1, -1, -1, -1))
DECODER_STEP_INPUTS = (TOKENS, CONV_STATE, SSM_STATE)
DECODER_STEP_OUTPUTS = (LOGITS, CONV_STATE_OUT, SSM_STATE_OUT)


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


# Between the steps of `asr_streaming` (PREFIX/CTC_LOGPROBS carry this chunk's new rows only; their
# *_LENGTHS say how many are real: a chunk may add none, and the tensors then hold one zero row).
PARTIAL = TensorSpec("PARTIAL", "TYPE_STRING", (1,))  # CTC greedy transcript of the audio so far
ENCODER_FRAMES = TensorSpec("ENCODER_FRAMES", "TYPE_INT64", (1,))  # encoder frames of the utterance so far

MAX_STREAM_SECONDS = 600.0
"""Longest utterance `asr_streaming` accepts (the state is fixed-size; this bounds the final decode)."""
STREAM_SLOTS = 256
"""Concurrent sequences each streaming model instance holds state for (its slot pool)."""
STREAM_SLOTS_PER_CLIENT = 128
"""Live `asr_streaming` sequences one client (the forwarded CLIENT_ID_HEADER) may hold per
streaming_encoder instance: half the pool, so one client cannot take it all. Requests without the
header (direct, on loopback) are not capped: behind the front every request has one."""
STREAM_IDLE_SECONDS = 15.0
"""max_sequence_idle_microseconds of asr_streaming: an abandoned sequence's slot is freed after this."""
SESSION_SLOTS = 10_000
"""Concurrent decoder sessions (state rows are only resident once a session has touched them)."""
SESSION_IDLE_SECONDS = 300.0
"""A decoder session without a request for this long is closed and its slot freed."""
SESSION_SLOTS_PER_CLIENT = 1_000
"""Live decoder sessions one client may hold (clients named by the forwarded CLIENT_ID_HEADER; all
unidentified clients share one such cap), so that one client cannot take every slot."""
MIN_SESSION_AUDIO_SECONDS = 0.25
"""Shortest AUDIO a session may start with: a session holds a slot for up to SESSION_IDLE_SECONDS,
so opening one must cost the client at least this much audio."""
CLIENT_ID_HEADER = "x-client-id"
"""The header the front proxy sets to the client's identity (its address or credentials); tritonserver
forwards it to the models as a request parameter (`--grpc-header-forward-pattern` /
`--http-header-forward-pattern`), where the per-client caps count it."""

ASR_STREAMING_STEPS: tuple[EnsembleStep, ...] = (
    EnsembleStep(
        STREAMING_ENCODER,
        _identity(AUDIO),
        _identity(PREFIX, PREFIX_LENGTHS, CTC_LOGPROBS, CTC_LENGTHS, PARTIAL, ENCODER_FRAMES),
    ),
    EnsembleStep(
        STREAMING_DECODER,
        _identity(PREFIX, PREFIX_LENGTHS, CTC_LOGPROBS, CTC_LENGTHS, PARTIAL, ENCODER_FRAMES, PROMPT),
        _identity(TRANSCRIPT, IS_FINAL),
    ),
)
"""The wiring of `asr_streaming`: both steps are sequence-batched; the correlation ID and START/END
of each request reach them through the ensemble."""


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


def stateful_pipeline(n_mels: int, prefix_dim: int, vocab_size: int) -> dict[str, ModelSpec]:
    """The stateful models: `asr_streaming` and its two steps, and `decoder_session`.

    ``sequence``: sequence-batched (correlation ID + START/END); ``decoupled``: streams responses.
    """
    prefix = PREFIX.with_dims(-1, prefix_dim)
    ctc = CTC_LOGPROBS.with_dims(-1, vocab_size)
    return {
        STREAMING_ENCODER: ModelSpec(
            STREAMING_ENCODER,
            inputs=(AUDIO,),
            outputs=(prefix, PREFIX_LENGTHS, ctc, CTC_LENGTHS, PARTIAL, ENCODER_FRAMES),
            extra={"ragged": (AUDIO.name,), "sequence": True},
        ),
        STREAMING_DECODER: ModelSpec(
            STREAMING_DECODER,
            inputs=(prefix, PREFIX_LENGTHS, ctc, CTC_LENGTHS, PARTIAL, ENCODER_FRAMES, PROMPT),
            outputs=(TRANSCRIPT, IS_FINAL),
            extra={"ragged": (PREFIX.name, CTC_LOGPROBS.name), "sequence": True},
        ),
        ASR_STREAMING: ModelSpec(
            ASR_STREAMING,
            inputs=(AUDIO, PROMPT),
            outputs=(TRANSCRIPT, IS_FINAL),
            extra={"steps": ASR_STREAMING_STEPS},
        ),
        DECODER_SESSION: ModelSpec(
            DECODER_SESSION,
            inputs=(AUDIO.as_optional(), PROMPT, CONTEXT, *SESSION_SETTINGS, KEY),
            outputs=(TOKEN, TOKEN_ID, TRANSCRIPT, IS_FINAL, HISTORY_LENGTH, TOKEN_IDS, SESSION_KEY),
            extra={"ragged": (AUDIO.name,), "decoupled": True},
        ),
    }
