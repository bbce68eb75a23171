"""`make demo`: build the repository if needed, serve it, transcribe the sample clips over gRPC, stop.

The top layer beside the load tests: it uses the build, the launcher and the clients.

    python -m mambaserve.demo --checkpoint checkpoints/default --repository model_repository

The repository is rebuilt (as a new version) when it is missing or stale: its latest versions were
built from a checkpoint with another sha256, or by an older build format.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from importlib import resources
from pathlib import Path

from mambaserve.build.errors import BuildError
from mambaserve.build.repository import BUILD_FORMAT, BuildOptions, build_repository, checkpoint_digest
from mambaserve.build.versioning import latest_version, read_build_info
from mambaserve.clients.client import ASRClient
from mambaserve.contract import spec
from mambaserve.model.scoring import score
from mambaserve.serving.server import ServerError, TritonServer, free_port

DEFAULT_SAMPLES = Path(str(resources.files("mambaserve.clients") / "samples" / "samples.jsonl"))
MODELS = (spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER, spec.ASR)
WEB_HINT = (
    "== speak to it: `make serve` in one shell, `make web` in another, then open http://127.0.0.1:8080/ "
    "(the page that listens: microphone or a file; clients/README.md)"
)


def staleness(checkpoint: Path, repository: Path) -> str | None:
    """Why the repository must be (re)built for this checkpoint, or None when it is up to date."""
    digest = checkpoint_digest(checkpoint)
    for model in MODELS:
        if latest_version(repository / model) is None or not (repository / model / "config.pbtxt").exists():
            return f"{repository / model} has no version yet"
        info = read_build_info(repository / model)
        if info is None:
            return f"{repository / model} has no build record"
        if info.get("build_format") != BUILD_FORMAT:
            return f"{model} was built by build format {info.get('build_format')}, now {BUILD_FORMAT}"
        if info.get("checkpoint_sha256") != digest:
            return f"{model} was built from another checkpoint (sha256 {str(info.get('checkpoint_sha256'))[:12]}…, now {digest[:12]}…)"
    return None


def _port(env: str, default: int) -> int:
    """The port from the environment (as `make serve` uses), or a free one if that is taken."""
    port = int(os.environ.get(env) or default)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            other = free_port()
            print(f"  port {port} ({env}) is busy; using {other}")
            return other
    return port


def load_samples(manifest: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as e:
                raise SystemExit(f"error: {manifest}:{n} is not JSON: {e}") from None
            audio = Path(row["audio"])
            row["audio"] = audio if audio.is_absolute() else manifest.parent / audio
            rows.append(row)
    return rows


def transcribe_samples(grpc_url: str, samples: list[dict]) -> list[tuple[dict, str, float]]:
    """(sample, transcript, latency seconds) for each sample, over gRPC, one request at a time."""
    results = []
    with ASRClient(grpc_url, protocol="grpc") as client:
        for row in samples:
            t = client.transcribe(str(row["audio"]), prompt=row.get("prompt"))
            results.append((row, t.text, t.latency_s))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mambaserve.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument(
        "--samples", default=str(DEFAULT_SAMPLES), help="JSONL manifest {id, audio, text, duration}"
    )
    args = parser.parse_args(argv)
    checkpoint, repository, manifest = Path(args.checkpoint), Path(args.repository), Path(args.samples)

    if not (checkpoint / "model.safetensors").exists():
        print(
            f"error: no checkpoint at {checkpoint} (model.safetensors missing); `make train` creates it",
            file=sys.stderr,
        )
        return 1
    if not manifest.exists():
        print(f"error: no sample manifest at {manifest}", file=sys.stderr)
        return 1
    samples = load_samples(manifest)

    print(f"== model repository {repository}")
    reason = staleness(checkpoint, repository)
    if reason:
        print(f"  building: {reason}")
        try:
            # The server started next is the load check, so the build skips its own.
            build_repository(
                checkpoint, repository, BuildOptions(verify_load=False), log=lambda s: print("  " + s)
            )
        except BuildError as e:
            print(f"error: build failed: {e}", file=sys.stderr)
            return 1
    else:
        versions = ", ".join(f"{m} v{latest_version(repository / m)}" for m in MODELS)
        print(f"  up to date with {checkpoint} ({versions})")

    ports = {
        "http_port": _port("HTTP_PORT", 8000),
        "grpc_port": _port("GRPC_PORT", 8001),
        "metrics_port": _port("METRICS_PORT", 8002),
    }
    print("== starting tritonserver (CPU) ...")
    t0 = time.perf_counter()
    try:
        server = TritonServer(repository, **ports).start()
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        print(f"  ready in {time.perf_counter() - t0:.1f} s: gRPC {server.grpc_url}, HTTP {server.http_url}")
        print(f"== transcribing {len(samples)} sample clips from {manifest} over gRPC")
        results = transcribe_samples(server.grpc_url, samples)
        for row, text, latency in results:
            print(f"\n  [{row['id']}] {float(row.get('duration', 0)):.1f} s audio, {latency * 1000:.0f} ms")
            if row.get("prompt"):
                print(f"    prompt:     {row['prompt']}")
            print(f"    transcript: {text}")
            print(f"    reference:  {row.get('text', '')}")
        if results:
            wer = score([r.get("text", "") for r, _, _ in results], [t for _, t, _ in results]).wer
            latencies = sorted(lat for _, _, lat in results)
            print(
                f"\n== {len(results)} clips, WER {wer:.1%}, median latency {latencies[len(latencies) // 2] * 1000:.0f} ms"
            )
    finally:
        print("== stopping tritonserver")
        server.stop()
    print(WEB_HINT)
    return 0
