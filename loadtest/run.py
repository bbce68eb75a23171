"""Run locust headless against a tritonserver and summarise it: throughput, RTFx, p50/p95/p99, failures.

    python -m mambaserve.loadtest.run --users 8 --duration 20s [--mix http_asr=1,grpc_asr=1]
        [--http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001] [--manifest M] [--csv runs/locust/asr]

Prints a table per user kind and, as its last line, one JSON object (the `LoadResult`); exits 1 when
any request failed (locust's own rule), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

LOCUSTFILE = Path(str(resources.files("mambaserve.loadtest") / "locustfile.py"))


@dataclass
class Row:
    """One line of locust's stats CSV (a user kind, or 'Aggregated')."""

    name: str
    requests: int
    failures: int
    rps: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class LoadResult:
    users: int
    duration_s: float
    requests: int
    failures: int
    rps: float
    rtfx: float
    audio_seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    by_type: dict[str, Row] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)  # {"error": "[type] Class: message", "count"}
    exit_code: int = 0
    csv_prefix: str = ""

    def to_json(self) -> dict:
        out = asdict(self)
        out["by_type"] = {k: asdict(v) for k, v in self.by_type.items()}
        return out


def _row(name: str, ok_ms: list[float], failed: int, span: float) -> Row:
    lat = np.asarray(ok_ms, dtype=np.float64)
    q = np.percentile(lat, [50, 95, 99]) if lat.size else [float("nan")] * 3
    n = int(lat.size) + int(failed)
    return Row(
        name=name,
        requests=n,
        failures=int(failed),
        rps=n / span if span > 0 else float("nan"),
        mean_ms=float(lat.mean()) if lat.size else float("nan"),
        p50_ms=float(q[0]),
        p95_ms=float(q[1]),
        p99_ms=float(q[2]),
        max_ms=float(lat.max()) if lat.size else float("nan"),
    )


def read_requests(prefix: str | os.PathLike) -> dict:
    path = Path(f"{prefix}_requests.json")
    if not path.exists():
        raise RuntimeError(f"{path} is missing: was the locustfile mambaserve's (loadtest/locustfile.py)?")
    return json.loads(path.read_text())


def summarize(prefix: str | os.PathLike, users: int, exit_code: int = 0) -> LoadResult:
    """Exact statistics from PREFIX_requests.json (every request's latency, as the users measured it)."""
    log = read_requests(prefix)
    start = log.get("start", float("nan"))
    span = max(log.get("end", start), log.get("last", start)) - start
    by_type = {kind: _row(kind, e["ok_ms"], e["failed"], span) for kind, e in sorted(log["by_type"].items())}
    every = [ms for e in log["by_type"].values() for ms in e["ok_ms"]]
    agg = _row("all", every, sum(e["failed"] for e in log["by_type"].values()), span)
    seconds = sum(e["audio_seconds"] for e in log["by_type"].values())
    errors = sorted(({"error": k, "count": v} for k, v in log["errors"].items()), key=lambda e: -e["count"])
    return LoadResult(
        users=users,
        duration_s=round(span, 2),
        requests=agg.requests,
        failures=agg.failures,
        rps=agg.rps,
        rtfx=seconds / span if span > 0 else float("nan"),
        audio_seconds=round(seconds, 3),
        p50_ms=agg.p50_ms,
        p95_ms=agg.p95_ms,
        p99_ms=agg.p99_ms,
        mean_ms=agg.mean_ms,
        by_type=by_type,
        errors=errors,
        exit_code=exit_code,
        csv_prefix=str(prefix),
    )


