"""`mambaserve-eval`: score the served model on a JSONL manifest, through the real server.

This measures what users get (server-side feature extraction, batching, decoding, the network), not
what the checkpoint scores in PyTorch. Manifest lines: {"id", "audio", "text", "duration"} with an
optional prompt field; relative audio paths are relative to the manifest's folder. A clip that fails
(unreadable file, server error) is counted and listed, never fatal. The LAST line printed is one JSON
object (n, n_ok, n_failed, wer, cer, rtfx, p50_ms, p95_ms, p99_ms, ...) for scripts to parse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mambaserve.clients.cli import positive_float, positive_int
from mambaserve.clients.request import DEFAULT_URLS, PROTOCOLS, Transcription
from mambaserve.contract import spec
from mambaserve.model.scoring import score
from tqdm import tqdm


@dataclass(frozen=True)
class ManifestEntry:
    id: str
    audio: str  # resolved path
    text: str
    duration: float | None = None
    prompt: str | None = None


@dataclass
class EvalReport:
    """Corpus scores over the clips that succeeded, plus the per-clip rows."""

    n: int
    n_failed: int
    wer: float | None
    cer: float | None
    rtfx: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    audio_seconds: float
    wall_seconds: float
    rows: list[dict] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        return self.n - self.n_failed

    def summary(self) -> dict:
        """The JSON line `mambaserve-eval` ends with."""
        keys = (
            "n",
            "n_ok",
            "n_failed",
            "wer",
            "cer",
            "rtfx",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "mean_ms",
            "audio_seconds",
            "wall_seconds",
        )
        out = {k: getattr(self, k) for k in keys}
        out["failures"] = [{"id": r["id"], "error": r["error"]} for r in self.rows if r.get("error")][:20]
        return out


def read_manifest(
    path: str | os.PathLike, limit: int | None = None, prompt_field: str | None = "prompt"
) -> list[ManifestEntry]:
    """Parse a JSONL manifest; a malformed line is an error naming the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = path.parent
    entries: list[ManifestEntry] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(entries) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("audio", "text"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{where}: field '{key}' must be a string, got {row.get(key)!r}")
            prompt = row.get(prompt_field) if prompt_field else None
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError(
                    f"{where}: field '{prompt_field}' must be a string or absent, got {prompt!r}"
                )
            duration = row.get("duration")
            if duration is not None and not isinstance(duration, (int, float)):
                raise ValueError(f"{where}: field 'duration' must be a number, got {duration!r}")
            audio = row["audio"] if os.path.isabs(row["audio"]) else str(base / row["audio"])
            entries.append(
                ManifestEntry(
                    str(row.get("id", f"line{lineno}")),
                    audio,
                    row["text"],
                    None if duration is None else float(duration),
                    prompt,
                )
            )
    return entries


def evaluate(
    client, entries: Sequence[ManifestEntry], concurrency: int = 4, progress: bool = True
) -> EvalReport:
    """Send every entry through `client` (an ASRClient), `concurrency` in flight, and score them."""
    rows: list[dict] = [{} for _ in entries]
    prompts = [e.prompt for e in entries]
    start = time.perf_counter()
    with tqdm(total=len(entries), desc="eval", unit="clip", disable=not progress, file=sys.stderr) as bar:
        for i, res in client.iter_transcribe([e.audio for e in entries], prompts, concurrency):
            e = entries[i]
            if isinstance(res, Transcription):
                rows[i] = {
                    "id": e.id,
                    "audio": e.audio,
                    "ref": e.text,
                    "hyp": res.text,
                    "latency_ms": res.latency_s * 1e3,
                    "audio_seconds": res.audio_seconds,
                }
            else:
                rows[i] = {
                    "id": e.id,
                    "audio": e.audio,
                    "ref": e.text,
                    "error": f"{type(res).__name__}: {res}",
                }
            bar.update(1)
    wall = time.perf_counter() - start
    ok = [r for r in rows if "error" not in r]
    wer = cer = None
    if ok:
        wer, cer = score([r["ref"] for r in ok], [r["hyp"] for r in ok])
    lat = np.array([r["latency_ms"] for r in ok], dtype=np.float64)
    pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: None)
    audio_seconds = float(sum(r["audio_seconds"] for r in ok))
    return EvalReport(
        n=len(entries),
        n_failed=len(entries) - len(ok),
        wer=wer,
        cer=cer,
        rtfx=audio_seconds / wall if wall > 0 else 0.0,
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        mean_ms=float(lat.mean()) if lat.size else None,
        audio_seconds=audio_seconds,
        wall_seconds=wall,
        rows=rows,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mambaserve-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", help='JSONL manifest: {"id", "audio", "text", "duration"} per line')
    p.add_argument(
        "--url",
        default=None,
        help=f"server host:port (default {DEFAULT_URLS['grpc']} for grpc, {DEFAULT_URLS['http']} for http)",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument("--model", default=spec.ASR, help="model name (default: %(default)s)")
    p.add_argument(
        "--concurrency", type=positive_int, default=4, help="requests in flight (default: %(default)s)"
    )
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N manifest entries")
    p.add_argument(
        "--prompt-field",
        default="prompt",
        help="manifest field sent as PROMPT when present (default: %(default)s; '' to send none)",
    )
    p.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds per request (default: %(default)s)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the model to become ready first (default: no wait)",
    )
    p.add_argument(
        "--out", default=None, help="also write one JSON row per clip (ref, hyp, latency, error) here"
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        entries = read_manifest(args.manifest, args.limit, args.prompt_field or None)
    except (OSError, ValueError) as exc:
        print(f"mambaserve-eval: {exc}", file=sys.stderr)
        return 2
    if not entries:
        print(f"mambaserve-eval: manifest {args.manifest} has no entries", file=sys.stderr)
        return 2

    from mambaserve.clients.client import ASRClient

    with ASRClient(args.url, protocol=args.protocol, model=args.model, timeout=args.timeout) as client:
        if args.wait > 0:
            try:
                client.wait_ready(args.wait)
            except Exception as exc:
                print(f"mambaserve-eval: {exc}", file=sys.stderr)
                return 1
        report = evaluate(client, entries, args.concurrency, progress=not args.no_progress)

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for row in report.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    for row in report.rows:
        if row.get("error"):
            print(f"FAILED {row['id']}: {row['error']}", file=sys.stderr)

    def fmt(x, spec_="{:.4f}"):
        return "n/a" if x is None else spec_.format(x)

    print(
        f"clips: {report.n} ({report.n_failed} failed)  audio: {report.audio_seconds:.1f} s  "
        f"wall: {report.wall_seconds:.2f} s  RTFx: {report.rtfx:.2f}"
    )
    print(
        f"WER: {fmt(report.wer)}  CER: {fmt(report.cer)}  latency p50/p95/p99: "
        f"{fmt(report.p50_ms, '{:.1f}')}/{fmt(report.p95_ms, '{:.1f}')}/{fmt(report.p99_ms, '{:.1f}')} ms"
    )
    print(json.dumps(report.summary(), ensure_ascii=False))
    return 0 if report.n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
