"""Checkpoint -> Triton model repository: ensemble `asr` (feature_extractor -> encoder -> decoder), the
stateful ensemble `asr_streaming` (streaming_encoder -> streaming_decoder) and `decoder_session`.

Everything is built in a staging folder first: the ONNX export must pass its parity check, the
ensemble wiring check must pass and (by default) every model must load in a real tritonserver before
the new version folders are moved into the target repository. A failed build leaves the repository
as it was. Each model gets the next integer version; configs serve the latest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from mambaserve.build import model_config as mc
from mambaserve.build import tensorrt_engine
from mambaserve.build.errors import BuildError
from mambaserve.build.export import decoder_step as step_export
from mambaserve.build.export import encoder as encoder_export
from mambaserve.build.export.graph import relative_error
from mambaserve.build.export.modules import DecoderStepForExport, EncoderForExport, TritonEncoder
from mambaserve.build.verify import check_loads, check_wiring
from mambaserve.build.versioning import BUILD_INFO, next_version
from mambaserve.contract import spec
from mambaserve.model.checkpoint import CONFIG, TOKENIZER, WEIGHTS, load_checkpoint, save_checkpoint
from mambaserve.model.config import ModelConfig
from mambaserve.model.lexicon_search import LEXICON_FILE, LM_FILE
from mambaserve.serving.backends.common import CHECKPOINT_DIR, DECODE_STEPS
from mambaserve.serving.server import ServerError

BUILD_FORMAT = 4
"""Bumped when the repository layout changes, so that `make demo` rebuilds an older repository.
3: decoder_step.onnx beside every python model that decodes. 4: the model.py shims import
`mambaserve.serving.backends` (the backends left `mambaserve.build`)."""

PYTHON_MODELS = {
    spec.FEATURE_EXTRACTOR: ("mambaserve.serving.backends.feature_extractor", ("features",)),
    spec.DECODER: ("mambaserve.serving.backends.decoder", ("decoder",)),
    spec.STREAMING_ENCODER: (
        "mambaserve.serving.backends.streaming_encoder",
        ("features", "encoder", "ctc_head", "bridge"),
    ),
    spec.STREAMING_DECODER: ("mambaserve.serving.backends.streaming_decoder", ("decoder",)),
    spec.DECODER_SESSION: (
        "mambaserve.serving.backends.decoder_session",
        ("features", "encoder", "ctc_head", "bridge", "decoder"),
    ),
}
"""python model -> (library module with its TritonPythonModel, checkpoint parts it needs)."""
DECODING_MODELS = tuple(name for name, (_, parts) in PYTHON_MODELS.items() if "decoder" in parts)
"""Python models that generate tokens: each gets the compiled decode step (spec.DECODER_STEP_FILE)."""

SESSION_STATE_DTYPES = ("float32", "float16", "bfloat16")
ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
WARMUP_DIR = "warmup"

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    tensorrt: bool = False
    """Build a TensorRT engine for the encoder (when tensorrt and a GPU exist; else say why not)."""
    fp16: bool = False
    """TensorRT engine in FP16."""
    int8: bool = False
    """ONNX encoder with dynamic INT8 weights (ONNX Runtime's quantiser), after an FP32 parity check."""
    gpu: bool = False
    """KIND_GPU instances for the encoder and decoder (feature extraction stays on CPU)."""
    instances: Mapping[str, int] = field(default_factory=dict)
    """Instance count per model (default 1)."""
    ort_threads: int = 1
    """onnxruntime intra-op threads per encoder instance (0: onnxruntime's default, all cores)."""
    torch_threads: int = 1
    """torch threads per python model instance (0: torch's default, all cores). One thread per
    instance and more instances scale better than threads: on a shared 2-core machine a greedy
    decode took 0.12 s with 1 torch thread and 4.4 s with 2 (threads spinning against each other)."""
    decoding_method: str | None = None
    """"greedy" / "beam" / "ctc_lm" for the decoding models; None keeps the checkpoint's default."""
    max_queue_delay_us: int = spec.MAX_QUEUE_DELAY_MICROSECONDS
    verify_load: bool = True
    """Start a real tritonserver on the staged repository before installing it."""
    stream_slots: int = spec.STREAM_SLOTS
    """Concurrent `asr_streaming` sequences per streaming_encoder instance (its slot pool)."""
    stream_slots_per_client: int = spec.STREAM_SLOTS_PER_CLIENT
    """Live `asr_streaming` sequences one client (the forwarded x-client-id) may hold per instance."""
    stream_idle_s: float = spec.STREAM_IDLE_SECONDS
    """max_sequence_idle of asr_streaming: slots of sequences idle this long are freed."""
    session_slots: int = spec.SESSION_SLOTS
    """Concurrent decoder sessions."""
    session_idle_s: float = spec.SESSION_IDLE_SECONDS
    """A decoder session idle this long is closed."""
    session_slots_per_client: int = spec.SESSION_SLOTS_PER_CLIENT
    """Live decoder sessions one client (the forwarded x-client-id) may hold."""
    session_min_audio_s: float = spec.MIN_SESSION_AUDIO_SECONDS
    """Shortest AUDIO a decoder session may start with."""
    session_state_dtype: str = "float32"
    """Storage of kept session states: float32 (exact) or float16/bfloat16 (half the bytes)."""
    decode_step: str = "onnx"
    """What CPU instances of the decoding models generate tokens with: "onnx" (the compiled decode step
    in ONNX Runtime) or "torch" (eager PyTorch). GPU instances always use PyTorch + the Triton kernels.
    The step graph is written either way (a config edit switches back)."""

    def __post_init__(self) -> None:
        if self.stream_slots < 1 or self.session_slots < 1:
            raise ValueError("stream_slots and session_slots must be >= 1")
        if self.session_slots_per_client < 1 or self.stream_slots_per_client < 1:
            raise ValueError("session_slots_per_client and stream_slots_per_client must be >= 1")
        if not self.session_min_audio_s >= 0:
            raise ValueError("session_min_audio_s must be >= 0 seconds")
        if not (self.stream_idle_s > 0 and self.session_idle_s > 0):
            raise ValueError("stream_idle_s and session_idle_s must be > 0 seconds")
        if self.decode_step not in DECODE_STEPS:
            raise ValueError(f"decode_step must be one of {DECODE_STEPS}, not {self.decode_step!r}")
        if self.session_state_dtype not in SESSION_STATE_DTYPES:
            raise ValueError(
                f"session_state_dtype must be one of {SESSION_STATE_DTYPES}, not {self.session_state_dtype!r}"
            )
        if int(self.instances.get(spec.DECODER_SESSION, 1)) != 1:
            raise ValueError(
                f"{spec.DECODER_SESSION} runs as one instance (a session's state lives in one process)"
            )


@dataclass
class BuildResult:
    repository: Path
    versions: dict[str, int]
    encoder_platform: str
    checkpoint_sha256: str
    tensorrt_skipped: str | None = None
    parity: list = field(default_factory=list)
    seconds: float = 0.0


def checkpoint_digest(path: str | Path) -> str:
    """sha256 over what defines the model: weights, config, tokenizer, LM and lexicon (names, contents).

    Documentation beside them (a model card, a training report) does not make a built repository stale.
    """
    h = hashlib.sha256()
    for f in sorted(
        Path(path) / name
        for name in (WEIGHTS, CONFIG, TOKENIZER, LM_FILE, LEXICON_FILE)
        if (Path(path) / name).is_file()
    ):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def python_model_file(module: str, model: str) -> str:
    """The `<model>/<version>/model.py` shim of a python model: the code lives in `module`."""
    return (
        f'"""Triton python model `{model}` (generated by mambaserve.build): the code is {module}."""\n\n'
        f"from {module} import TritonPythonModel  # noqa: F401\n"
    )


class _Steps:
    """Numbered progress lines with timings ("[3/8] packaging the decoder ... 1.2 s")."""

    def __init__(self, total: int, log: Log):
        self.total, self.log, self.n, self.t = total, log, 0, None

    def start(self, text: str) -> None:
        self.done()
        self.n += 1
        self.t = time.monotonic()
        self.log(f"[{self.n}/{self.total}] {text}")

    def done(self) -> None:
        if self.t is not None:
            self.log(f"      done in {time.monotonic() - self.t:.1f} s")
            self.t = None


def build_repository(
    checkpoint: str | Path,
    out: str | Path,
    options: BuildOptions | None = None,
    *,
    exporter: Callable | None = None,
    log: Log = print,
) -> BuildResult:
    """Build new versions of every model of the repository `out` from `checkpoint`.

    `exporter(module, path, n_mels=...)` writes the encoder's ONNX file (default
    :func:`mambaserve.build.export.encoder.export_onnx`); its result must pass the parity check.
    Raises :class:`BuildError` (nothing written to `out`) when any step fails.
    """
    options = options or BuildOptions()
    exporter = exporter or encoder_export.export_onnx
    started = time.monotonic()
    checkpoint, out = Path(checkpoint), Path(out)
    steps = _Steps(10 if options.verify_load else 9, log)

    steps.start(f"loading checkpoint {checkpoint}")
    if not (checkpoint / "model.safetensors").exists():
        raise BuildError(f"{checkpoint} is not a checkpoint directory (no model.safetensors)")
    digest = checkpoint_digest(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    config = ckpt.config
    n_mels, prefix_dim, vocab = config.features.n_mels, config.decoder.mamba.d_model, config.vocab_size
    specs = spec.pipeline(n_mels=n_mels, prefix_dim=prefix_dim, vocab_size=vocab)
    stateful = spec.stateful_pipeline(n_mels=n_mels, prefix_dim=prefix_dim, vocab_size=vocab)
    specs = {**specs, **stateful}
    versions = {name: next_version(out / name) for name in specs}
    log(f"      sha256 {digest[:16]}…  n_mels={n_mels} prefix_dim={prefix_dim} vocab={vocab}")
    log("      new versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    staging = Path(tempfile.mkdtemp(prefix="mambaserve-build-"))
    try:
        encoder_module = TritonEncoder(EncoderForExport(ckpt.model)).eval()
        enc_dir = staging / spec.ENCODER / str(versions[spec.ENCODER])
        enc_dir.mkdir(parents=True)
        onnx_path = enc_dir / "model.onnx"

        steps.start("exporting the encoder to ONNX (dynamic batch and frames)")
        try:
            exporter(encoder_module, onnx_path, n_mels=n_mels)
        except BuildError:
            raise
        except Exception as e:  # any exporter failure is a build failure with the exporter's reason
            raise BuildError(f"ONNX export of the encoder failed: {type(e).__name__}: {e}") from e
        log(f"      {onnx_path.name}: {onnx_path.stat().st_size / 1e6:.1f} MB")

        steps.start(f"checking ONNX against PyTorch at (batch, frames) {list(encoder_export.PARITY_SHAPES)}")
        parity = encoder_export.check_parity(
            onnx_path,
            encoder_module,
            n_mels=n_mels,
            trace_shape=encoder_export.TRACE_SHAPE if exporter is encoder_export.export_onnx else None,
            progress=lambda r: log(
                f"      batch={r.batch} frames={r.frames}: max relative error {r.worst:.2e} (limit {encoder_export.RTOL:g})"
            ),
        )

        steps.start("TensorRT engine")
        platform = ONNX_PLATFORM
        skipped = tensorrt_skip_reason(options)
        if skipped:
            log(f"      skipped: {skipped}; the encoder is served from ONNX")
        else:
            profile = tensorrt_engine.Profile().resolved(
                config.features.sample_rate / config.features.hop_length
            )
            plan = tensorrt_engine.build_engine(
                onnx_path,
                enc_dir / tensorrt_engine.PLAN_FILENAME,
                n_mels=n_mels,
                profile=profile,
                fp16=options.fp16,
                log=log,
            )
            _check_engine(plan, onnx_path, n_mels, options.fp16, log)
            onnx_path.unlink()  # the plan replaces it; keeping both would make the folder ambiguous
            platform = TENSORRT_PLATFORM
        if options.int8 and platform == ONNX_PLATFORM:
            q = encoder_export.quantize_int8(onnx_path, n_mels)
            log(
                f"      INT8 weights: {q.fp32_bytes / 1e6:.1f} -> {q.int8_bytes / 1e6:.1f} MB, relative change "
                f"of CTC log-probs {q.logprob_error:.2e}, prefix {q.prefix_error:.2e} "
                f"(limit {encoder_export.INT8_RTOL:g})"
            )
        elif options.int8:
            log("      note: --int8 applies to the ONNX encoder only; the TensorRT engine is built as asked")
        if options.fp16 and platform != TENSORRT_PLATFORM:
            log("      note: --fp16 applies to the TensorRT engine only; the ONNX encoder stays FP32")

        steps.start(
            f"exporting the decoder's decode step to ONNX and checking it against PyTorch (batches "
            f"{list(step_export.PARITY_BATCHES)}, a {step_export.ROLLOUT_STEPS}-token greedy rollout)"
        )
        step_path = staging / spec.DECODER_STEP_FILE
        step_export.export_decoder_step(DecoderStepForExport(ckpt.model.decoder), step_path)
        step_export.check_step_parity(
            step_path,
            ckpt.model.decoder,
            progress=lambda r: log(
                f"      batch={r.batch}: max relative error {r.worst:.2e} (limit {step_export.RTOL:g})"
            ),
        )
        rollout = step_export.check_rollout_parity(step_path, ckpt.model.decoder)
        log(
            f"      greedy rollout, {rollout.batch} random prefixes x {rollout.steps} tokens: same tokens"
            f"{f' (up to {rollout.ties} exact ties)' if rollout.ties else ''}, logits max relative error "
            f"{rollout.worst_logits:.2e} (limit {step_export.ROLLOUT_RTOL:g}); "
            f"{spec.DECODER_STEP_FILE}: {step_path.stat().st_size / 1e6:.1f} MB"
        )

        steps.start(f"packaging the python models ({', '.join(PYTHON_MODELS)}): weights, tokenizer, config")
        for name, (module, parts) in PYTHON_MODELS.items():
            vdir = staging / name / str(versions[name])
            vdir.mkdir(parents=True)
            save_checkpoint(vdir / CHECKPOINT_DIR, ckpt.model, ckpt.tokenizer, config, parts=parts)
            if name in DECODING_MODELS:  # the word-level search (decoding method ctc_lm) reads these
                for lm_file in (LM_FILE, LEXICON_FILE):
                    if (checkpoint / lm_file).is_file():
                        shutil.copyfile(checkpoint / lm_file, vdir / CHECKPOINT_DIR / lm_file)
            (vdir / "model.py").write_text(python_model_file(module, name))
            size = sum(f.stat().st_size for f in (vdir / CHECKPOINT_DIR).iterdir())
            extra = ""
            if name in DECODING_MODELS:
                shutil.copyfile(step_path, vdir / spec.DECODER_STEP_FILE)
                extra = f" + {spec.DECODER_STEP_FILE}"
            log(f"      {name}: parts {list(parts)}, {size / 1e6:.1f} MB{extra}")
        step_path.unlink()

        steps.start("generating config.pbtxt files and warm-up data")
        warm = warmup_shapes(encoder_module, n_mels)
        for name, text in generate_configs(config, options, warm, platform).items():
            (staging / name).mkdir(exist_ok=True)
            (staging / name / "config.pbtxt").write_text(text)
        for relative, data in warmup_files(warm).items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(data)
        info = {
            "build_format": BUILD_FORMAT,
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": digest,
            "encoder_platform": platform,
            "options": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(options).items()},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions,
        }
        for name, version in versions.items():
            vdir = staging / name / str(version)
            vdir.mkdir(parents=True, exist_ok=True)
            (vdir / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")

        steps.start("checking the ensemble wiring")
        checked = check_wiring(staging)
        log(f"      ok: {', '.join(checked)}")

        if options.verify_load:
            steps.start("loading every model in a real tritonserver")

            try:
                loaded = check_loads(staging)
            except ServerError as e:
                raise BuildError(f"the built repository does not load:\n{e}") from e
            log("      ready: " + ", ".join(f"{k} v{v}" for k, v in sorted(loaded.items())))

        steps.start(f"installing the new versions into {out}")
        _install(staging, out, versions)
        steps.done()
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    result = BuildResult(
        repository=out,
        versions=versions,
        encoder_platform=platform,
        checkpoint_sha256=digest,
        tensorrt_skipped=skipped,
        parity=parity,
        seconds=time.monotonic() - started,
    )
    log(f"built {out} in {result.seconds:.0f} s: " + ", ".join(f"{k} v{v}" for k, v in versions.items()))
    return result


def tensorrt_skip_reason(options: BuildOptions) -> str | None:
    """Why this build serves the encoder from ONNX rather than TensorRT (None: build the engine)."""
    if not options.tensorrt:
        return "not requested (pass --tensorrt on a GPU host with TensorRT)"
    return tensorrt_engine.unavailable_reason()


def warmup_shapes(encoder_module, n_mels: int) -> dict:
    """Shapes of one bucket of silence through the encoder (a ``TritonEncoder``): what the warm-up
    requests of the encoder and the decoder look like."""
    frames = spec.FEATURE_BUCKET_FRAMES
    with torch.inference_mode():
        prefix, prefix_len, ctc, ctc_len = encoder_module(
            torch.zeros(1, frames, n_mels), torch.tensor([[frames]], dtype=torch.long)
        )
    return {
        "frames": frames,
        "prefix_len": int(prefix.shape[1]),
        "prefix_valid": int(prefix_len[0, 0]),
        "ctc_len": int(ctc.shape[1]),
        "ctc_valid": int(ctc_len[0, 0]),
    }


WARMUP_FILES = {
    spec.ENCODER: {"feature_lengths": "frames"},
    spec.DECODER: {"prefix_lengths": "prefix_valid", "ctc_lengths": "ctc_valid"},
}
"""model -> {warm-up data file in <model>/warmup/: the warm-up shape (key of warmup_shapes) it holds}."""


def warmup_files(warm: dict) -> dict[str, bytes]:
    """`<model>/warmup/<file>` -> its bytes: one int64 length each, raw little-endian (Triton's format)."""
    return {
        f"{model}/{WARMUP_DIR}/{name}": np.asarray([warm[key]], dtype="<i8").tobytes()
        for model, files in WARMUP_FILES.items()
        for name, key in files.items()
    }


def generate_configs(
    config: ModelConfig, options: BuildOptions, warm: dict, platform: str = ONNX_PLATFORM
) -> dict[str, str]:
    """Every model's config.pbtxt text, from the contract (``contract/spec.py``), the checkpoint's sizes
    and the build options: what a build writes and what the drift test regenerates."""
    n_mels, prefix_dim, vocab = config.features.n_mels, config.decoder.mamba.d_model, config.vocab_size
    filename = tensorrt_engine.PLAN_FILENAME if platform == TENSORRT_PLATFORM else "model.onnx"
    configs = _configs(
        spec.pipeline(n_mels=n_mels, prefix_dim=prefix_dim, vocab_size=vocab),
        options,
        platform,
        filename,
        warm,
    )
    configs.update(
        _stateful_configs(
            spec.stateful_pipeline(n_mels=n_mels, prefix_dim=prefix_dim, vocab_size=vocab), options
        )
    )
    return {name: mc.to_text(cfg) for name, cfg in configs.items()}


def _configs(specs, options: BuildOptions, platform: str, filename: str, warm: dict) -> dict:
    def deployment(name: str, gpu: bool, parameters: dict[str, str]) -> mc.Deployment:
        return mc.Deployment(
            kind="KIND_GPU" if gpu else "KIND_CPU",
            count=int(options.instances.get(name, 1)),
            max_queue_delay_us=options.max_queue_delay_us,
            parameters=parameters,
        )

    torch_params = {"torch_threads": str(options.torch_threads)} if options.torch_threads else {}
    decoder_params = {**torch_params, "decode_step": options.decode_step}
    if options.decoding_method:
        decoder_params["decoding_method"] = options.decoding_method
    ort_params = {"intra_op_thread_count": str(options.ort_threads)} if options.ort_threads else {}

    fe, enc, dec = spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER
    enc_warm, prefix_warm, ctc_warm = "feature_lengths", "prefix_lengths", "ctc_lengths"  # see WARMUP_FILES
    n_mels = specs[enc].inputs[0].dims[-1]
    prefix_dim = specs[dec].inputs[0].dims[-1]
    vocab = specs[dec].inputs[2].dims[-1]
    Warm, Inp = mc.Warmup, mc.WarmupInput
    return {
        fe: mc.model_config(
            specs[fe],
            backend="python",
            deployment=deployment(fe, False, torch_params),
            warmup=[Warm("one_second_of_silence", {spec.AUDIO.name: Inp((spec.SAMPLE_RATE,))})],
        ),
        enc: mc.model_config(
            specs[enc],
            platform=platform,
            default_model_filename=filename,
            deployment=deployment(enc, options.gpu or platform == TENSORRT_PLATFORM, ort_params),
            warmup=[
                Warm(
                    "one_bucket",
                    {
                        spec.FEATURES.name: Inp((warm["frames"], n_mels)),
                        spec.FEATURE_LENGTHS.name: Inp((1,), enc_warm),
                    },
                )
            ],
        ),
        dec: mc.model_config(
            specs[dec],
            backend="python",
            deployment=deployment(dec, options.gpu, decoder_params),
            warmup=[
                Warm(
                    "one_bucket",
                    {
                        spec.PREFIX.name: Inp((warm["prefix_len"], prefix_dim)),
                        spec.PREFIX_LENGTHS.name: Inp((1,), prefix_warm),
                        spec.CTC_LOGPROBS.name: Inp((warm["ctc_len"], vocab)),
                        spec.CTC_LENGTHS.name: Inp((1,), ctc_warm),
                    },
                )
            ],
        ),
        spec.ASR: mc.ensemble_config(specs[spec.ASR]),
    }


def _stateful_configs(specs, options: BuildOptions) -> dict:
    """Configs of the stateful models. No warm-up requests (they would need sequences): each model
    warms up on a spare slot in initialize(). Triton's candidate sequences exceed each slot pool, so
    a sequence beyond the pool reaches the model and gets its clear "pool full" error (a refused
    sequence keeps its Triton candidate until the idle timeout) instead of queueing in Triton."""

    def deployment(name: str, parameters: dict[str, str]) -> mc.Deployment:
        params = dict(parameters)
        if options.torch_threads:
            params["torch_threads"] = str(options.torch_threads)
        return mc.Deployment(
            kind="KIND_GPU" if options.gpu else "KIND_CPU",
            count=int(options.instances.get(name, 1)),
            max_queue_delay_us=options.max_queue_delay_us,
            parameters=params,
        )

    decoding = {"decoding_method": options.decoding_method} if options.decoding_method else {}
    decoding["decode_step"] = options.decode_step
    slots = options.stream_slots
    sequence = mc.SequenceBatching(
        max_sequence_idle_us=int(options.stream_idle_s * 1e6),
        max_candidate_sequences=2 * slots,
        max_queue_delay_us=options.max_queue_delay_us,
    )
    enc, dec, ses = spec.STREAMING_ENCODER, spec.STREAMING_DECODER, spec.DECODER_SESSION
    return {
        enc: mc.model_config(
            specs[enc],
            backend="python",
            sequence=sequence,
            deployment=deployment(
                enc,
                {
                    "max_sequences": str(slots),
                    "max_sequences_per_client": str(min(slots, options.stream_slots_per_client)),
                },
            ),
        ),
        # The decoder's pool is twice the encoder's: a sequence that ended in the encoder may still be
        # queued here while a new one starts (see backends/streaming_decoder.py).
        dec: mc.model_config(
            specs[dec],
            backend="python",
            sequence=mc.SequenceBatching(
                sequence.max_sequence_idle_us, 4 * slots, options.max_queue_delay_us
            ),
            deployment=deployment(dec, {"max_sequences": str(2 * slots), **decoding}),
        ),
        spec.ASR_STREAMING: mc.ensemble_config(specs[spec.ASR_STREAMING]),
        ses: mc.model_config(
            specs[ses],
            backend="python",
            decoupled=True,
            deployment=deployment(
                ses,
                {
                    "max_sessions": str(options.session_slots),
                    "max_sessions_per_client": str(options.session_slots_per_client),
                    "min_audio_seconds": repr(float(options.session_min_audio_s)),
                    "idle_seconds": repr(float(options.session_idle_s)),
                    "state_dtype": options.session_state_dtype,
                    **decoding,
                },
            ),
        ),
    }


def _check_engine(plan: Path, onnx_path: Path, n_mels: int, fp16: bool, log: Log) -> None:
    """TensorRT vs ONNX Runtime on a few shapes (looser limits: TF32/FP16 arithmetic on the GPU)."""
    limit = 2e-2 if fp16 else 2e-3
    for batch, frames in ((1, 64), (3, 256), (2, 704)):
        feats, lengths = encoder_export.example(batch, frames, n_mels, seed=2)
        expected = encoder_export.run_onnx(onnx_path, feats.numpy(), lengths.numpy())
        actual = tensorrt_engine.run_engine(
            plan,
            {encoder_export.INPUT_NAMES[0]: feats.numpy(), encoder_export.INPUT_NAMES[1]: lengths.numpy()},
            encoder_export.OUTPUT_NAMES,
        )
        errors = {
            name: relative_error(a.astype(np.float32), b)
            for name, a, b in zip(encoder_export.OUTPUT_NAMES, actual, expected)
        }
        worst = max(errors.values())
        log(
            f"      TensorRT vs ONNX batch={batch} frames={frames}: max relative error {worst:.2e} (limit {limit:g})"
        )
        if not worst <= limit:
            raise tensorrt_engine.TensorRTError(
                f"TensorRT engine differs from ONNX at batch={batch} frames={frames}: {errors} (limit {limit:g})"
            )


def _install(staging: Path, out: Path, versions: dict[str, int]) -> None:
    """Move the staged version folders in, then replace warm-up data and configs (atomic renames)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, version in versions.items():
        target = out / name / str(version)
        if target.exists():
            raise BuildError(
                f"{target} appeared during the build (another build running?); nothing installed"
            )
    for name, version in versions.items():
        (out / name).mkdir(exist_ok=True)
        shutil.move(str(staging / name / str(version)), str(out / name / str(version)))
        warm = staging / name / WARMUP_DIR
        if warm.exists():
            old = out / name / WARMUP_DIR
            tmp = out / name / f".{WARMUP_DIR}.new"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(warm, tmp)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, old)
        tmp_cfg = out / name / ".config.pbtxt.new"
        shutil.copyfile(staging / name / "config.pbtxt", tmp_cfg)
        os.replace(tmp_cfg, out / name / "config.pbtxt")
