"""NVIDIA's perf_analyzer for this machine: installed automatically, fed real audio, results parsed.

Why the detour: `tritonclient[all]` >= 2.50 pulls only a `perf-analyzer` placeholder without a binary,
and PyPI `perf-analyzer` 2.60 is a manylinux_2_38 wheel that does not install on glibc 2.36. The
`tritonclient==2.47.0` wheel carries a working binary (`tritonclient-2.47.0.data/data/bin/perf_analyzer`);
installing that version would clash with pytriton's `tritonclient~=2.50` pin, so `install()` downloads
the wheel with pip (no deps, no install), extracts the binary, links the two libraries it misses
(`libb64.so.0d`, `libcudart.so.12`) to the copies bundled in `nvidia_pytriton.libs`, and writes a
wrapper script `<venv>/bin/perf_analyzer` that sets LD_LIBRARY_PATH.

    python -m mambaserve.loadtest.perf_analyzer install
    python -m mambaserve.loadtest.perf_analyzer run --url 127.0.0.1:8001 --concurrency 1:16:3 --seconds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from mambaserve.contract import spec
from mambaserve.loadtest import CHECKOUT

WHEEL_VERSION = "2.47.0"
WHEEL_BINARY = f"tritonclient-{WHEEL_VERSION}.data/data/bin/perf_analyzer"
MISSING_LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
MARKER = "# installed by mambaserve.loadtest.perf_analyzer"


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer could not be installed or did not produce results."""


def _pytriton_libs() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"


def wrapper_path() -> Path:
    return Path(sys.executable).parent / "perf_analyzer"


def install(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Install (once) and return the `perf_analyzer` wrapper in this venv's bin/."""
    wrapper = wrapper_path()
    if wrapper.exists() and not force and _works(wrapper):
        return wrapper
    cache = Path(cache_dir or CHECKOUT / ".cache" / "perf_analyzer")
    binary = cache / "bin" / "perf_analyzer"
    if force or not binary.exists():
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--quiet",
                    "-d",
                    tmp,
                    f"tritonclient=={WHEEL_VERSION}",
                ],
                capture_output=True,
                text=True,
            )
            wheels = list(Path(tmp).glob(f"tritonclient-{WHEEL_VERSION}-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise PerfAnalyzerError(
                    f"pip download tritonclient=={WHEEL_VERSION} failed:\n{proc.stderr[-2000:]}"
                )
            binary.parent.mkdir(parents=True, exist_ok=True)
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(WHEEL_BINARY) as src,
                open(binary, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst)
        binary.chmod(0o755)
    shim = cache / "lib"
    shim.mkdir(parents=True, exist_ok=True)
    libs = _pytriton_libs()
    for name, pattern in MISSING_LIBS.items():
        found = sorted(libs.glob(pattern))
        if not found:
            raise PerfAnalyzerError(f"{libs} has no {pattern} (needed as {name} by perf_analyzer)")
        link = shim / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])
    wrapper.write_text(
        "#!/bin/sh\n"
        f"{MARKER} (tritonclient=={WHEEL_VERSION} binary)\n"
        f'export LD_LIBRARY_PATH="{shim}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
        f'exec "{binary}" "$@"\n'
    )
    wrapper.chmod(0o755)
    if not _works(wrapper):
        raise PerfAnalyzerError(
            f"{wrapper} was installed but does not run (missing libraries? try ldd {binary})"
        )
    return wrapper


def _works(wrapper: Path) -> bool:
    try:
        proc = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    # 2.47 prints nothing for --version; a missing library makes the loader fail before main()
    return proc.returncode == 0 and "error while loading" not in proc.stderr


def write_input_data(path: str | os.PathLike, clips: list[np.ndarray]) -> Path:
    """perf_analyzer's --input-data JSON: one entry per clip, AUDIO with its own shape (real speech)."""
    path = Path(path)
    data = [
        {spec.AUDIO.name: {"content": np.asarray(c, np.float32).round(6).tolist(), "shape": [len(c)]}}
        for c in clips
    ]
    path.write_text(json.dumps({"data": data}))
    return path


_AVG_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)
"""Columns of perf_analyzer's CSV that add up to its average client latency (no 'Avg latency' column)."""


def run(
    *,
    url: str,
    input_data: str | os.PathLike,
    concurrency: str = "1",
    protocol: str = "grpc",
    model: str = spec.ASR,
    measurement_ms: int = 4000,
    stability: int = 50,
    max_trials: int = 10,
    timeout: float = 600.0,
    extra: tuple[str, ...] = (),
) -> list[dict]:
    """Run perf_analyzer (concurrency "1" or "1:16:4" = start:end:step); one dict per concurrency.

    `stability` is perf_analyzer's -s (percent the last 3 windows may differ): its default of 10 is
    rarely met on a shared 2-core machine, and without a stable measurement it writes nothing.

    Keys: concurrency, infer_per_sec, p50_ms, p90_ms, p95_ms, p99_ms, avg_ms, queue_ms, compute_ms.
    """
    exe = install()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        cmd = [
            str(exe),
            "-m",
            model,
            "-u",
            url,
            "-i",
            protocol,
            "--input-data",
            str(input_data),
            "--concurrency-range",
            concurrency,
            "--measurement-interval",
            str(measurement_ms),
            "-s",
            str(stability),
            "--max-trials",
            str(max_trials),
            "-f",
            str(out),
            *extra,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise PerfAnalyzerError(
                f"perf_analyzer failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{(proc.stdout + proc.stderr)[-3000:]}"
            )
        rows = list(csv.DictReader(out.open()))

    def ms(row: dict, key: str) -> float:
        return float(row.get(key) or "nan") / 1000.0

    rows.sort(key=lambda r: int(r["Concurrency"]))  # perf_analyzer sorts its CSV by throughput
    return [
        {
            "concurrency": int(r["Concurrency"]),
            "infer_per_sec": float(r["Inferences/Second"]),
            "p50_ms": ms(r, "p50 latency"),
            "p90_ms": ms(r, "p90 latency"),
            "p95_ms": ms(r, "p95 latency"),
            "p99_ms": ms(r, "p99 latency"),
            "avg_ms": sum(ms(r, k) for k in _AVG_PARTS),
            "queue_ms": ms(r, "Server Queue"),
            "compute_ms": ms(r, "Server Compute Input")
            + ms(r, "Server Compute Infer")
            + ms(r, "Server Compute Output"),
        }
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.loadtest.perf_analyzer", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install the perf_analyzer wrapper into this venv")
    inst.add_argument("--force", action="store_true")
    r = sub.add_parser("run", help="run perf_analyzer on asr with real speech")
    r.add_argument("--url", default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '8001')}")
    r.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    r.add_argument("--concurrency", default="1:16:3", help="start:end:step")
    r.add_argument("--seconds", type=float, default=5.0, help="length of each clip (real speech joined/cut)")
    r.add_argument("--manifest", default=None)
    r.add_argument("--clips", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "install":
        print(install(force=args.force))
        return 0
    from mambaserve.loadtest.clips import clip_of_length, load_clips

    clips = load_clips(args.manifest, limit=args.clips * 4)
    audio = [clip_of_length(clips[i:] + clips[:i], args.seconds) for i in range(args.clips)]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_input_data(Path(tmp) / "input.json", audio)
        for row in run(url=args.url, input_data=data, concurrency=args.concurrency, protocol=args.protocol):
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
