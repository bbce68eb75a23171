"""`mambaserve-session`: one audio file, several prompts, tokens printed as they stream.

Opens a decoder session on the file (the encoder runs once), then for each --prompt generates from
the kept state and prints the tokens as the server sends them, followed by the token count and the
time per token. Exit status: 0 when every prompt finished, 1 on a server error, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from mambaserve.clients.cli import positive_float
from mambaserve.clients.request import DEFAULT_URLS, PROTOCOLS, ASRError
from mambaserve.contract import spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mambaserve-session", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    p.add_argument("file", help="audio file (WAV, FLAC, ...; resampled to 16 kHz)")
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a prompt to generate with (repeatable; default: one run without a prompt)",
    )
    p.add_argument("--context", default=None, help="text added to the session's kept history first")
    p.add_argument(
        "--method", choices=("greedy", "beam", "sample"), default=None, help="default: the server's"
    )
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument(
        "--url",
        default=None,
        help=f"host:port (default {DEFAULT_URLS['grpc']} for grpc, {DEFAULT_URLS['http']} for http)",
    )
    p.add_argument("--model", default=spec.DECODER_SESSION)
    p.add_argument("--timeout", type=positive_float, default=60.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mambaserve.clients.audio import load_audio
    from mambaserve.clients.session import SessionClient

    try:
        audio = load_audio(args.file, spec.SAMPLE_RATE)
    except (OSError, ValueError) as e:
        print(f"error: {args.file}: {e}", file=sys.stderr)
        return 2
    settings = {
        "method": args.method,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "seed": args.seed,
        "beam_size": args.beam_size,
    }
    try:
        with SessionClient(
            args.url, protocol=args.protocol, model=args.model, timeout=args.timeout
        ) as client:
            session = client.open(audio, context=args.context)
            print(f"session {session.id}: history {session.history_length} positions", flush=True)
            try:
                for prompt in args.prompt or [None]:
                    print(f"[{prompt or 'no prompt'}] ", end="", flush=True)
                    times, n = [], 0
                    for event in session.stream(prompt, **settings):
                        if event.is_final:  # one final response (the server's default): the whole text
                            if n == 0:
                                print(event.transcript, end="", flush=True)
                                n = len(event.token_ids)
                            break
                        print(event.text, end="", flush=True)
                        times.append(event.at)
                        n += 1
                    per_token = f", {(times[-1] - times[0]) / (n - 1) * 1e3:.2f} ms/token" if n > 1 else ""
                    print(f"\n    {n} tokens{per_token}", flush=True)
            finally:
                session.close()
    except ASRError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
