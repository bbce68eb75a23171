"""`mambaserve-transcribe`: transcribe audio files through a running Triton server.

Prints one line per file, in the order given, as soon as it and every file before it are done:
`PATH<TAB>LATENCY ms<TAB>TRANSCRIPT` (or a JSON object per line with --json). A file that fails is
reported on stderr (or as {"file", "error"} with --json) and the others still run; the exit status is
1 if any file failed, 2 for bad arguments, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mambaserve.clients.request import DEFAULT_URLS, PROTOCOLS, Transcription
from mambaserve.contract import spec


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mambaserve-transcribe",
        description="Transcribe WAV/FLAC files with the served `asr` model (any sample rate, any channels).",
    )
    p.add_argument("files", nargs="+", help="audio files (WAV, FLAC, anything libsndfile reads)")
    p.add_argument(
        "--url",
        default=None,
        help=f"server host:port (default {DEFAULT_URLS['grpc']} for grpc, {DEFAULT_URLS['http']} for http)",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument("--model", default=spec.ASR, help="model name (default: %(default)s)")
    p.add_argument("--prompt", default=None, help="text prompt sent with every file")
    p.add_argument(
        "--concurrency", type=positive_int, default=4, help="requests in flight (default: %(default)s)"
    )
    p.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds per request (default: %(default)s)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the model to become ready before sending (default: no wait)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    return p


def _line(path: str, result: Transcription | Exception, as_json: bool) -> tuple[str, bool]:
    """The output line for one file and whether it goes to stdout."""
    if isinstance(result, Exception):
        if as_json:
            return json.dumps({"file": path, "error": str(result)}, ensure_ascii=False), True
        return f"{path}\tERROR\t{result}", False
    if as_json:
        return json.dumps(
            {
                "file": path,
                "text": result.text,
                "latency_ms": round(result.latency_s * 1e3, 3),
                "audio_seconds": round(result.audio_seconds, 4),
            },
            ensure_ascii=False,
        ), True
    return f"{path}\t{result.latency_s * 1e3:.1f} ms\t{result.text}", True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mambaserve.clients.client import ASRClient  # tritonclient import only after --help / bad args

    client = ASRClient(args.url, protocol=args.protocol, model=args.model, timeout=args.timeout)
    failed = 0
    try:
        if args.wait > 0:
            try:
                client.wait_ready(args.wait)
            except Exception as exc:
                print(f"mambaserve-transcribe: {exc}", file=sys.stderr)
                return 1
        done: dict[int, Transcription | Exception] = {}
        next_to_print = 0
        for i, result in client.iter_transcribe(args.files, args.prompt, args.concurrency):
            done[i] = result
            while next_to_print in done:
                res = done.pop(next_to_print)
                failed += isinstance(res, Exception)
                line, to_stdout = _line(args.files[next_to_print], res, args.json)
                print(line, file=sys.stdout if to_stdout else sys.stderr, flush=True)
                next_to_print += 1
    finally:
        client.close()
    if failed:
        print(f"mambaserve-transcribe: {failed} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
