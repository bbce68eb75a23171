"""`make soak`: a long run at a fixed rate near capacity; failures, wrong answers, server memory growth.

    python -m mambaserve.loadtest.soak [--minutes 10] [--rate REQ_PER_S] [--users 8] [--repository DIR]

1. Start tritonserver (the benchmark's repository: checkpoints/default, else a random checkpoint).
2. Reference: each clip transcribed alone, one request at a time.
3. Capacity: closed-loop throughput at `--users` for 15 s; the soak rate is 80 % of it (or `--rate`).
4. Soak: locust gRPC users at that total rate for `--minutes`, every answer compared to the clip's
   reference (a different transcript is a failure of kind WrongAnswer), while the resident memory of
   tritonserver + all its stub processes is sampled every 5 s.

Pass: 0 failures, 0 wrong answers, RSS growth <= 5 % (last sample vs the first sample under load).
Writes benchmarks/soak.json, benchmarks/soak_rss.png and the report's "Soak" section.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from mambaserve.contract import spec
from mambaserve.loadtest import procs
from mambaserve.loadtest.report import OUT, _commit, _machine, _now, bench_server, write_section

RSS_GOAL = 0.05


class RssSampler(threading.Thread):
    """Samples RSS of the server and its stubs (by process group) every `interval` seconds."""

    def __init__(self, server_pid: int, interval: float = 5.0):
        super().__init__(name="rss-sampler", daemon=True)
        self.server_pid, self.interval = server_pid, interval
        self.samples: list[dict] = []
        self._halt = threading.Event()

    def sample(self) -> dict:
        snap = procs.snapshot(self.server_pid)
        row = {
            "t": time.time(),
            "total": sum(v["rss_bytes"] for v in snap.values()),
            "by_group": {k: v["rss_bytes"] for k, v in snap.items()},
            "processes": sum(v["processes"] for v in snap.values()),
        }
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        self.sample()


def _plot(samples: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = samples[0]["t"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([(s["t"] - t0) / 60 for s in samples], [s["total"] / 2**20 for s in samples], "-")
    ax.set_xlabel("minutes under load")
    ax.set_ylabel("RSS, server + stubs (MiB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.loadtest.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, default=None, help="total requests/s (default: 80 %% of measured capacity)"
    )
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--repository", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.users < 1:
        parser.error("--minutes must be > 0 and --users >= 1")

    from mambaserve.clients import ASRClient
    from mambaserve.loadtest.clips import default_manifest, load_clips
    from mambaserve.loadtest.run import format_table, run_locust

    def log(msg: str) -> None:
        print(f"[soak] {msg}", file=sys.stderr, flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Path(args.manifest) if args.manifest else default_manifest()
    clips = load_clips(manifest, limit=args.clips, prompts=False)
    server, ckpt, random_ckpt = bench_server(args, log)
    with server, tempfile.TemporaryDirectory() as tmp:
        import soundfile as sf

        rows = []
        for c in clips:  # the clips as files the locust subprocess reads
            sf.write(Path(tmp) / f"{c.id}.wav", c.audio, spec.SAMPLE_RATE, subtype="FLOAT")
            rows.append(json.dumps({"id": c.id, "audio": f"{c.id}.wav", "text": c.text}))
        (Path(tmp) / "clips.jsonl").write_text("\n".join(rows) + "\n")
        log(f"reference: {len(clips)} clips, one request at a time")
        with ASRClient(server.grpc_url) as asr:
            reference = {c.id: asr.transcribe(c.audio).text for c in clips}
        (Path(tmp) / "expect.json").write_text(json.dumps(reference))
        common = {
            "http_url": server.http_url,
            "grpc_url": server.grpc_url,
            "mix": "grpc_asr=1",
            "manifest": str(Path(tmp) / "clips.jsonl"),
            "clip_limit": len(clips),
        }
        if args.rate:
            rate, capacity = args.rate, None
        else:
            probe = run_locust(users=args.users, duration="15s", **common)
            capacity = probe.rps
            rate = 0.8 * capacity
            log(f"capacity at {args.users} users: {capacity:.2f} req/s; soak rate {rate:.2f} req/s")
        sampler = RssSampler(server.pid)
        sampler.sample()
        sampler.start()
        log(f"soak: {args.minutes} min at {rate:.2f} req/s ({args.users} users)")
        result = run_locust(
            users=args.users,
            duration=f"{round(args.minutes * 60)}s",
            user_rate=rate / args.users,
            expect=str(Path(tmp) / "expect.json"),
            csv_prefix=Path(tmp) / "soak",
            **common,
        )
        sampler.stop()
    print(format_table(result))
    wrong = sum(e["count"] for e in result.errors if "WrongAnswer" in e["error"])
    failures = result.failures - wrong
    samples = sampler.samples
    first, last = samples[0], samples[-1]
    peak = max(s["total"] for s in samples)
    growth = (last["total"] - first["total"]) / first["total"]
    # the same without the stubs that served nothing (streaming models): they dilute the ratio
    serving = {procs.SERVER, *(step.model for step in spec.ASR_STEPS)}
    first_s = sum(v for k, v in first["by_group"].items() if k in serving)
    last_s = sum(v for k, v in last["by_group"].items() if k in serving)
    growth_serving = (last_s - first_s) / first_s if first_s else float("nan")
    by_group = {
        k: {"first_mib": first["by_group"].get(k, 0) / 2**20, "last_mib": v / 2**20}
        for k, v in last["by_group"].items()
    }
    ok = failures == 0 and wrong == 0 and growth <= RSS_GOAL
    data = {
        "date": _now(),
        "commit": _commit(),
        "machine": _machine(),
        "checkpoint": str(ckpt),
        "random_checkpoint": random_ckpt,
        "minutes": args.minutes,
        "users": args.users,
        "rate": rate,
        "capacity": capacity,
        "achieved_rps": result.rps,
        "requests": result.requests,
        "failures": failures,
        "wrong_answers": wrong,
        "errors": result.errors[:20],
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "rss_first_mib": first["total"] / 2**20,
        "rss_last_mib": last["total"] / 2**20,
        "rss_peak_mib": peak / 2**20,
        "rss_growth": growth,
        "rss_growth_asr_processes": growth_serving,
        "rss_by_process_group": by_group,
        "processes": last["processes"],
        "passed": ok,
        "rss_samples": [(round(s["t"] - first["t"], 1), s["total"]) for s in samples],
    }
    (out / "soak.json").write_text(json.dumps(data, indent=1))
    plot = _plot(samples, out / "soak_rss.png")
    groups = "\n".join(
        f"| {k} | {v['first_mib']:.0f} | {v['last_mib']:.0f} |" for k, v in sorted(by_group.items())
    )
    md = (
        f"{args.minutes:g} min at a fixed {rate:.2f} req/s ({args.users} gRPC users"
        + (f"; 80 % of the {capacity:.2f} req/s measured closed-loop" if capacity else "")
        + f"), {len(clips)} clips, "
        f"every answer compared with the clip's single-request transcript. Run {data['date']}, commit {data['commit']}"
        + (" (random checkpoint)" if random_ckpt else "")
        + ".\n\n"
        f"| requests | achieved req/s | failures | wrong answers | p50 ms | p99 ms | RSS first → last (peak) MiB | "
        f"growth | pass |\n|---:|---:|---:|---:|---:|---:|---|---:|:---:|\n"
        f"| {result.requests} | {result.rps:.2f} | {failures} | {wrong} | {result.p50_ms:.0f} | {result.p99_ms:.0f} | "
        f"{data['rss_first_mib']:.0f} → {data['rss_last_mib']:.0f} ({data['rss_peak_mib']:.0f}) | "
        f"{100 * growth:+.2f} % | {'yes' if ok else '**no**'} |\n\n"
        f"RSS = tritonserver + all its stub processes ({last['processes']} processes), sampled every 5 s. "
        f"Counting only tritonserver and the `{spec.ASR}` pipeline's stubs (the others served nothing): "
        f"{100 * growth_serving:+.2f} %.\n\n"
        f"| process group | first MiB | last MiB |\n|---|---:|---:|\n{groups}\n\n![soak RSS]({plot.name})"
    )
    write_section(
        "soak", "Soak", md, {k: v for k, v in data.items() if k != "rss_samples"}, out=out / "sections"
    )
    print(json.dumps({k: v for k, v in data.items() if k not in ("rss_samples", "machine", "errors")}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
