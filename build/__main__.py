"""`python -m mambaserve.build --checkpoint DIR --out model_repository [--tensorrt] [--fp16] [--gpu]`."""

from __future__ import annotations

import argparse
import sys

from mambaserve.build.errors import BuildError
from mambaserve.contract import spec

MODELS = (spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER)
STREAMING_MODELS = (spec.STREAMING_ENCODER, spec.STREAMING_DECODER)
"""Also accepted as MODEL=N (each instance holds its own slot pool; Triton keeps a sequence on one)."""


def _instances(values: list[str]) -> dict[str, int]:
    """`--instances 2` (every model) and/or `--instances decoder=3` (one model)."""
    counts: dict[str, int] = {}
    for value in values:
        name, _, count = value.rpartition("=")
        try:
            n = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--instances {value!r}: expected N or MODEL=N") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"--instances {value!r}: the count must be >= 1")
        if name and name not in MODELS + STREAMING_MODELS:
            raise argparse.ArgumentTypeError(
                f"--instances {value!r}: unknown model {name!r} (one of {MODELS + STREAMING_MODELS})"
            )
        for model in [name] if name else MODELS:
            counts[model] = n
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.build",
        description="Build a new version of every model of a Triton model repository from a checkpoint.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory (model.safetensors, config.json, tokenizer.model)",
    )
    parser.add_argument(
        "--out", default="model_repository", help="model repository to add the new versions to"
    )
    parser.add_argument(
        "--tensorrt",
        action="store_true",
        help="build a TensorRT engine for the encoder (needs tensorrt + a GPU)",
    )
    parser.add_argument("--fp16", action="store_true", help="TensorRT engine in FP16")
    parser.add_argument(
        "--int8", action="store_true", help="ONNX encoder with dynamic INT8 weights (ONNX Runtime quantiser)"
    )
    parser.add_argument("--gpu", action="store_true", help="KIND_GPU instances for the encoder and decoder")
    parser.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="N|MODEL=N",
        help="instances per model (repeatable)",
    )
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=1,
        help="onnxruntime intra-op threads per encoder instance (0: all cores)",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads per python model instance (0: all cores)"
    )
    parser.add_argument(
        "--decoding-method",
        choices=["greedy", "beam", "ctc_lm"],
        default=None,
        help="default: the checkpoint's",
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=spec.MAX_QUEUE_DELAY_MICROSECONDS)
    parser.add_argument(
        "--no-verify-load", action="store_true", help="skip loading the result in a real tritonserver"
    )
    parser.add_argument(
        "--stream-slots",
        type=int,
        default=spec.STREAM_SLOTS,
        help="concurrent asr_streaming sequences per streaming instance (default: %(default)s)",
    )
    parser.add_argument(
        "--stream-idle-s",
        type=float,
        default=spec.STREAM_IDLE_SECONDS,
        help="free an asr_streaming sequence idle this long (default: %(default)s)",
    )
    parser.add_argument(
        "--session-slots",
        type=int,
        default=spec.SESSION_SLOTS,
        help="concurrent decoder sessions (default: %(default)s)",
    )
    parser.add_argument(
        "--session-idle-s",
        type=float,
        default=spec.SESSION_IDLE_SECONDS,
        help="close a decoder session idle this long (default: %(default)s)",
    )
    parser.add_argument(
        "--session-slots-per-client",
        type=int,
        default=spec.SESSION_SLOTS_PER_CLIENT,
        help=f"live decoder sessions one client ({spec.CLIENT_ID_HEADER}) may hold (default: %(default)s)",
    )
    parser.add_argument(
        "--stream-slots-per-client",
        type=int,
        default=spec.STREAM_SLOTS_PER_CLIENT,
        help=f"live asr_streaming sequences one client ({spec.CLIENT_ID_HEADER}) may hold per instance "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--session-min-audio-s",
        type=float,
        default=spec.MIN_SESSION_AUDIO_SECONDS,
        help="shortest audio a decoder session may start with (default: %(default)s)",
    )
    parser.add_argument(
        "--session-state-dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="storage of kept session states (float16/bfloat16 halve it; default: %(default)s, exact)",
    )
    parser.add_argument(
        "--decode-step",
        choices=["onnx", "torch"],
        default="onnx",
        help="what CPU instances generate tokens with: the compiled step in ONNX Runtime or eager "
        "PyTorch (default: %(default)s; GPU instances always use PyTorch + the Triton kernels)",
    )
    args = parser.parse_args(argv)
    try:
        instances = _instances(args.instances)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))

    from mambaserve.build.repository import BuildOptions, build_repository

    try:
        options = BuildOptions(
            tensorrt=args.tensorrt,
            fp16=args.fp16,
            int8=args.int8,
            gpu=args.gpu,
            instances=instances,
            ort_threads=args.ort_threads,
            torch_threads=args.torch_threads,
            decoding_method=args.decoding_method,
            max_queue_delay_us=args.max_queue_delay_us,
            verify_load=not args.no_verify_load,
            stream_slots=args.stream_slots,
            stream_slots_per_client=args.stream_slots_per_client,
            stream_idle_s=args.stream_idle_s,
            session_slots=args.session_slots,
            session_idle_s=args.session_idle_s,
            session_slots_per_client=args.session_slots_per_client,
            session_min_audio_s=args.session_min_audio_s,
            session_state_dtype=args.session_state_dtype,
            decode_step=args.decode_step,
        )
    except ValueError as e:  # a bad option value, named by BuildOptions
        parser.error(str(e))
    try:
        build_repository(args.checkpoint, args.out, options, log=lambda s: print(s, flush=True))
    except BuildError as e:
        print(f"\nbuild FAILED: {e}", file=sys.stderr)
        print(f"{args.out} was not changed.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