def run_locust(
    *,
    users: int,
    duration: str,
    spawn_rate: float | None = None,
    http_url: str = "127.0.0.1:8000",
    grpc_url: str = "127.0.0.1:8001",
    mix: str | None = None,
    manifest: str | None = None,
    clip_limit: int | None = None,
    user_rate: float = 0.0,
    expect: str | None = None,
    csv_prefix: str | os.PathLike | None = None,
    timeout: float = 60.0,
    extra: list[str] | tuple[str, ...] = (),
    echo: bool = False,
) -> LoadResult:
    """Run locust headless in a subprocess (its own gevent world) and summarise its CSV output."""
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    prefix = (
        Path(csv_prefix) if csv_prefix else Path(tempfile.mkdtemp(prefix="mambaserve-locust-")) / "locust"
    )
    prefix.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        str(spawn_rate or users),
        "-t",
        duration,
        "--stop-timeout",
        str(int(timeout)),
        "--csv",
        str(prefix),
        "--loglevel",
        "WARNING",
        "--http-url",
        http_url,
        "--grpc-url",
        grpc_url,
        "--user-rate",
        str(user_rate),
        "--timeout",
        str(timeout),
    ]
    if mix:
        cmd += ["--mix", mix]
    if manifest:
        cmd += ["--manifest", str(manifest)]
    if clip_limit:
        cmd += ["--clip-limit", str(clip_limit)]
    if expect:
        cmd += ["--expect", str(expect)]
    cmd += list(extra)
    log = Path(f"{prefix}_requests.json")
    if log.exists():
        log.unlink()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=None if echo else out, stderr=subprocess.STDOUT, text=True)
        code = _wait(proc, log)
        out.seek(0)
        output = out.read()
    if not log.exists():
        raise RuntimeError(f"locust wrote no statistics (exit {code}):\n{output[-3000:]}")
    return summarize(prefix, users, code)


def _wait(proc: subprocess.Popen, log: Path, grace: float = 20.0) -> int:
    """Wait for locust; kill it if it hangs after writing its results (returns -9 then).

    A safety net: a gevent-patched grpc channel closed during interpreter shutdown can block forever
    (users.base.close_now avoids it); the results are complete once the log is written.
    """
    written_at = None
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if log.exists():
            written_at = written_at or time.monotonic()
            if time.monotonic() - written_at > grace:
                proc.kill()
                proc.wait()
                return -9


def format_table(result: LoadResult) -> str:
    lines = [
        f"{'type':<12}{'requests':>10}{'failures':>10}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    ]
    rows = [
        *result.by_type.items(),
        (
            "all",
            Row(
                "all",
                result.requests,
                result.failures,
                result.rps,
                result.mean_ms,
                result.p50_ms,
                result.p95_ms,
                result.p99_ms,
                0,
            ),
        ),
    ]
    for key, r in rows:
        lines.append(
            f"{key:<12}{r.requests:>10}{r.failures:>10}{r.rps:>9.2f}{r.p50_ms:>9.0f}{r.p95_ms:>9.0f}{r.p99_ms:>9.0f}"
        )
    lines.append(
        f"users {result.users}, {result.duration_s} s, RTFx {result.rtfx:.1f} "
        f"({result.audio_seconds} s of audio answered)"
    )
    for e in result.errors[:10]:
        lines.append(f"  failure x{e['count']}: {e['error'][:300]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.loadtest.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--users", type=int, default=8, help="concurrent users (closed loop: requests in flight)"
    )
    parser.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (default: all at once)"
    )
    parser.add_argument("--duration", default="20s", help="locust run time, e.g. 20s, 2m")
    parser.add_argument("--http-url", default=f"127.0.0.1:{os.environ.get('HTTP_PORT', '8000')}")
    parser.add_argument("--grpc-url", default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '8001')}")
    parser.add_argument("--mix", default=None, help="user weights, e.g. http_asr=1,grpc_asr=3")
    parser.add_argument(
        "--manifest", default=None, help="JSONL manifest (default: corpus test set or the samples)"
    )
    parser.add_argument("--clip-limit", type=int, default=None)
    parser.add_argument("--user-rate", type=float, default=0.0, help="requests/s per user (0: closed loop)")
    parser.add_argument("--csv", default=None, help="CSV prefix (default: a temporary folder)")
    args = parser.parse_args(argv)
    try:
        result = run_locust(
            users=args.users,
            duration=args.duration,
            spawn_rate=args.spawn_rate,
            http_url=args.http_url,
            grpc_url=args.grpc_url,
            mix=args.mix,
            manifest=args.manifest,
            clip_limit=args.clip_limit,
            user_rate=args.user_rate,
            csv_prefix=args.csv,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(json.dumps(result.to_json()))
    return 0 if result.failures == 0 and result.exit_code in (0, -9) else 1


if __name__ == "__main__":
    sys.exit(main())
