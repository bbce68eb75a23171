"""`make demo`: build the repository if needed, serve it, transcribe the sample clips over gRPC, stop.

    python -m mambaserve.build.demo --checkpoint checkpoints/default --repository model_repository

The repository is rebuilt (as a new version) when it is missing or stale: its latest versions were
built from a checkpoint with another sha256, or by an older build format.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mambaserve.build import spec
from mambaserve.build.versioning import latest_version, read_build_info

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent / "clients" / "samples" / "samples.jsonl"
MODELS = (spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER, spec.ASR)


def staleness(checkpoint: Path, repository: Path) -> str | None:
    """Why the repository must be (re)built for this checkpoint, or None when it is up to date."""
    from mambaserve.build.repository import BUILD_FORMAT, checkpoint_digest

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
    import socket

    from mambaserve.build.server import free_port

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
    try:
        from mambaserve.clients.client import ASRClient
    except ImportError:  # the clients library is optional for the demo: fall back to tritonclient
        ASRClient = None
    results = []
    if ASRClient is not None:
        with ASRClient(grpc_url, protocol="grpc") as client:
            for row in samples:
                t = client.transcribe(str(row["audio"]), prompt=row.get("prompt"))
                results.append((row, t.text, t.latency_s))
        return results
    import numpy as np
    import soundfile as sf
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    for row in samples:
        audio, sr = sf.read(str(row["audio"]), dtype="float32", always_2d=True)
        if sr != spec.SAMPLE_RATE:
            raise SystemExit(f"error: {row['audio']} is {sr} Hz; the demo fallback needs {spec.SAMPLE_RATE} Hz")
        audio = audio.mean(axis=1)[None, :]
        inp = grpcclient.InferInput(spec.AUDIO.name, list(audio.shape), spec.AUDIO.wire_dtype)
        inp.set_data_from_numpy(np.ascontiguousarray(audio))
        inputs = [inp]
        if row.get("prompt"):
            prompt = grpcclient.InferInput(spec.PROMPT.name, [1, 1], spec.PROMPT.wire_dtype)
            prompt.set_data_from_numpy(np.array([[row["prompt"].encode("utf-8")]], dtype=object))
            inputs.append(prompt)
        t0 = time.perf_counter()
        result = client.infer(spec.ASR, inputs)
        latency = time.perf_counter() - t0
        results.append((row, result.as_numpy(spec.TRANSCRIPT.name)[0, 0].decode("utf-8"), latency))
    return results


def _wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER with the clients' text normalisation when available (the rule training used)."""
    try:
        from mambaserve.clients.evaluate import score

        return score(references, hypotheses)[0]
    except ImportError:
        import jiwer

        return float(jiwer.wer([r.lower() for r in references], [h.lower() or "<empty>" for h in hypotheses]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mambaserve.build.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--samples", default=str(DEFAULT_SAMPLES), help="JSONL manifest {id, audio, text, duration}")
    args = parser.parse_args(argv)
    checkpoint, repository, manifest = Path(args.checkpoint), Path(args.repository), Path(args.samples)

    if not (checkpoint / "model.safetensors").exists():
        print(f"error: no checkpoint at {checkpoint} (model.safetensors missing); `make train` creates it", file=sys.stderr)
        return 1
    if not manifest.exists():
        print(f"error: no sample manifest at {manifest}", file=sys.stderr)
        return 1
    samples = load_samples(manifest)

    print(f"== model repository {repository}")
    reason = staleness(checkpoint, repository)
    if reason:
        from mambaserve.build.errors import BuildError
        from mambaserve.build.repository import BuildOptions, build_repository

        print(f"  building: {reason}")
        try:
            # The server started next is the load check, so the build skips its own.
            build_repository(checkpoint, repository, BuildOptions(verify_load=False), log=lambda s: print("  " + s))
        except BuildError as e:
            print(f"error: build failed: {e}", file=sys.stderr)
            return 1
    else:
        versions = ", ".join(f"{m} v{latest_version(repository / m)}" for m in MODELS)
        print(f"  up to date with {checkpoint} ({versions})")

    from mambaserve.build.server import ServerError, TritonServer

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
            wer = _wer([r.get("text", "") for r, _, _ in results], [t for _, t, _ in results])
            latencies = sorted(lat for _, _, lat in results)
            print(f"\n== {len(results)} clips, WER {wer:.1%}, median latency {latencies[len(latencies) // 2] * 1000:.0f} ms")
    finally:
        print("== stopping tritonserver")
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
