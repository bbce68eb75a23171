"""`mambaserve-stream`: stream a WAV file to `asr_streaming` in chunks, live or N times faster.

Prints a line each time the partial transcript changes (audio position, that chunk's latency, text),
then the final transcript and the per-chunk latency summary. Exit status: 0 on a final transcript,
1 when the server refused the stream or did not answer, 2 for bad arguments or an unreadable file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
from mambaserve.clients.cli import positive_float
from mambaserve.clients.request import DEFAULT_URLS, ASRError
from mambaserve.contract import spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mambaserve-stream", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    p.add_argument("file", help="audio file (WAV, FLAC, anything libsndfile reads; resampled to 16 kHz)")
    p.add_argument("--url", default=DEFAULT_URLS["grpc"], help="gRPC host:port (default: %(default)s)")
    p.add_argument("--model", default=spec.ASR_STREAMING, help="model name (default: %(default)s)")
    p.add_argument(
        "--chunk-ms", type=positive_float, default=320.0, help="chunk length (default: %(default)s ms)"
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="1 = real time, N = N times faster, 0 = as fast as answers come (default: %(default)s)",
    )
    p.add_argument(
        "--prompt", default=None, help="text prompt for the final transcript (sent with the first chunk)"
    )
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true", help="one JSON object per chunk instead of text")
    return p


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.speed < 0:
        print("error: --speed must be >= 0", file=sys.stderr)
        return 2
    from mambaserve.clients.audio import load_audio
    from mambaserve.clients.streaming import StreamingClient

    try:
        audio = load_audio(args.file, spec.SAMPLE_RATE)
    except (OSError, ValueError) as e:
        print(f"error: {args.file}: {e}", file=sys.stderr)
        return 2
    latencies, last = [], None
    try:
        with StreamingClient(args.url, model=args.model, timeout=args.timeout) as client:
            for r in client.stream(audio, chunk_ms=args.chunk_ms, speed=args.speed, prompt=args.prompt):
                latencies.append(r.latency_s)
                if args.json:
                    print(
                        json.dumps(
                            {
                                "chunk": r.index,
                                "audio_s": round(r.audio_end_s, 3),
                                "latency_ms": round(r.latency_s * 1e3, 2),
                                "text": r.text,
                                "final": r.is_final,
                            },
                            ensure_ascii=False,
                        ),
                        flush=True,
                    )
                elif r.is_final:
                    print(
                        f"FINAL   {r.audio_end_s:7.2f} s  {r.latency_s * 1e3:6.1f} ms  {r.text}", flush=True
                    )
                elif r.text != last:
                    print(
                        f"partial {r.audio_end_s:7.2f} s  {r.latency_s * 1e3:6.1f} ms  {r.text}", flush=True
                    )
                last = r.text
    except ASRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ms = [x * 1e3 for x in latencies]
    summary = (
        f"{len(ms)} chunks of {args.chunk_ms:g} ms, {len(audio) / spec.SAMPLE_RATE:.2f} s of audio; chunk latency "
        f"p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms"
    )
    print(summary, file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
