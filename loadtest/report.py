"""`make bench`: benchmark a served mambaserve and write benchmarks/REPORT.md (+ results.json, raw CSV, plot).

    python -m mambaserve.loadtest.report [--repository DIR | --checkpoint DIR] [--duration 20] [--quick]
    python -m mambaserve.loadtest.report --http-url H:P --grpc-url H:P     # a server already running

The report is a list of sections; each is a function `(BenchContext) -> Section`, run in order. A
section another benchmark produces (streaming chunk latency, decode time vs history, memory per
session, the soak) is read from `benchmarks/sections/<key>.json` (write it with `write_section`);
when neither ran, its heading says "not run". Goals (issue 3, 2-core machine) are checked in a
table at the top.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mambaserve.clients.metrics import scrape
from mambaserve.contract import spec
from mambaserve.loadtest import CHECKOUT, procs, server_stats
from mambaserve.loadtest.clips import Clip, clip_of_length, default_manifest, load_clips
from mambaserve.serving.metrics import TOKENS

ROOT = CHECKOUT
OUT = ROOT / "benchmarks"
SECTIONS_DIR = OUT / "sections"
PIPELINE = (spec.ASR, spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER)
CONCURRENCY = (1, 2, 4, 8, 16)

GOALS = (  # key, description, comparison, target
    ("rtfx_c16", "RTFx at concurrency 16", ">=", 200.0),
    ("p50_5s_ms", "p50 latency of a 5 s clip (ms)", "<=", 150.0),
    ("inprocess_over_served", "in-process time ÷ served time", ">=", 0.85),
    ("batching_gain", "dynamic-batching gain (throughput c16 ÷ c1)", ">=", 4.0),
)


# ---------------------------------------------------------------------------------------------
# Context and sections
# ---------------------------------------------------------------------------------------------
@dataclass
class BenchContext:
    http_url: str
    grpc_url: str
    server_pid: int | None  # local server: CPU/RSS accounting possible
    metrics_url: str | None = None
    checkpoint: Path | None = None
    random_checkpoint: bool = False
    repository: Path | None = None
    clips: list[Clip] = field(default_factory=list)
    out: Path = OUT
    duration_s: int = 20
    quick: bool = False
    results: dict = field(default_factory=dict)  # section key -> data, shared between sections


@dataclass
class Section:
    key: str
    title: str
    markdown: str
    data: object = None
    status: str = "ok"  # "ok", "not run", "failed"


SectionFn = Callable[[BenchContext], Section]


def write_section(key: str, title: str, markdown: str, data: object = None, out: Path = SECTIONS_DIR) -> Path:
    """For other benchmarks: store a finished section; the next report includes it as is."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{key}.json"
    path.write_text(
        json.dumps(
            {
                "key": key,
                "title": title,
                "markdown": markdown,
                "data": data,
                "generated_at": _now(),
                "commit": _commit(),
            },
            indent=1,
            default=_jsonable,
        )
    )
    return path


def external(key: str, title: str, how: str) -> SectionFn:
    """A section produced elsewhere (`write_section`); "not run" with the command when absent."""

    def section(ctx: BenchContext) -> Section:
        path = SECTIONS_DIR / f"{key}.json"
        if not path.exists():
            return Section(key, title, f"*Not run.* {how}", status="not run")
        stored = json.loads(path.read_text())
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        note = (
            f"\n\n*(from `{shown}`, generated {stored.get('generated_at')} at commit {stored.get('commit')})*"
        )
        return Section(key, stored.get("title", title), stored["markdown"] + note, stored.get("data"))

    section.__name__ = f"external_{key}"
    return section


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if hasattr(x, "to_json"):
        return x.to_json()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": int(a.size),
    }


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "gpu": "none",
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _host_cpu_seconds() -> float:
    """Busy CPU seconds of the whole host (all processes), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Window:
    """Brackets a measurement: server statistics, our processes' CPU, the host's CPU, wall time."""

    def __init__(self, ctx: BenchContext):
        self.ctx = ctx

    def _tokens(self) -> float:
        """mambaserve_tokens_generated_total of the offline decoder (0 without a metrics URL; KeyError
        when the server does not export it: a renamed series must not read as zero tokens)."""
        if not self.ctx.metrics_url:
            return 0.0
        return scrape(self.ctx.metrics_url).value(TOKENS, model=spec.DECODER)

    def __enter__(self) -> Window:
        self.tokens0 = self._tokens()
        self.stats0 = server_stats.snapshot(self.ctx.http_url)
        self.procs0 = procs.snapshot(self.ctx.server_pid) if self.ctx.server_pid else {}
        self.host0 = _host_cpu_seconds()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.monotonic() - self.t0
        self.host = _host_cpu_seconds() - self.host0
        self.profile = server_stats.diff(self.stats0, server_stats.settled_snapshot(self.ctx.http_url))
        after = procs.snapshot(self.ctx.server_pid) if self.ctx.server_pid else {}
        self.cpu = {
            k: after[k]["cpu_seconds"] - self.procs0.get(k, {}).get("cpu_seconds", 0.0) for k in after
        }
        self.tokens = self._tokens() - self.tokens0

    def summary(self) -> dict:
        requests = self.profile.get(spec.ASR).requests if spec.ASR in self.profile else 0
        ours = sum(self.cpu.values())
        return {
            "wall_s": round(self.wall, 2),
            "requests": requests,
            "profile": {k: v.to_json() for k, v in self.profile.items()},
            "cpu_ms_per_request": {k: 1000 * v / requests for k, v in self.cpu.items() if v > 0}
            if requests
            else {},
            "decoder_tokens_per_request": self.tokens / requests
            if requests and self.ctx.metrics_url
            else None,
            "server_cpu_cores_used": ours / self.wall if self.wall else float("nan"),
            "other_cpu_cores_used": max(0.0, self.host - ours) / self.wall if self.wall else float("nan"),
        }


def _clip_seconds(ctx: BenchContext) -> float:
    return float(np.mean([c.seconds for c in ctx.clips]))


def _manifest_file(ctx: BenchContext) -> Path:
    """The clips of this run as a manifest the locust subprocess can read (WAVs in a temp folder)."""
    cached = ctx.results.get("_manifest")
    if cached:
        return Path(cached)
    import soundfile as sf

    folder = Path(tempfile.mkdtemp(prefix="mambaserve-bench-clips-"))
    with open(folder / "clips.jsonl", "w") as f:
        for c in ctx.clips:
            sf.write(folder / f"{c.id}.wav", c.audio, spec.SAMPLE_RATE, subtype="FLOAT")
            f.write(
                json.dumps({"id": c.id, "audio": f"{c.id}.wav", "text": c.text, "duration": c.seconds}) + "\n"
            )
    ctx.results["_manifest"] = str(folder / "clips.jsonl")
    return folder / "clips.jsonl"


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def served_vs_inprocess(ctx: BenchContext) -> Section:
    """The same clips, one at a time: `asr` through the server vs Recognizer.transcribe in this process."""
    key, title = "served_vs_inprocess", "Served ensemble vs the same pipeline in-process"
    if ctx.checkpoint is None:
        return Section(key, title, "*Not run:* no checkpoint known for this server.", status="not run")
    import torch
    from mambaserve.clients import ASRClient
    from mambaserve.model.recognizer import Recognizer

    clips = ctx.clips[: 10 if ctx.quick else 30]
    n = len(clips)
    torch.set_num_threads(1)  # what each served python model instance uses (build default torch_threads=1)
    recognizer = Recognizer(ctx.checkpoint)
    recognizer.transcribe([clips[0].audio])  # warm-up
    local_ms, local_text = [], []
    for c in clips:
        t = time.perf_counter()
        local_text.append(recognizer.transcribe([c.audio])[0])
        local_ms.append(1000 * (time.perf_counter() - t))
    served_ms, served_text = [], []
    with ASRClient(ctx.grpc_url, protocol="grpc") as asr, Window(ctx) as win:
        asr.transcribe(clips[0].audio)
        for c in clips:
            r = asr.transcribe(c.audio)
            served_ms.append(1000 * r.latency_s)
            served_text.append(r.text)
    ratio = sum(local_ms) / sum(served_ms)
    same = sum(a == b for a, b in zip(local_text, served_text))
    data = {
        "clips": n,
        "audio_seconds": sum(c.seconds for c in clips),
        "inprocess": _percentiles(local_ms),
        "served": _percentiles(served_ms),
        "inprocess_over_served": ratio,
        "identical_transcripts": same,
        "server": win.summary(),
    }
    ctx.results["inprocess_over_served"] = ratio
    md = (
        f"{n} clips ({data['audio_seconds']:.1f} s of audio), sequential (concurrency 1), gRPC. In-process = "
        "`Recognizer.transcribe([clip])` with PyTorch on 1 thread (each served python model instance also "
        "runs 1 torch thread; the served encoder is the ONNX export on onnxruntime, 1 thread).\n\n"
        "| | total s | mean ms | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n"
        f"| in-process | {sum(local_ms) / 1000:.2f} | {_fmt(data['inprocess']['mean_ms'])} | "
        f"{_fmt(data['inprocess']['p50_ms'])} | {_fmt(data['inprocess']['p99_ms'])} |\n"
        f"| served (`{spec.ASR}`) | {sum(served_ms) / 1000:.2f} | {_fmt(data['served']['mean_ms'])} | "
        f"{_fmt(data['served']['p50_ms'])} | {_fmt(data['served']['p99_ms'])} |\n\n"
        f"**in-process ÷ served time = {ratio:.2f}**; identical transcripts: {same}/{n}."
    )
    return Section(key, title, md, data)


def concurrency_sweep(ctx: BenchContext) -> Section:
    """Closed-loop locust (gRPC) at each concurrency: throughput, RTFx, latency; server profile."""
    from mambaserve.loadtest.run import run_locust

    key, title = "concurrency", "Throughput, RTFx and latency by concurrency (locust, gRPC, closed loop)"
    levels = (1, 4, 16) if ctx.quick else CONCURRENCY
    raw = ctx.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in levels:
        with Window(ctx) as win:
            r = run_locust(
                users=c,
                duration=f"{ctx.duration_s}s",
                http_url=ctx.http_url,
                grpc_url=ctx.grpc_url,
                mix="grpc_asr=1",
                manifest=str(_manifest_file(ctx)),
                csv_prefix=raw / f"locust_c{c}",
            )
        rows.append(
            {
                "concurrency": c,
                "rps": r.rps,
                "rtfx": r.rtfx,
                "p50_ms": r.p50_ms,
                "p95_ms": r.p95_ms,
                "p99_ms": r.p99_ms,
                "requests": r.requests,
                "failures": r.failures,
                "audio_seconds": r.audio_seconds,
                "server": win.summary(),
            }
        )
        (raw / f"locust_c{c}_requests.json").unlink(missing_ok=True)  # per-request latencies: not committed
    by_c = {row["concurrency"]: row for row in rows}
    ctx.results["rtfx_c16"] = by_c.get(16, {}).get("rtfx")
    if 1 in by_c and 16 in by_c and by_c[1]["rps"] > 0:
        ctx.results["batching_gain"] = by_c[16]["rps"] / by_c[1]["rps"]
    ctx.results["sweep"] = rows
    lines = [
        "| concurrency | req/s | RTFx | p50 ms | p95 ms | p99 ms | requests | failures | avg batch enc / dec | "
        "server CPU cores | other CPU cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        prof = row["server"]["profile"]
        batch = " / ".join(_fmt(prof.get(m, {}).get("avg_batch"), 2) for m in (spec.ENCODER, spec.DECODER))
        lines.append(
            f"| {row['concurrency']} | {_fmt(row['rps'], 2)} | {_fmt(row['rtfx'])} | {_fmt(row['p50_ms'], 0)} | "
            f"{_fmt(row['p95_ms'], 0)} | {_fmt(row['p99_ms'], 0)} | {row['requests']} | {row['failures']} | "
            f"{batch} | {_fmt(row['server']['server_cpu_cores_used'], 2)} | "
            f"{_fmt(row['server']['other_cpu_cores_used'], 2)} |"
        )
    plot = _plot(rows, ctx.out / "latency_vs_throughput.png")
    md = (
        f"{ctx.duration_s} s per level, clips drawn at random from {len(ctx.clips)} real-speech clips "
        f"(mean {_clip_seconds(ctx):.2f} s). RTFx = seconds of audio answered ÷ wall seconds. "
        "'server CPU cores' = CPU time of tritonserver + its stub processes ÷ wall time; 'other' = the rest "
        "of the host (this machine is shared).\n\n"
        + "\n".join(lines)
        + f"\n\n![latency vs throughput]({plot.name})"
    )
    return Section(key, title, md, rows)


def _plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [r["rps"] for r in rows]
    for q, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        ax.plot(x, [r[q] for r in rows], style, label=q.replace("_ms", ""))
    for r in rows:
        ax.annotate(
            f"c={r['concurrency']}",
            (r["rps"], r["p99_ms"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{spec.ASR}: latency vs throughput (concurrency 1…{rows[-1]['concurrency']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def five_second_clip(ctx: BenchContext) -> Section:
    """p50/p99 of one 5 s clip of real speech, one request at a time."""
    from mambaserve.clients import ASRClient

    key, title = "five_second_clip", "Latency of a 5 s clip (concurrency 1)"
    n = 20 if ctx.quick else 60
    audio = [clip_of_length(ctx.clips[i:] + ctx.clips[:i], 5.0) for i in range(5)]
    lat = []
    with ASRClient(ctx.grpc_url, protocol="grpc") as asr, Window(ctx) as win:
        asr.transcribe(audio[0])
        for i in range(n):
            lat.append(1000 * asr.transcribe(audio[i % len(audio)]).latency_s)
    stats = _percentiles(lat)
    ctx.results["p50_5s_ms"] = stats["p50_ms"]
    prof = win.summary()
    steps = " + ".join(
        f"{m} {_fmt(prof['profile'][m]['compute_ms_per_execution'])}"
        for m in PIPELINE[1:]
        if m in prof["profile"]
    )
    md = (
        f"{n} requests, gRPC, 5 different 5.00 s clips of real speech (joined samples).\n\n"
        f"| p50 ms | p95 ms | p99 ms | mean ms |\n|---:|---:|---:|---:|\n| {_fmt(stats['p50_ms'])} | "
        f"{_fmt(stats['p95_ms'])} | {_fmt(stats['p99_ms'])} | {_fmt(stats['mean_ms'])} |\n\n"
        f"Server compute per step (ms, mean): {steps}."
    )
    return Section(key, title, md, {**stats, "server": prof})


def batching_gain(ctx: BenchContext) -> Section:
    key, title = "batching_gain", "Dynamic-batching gain"
    rows = {r["concurrency"]: r for r in ctx.results.get("sweep", [])}
    if 1 not in rows or 16 not in rows:
        return Section(key, title, "*Not run:* needs the concurrency sweep at 1 and 16.", status="not run")
    gain = rows[16]["rps"] / rows[1]["rps"]
    prof16 = rows[16]["server"]["profile"]
    cpu1, cpu16 = rows[1]["server"]["cpu_ms_per_request"], rows[16]["server"]["cpu_ms_per_request"]
    lines = [
        "| model | avg batch at c=16 | CPU ms/request at c=1 | CPU ms/request at c=16 |",
        "|---|---:|---:|---:|",
    ]
    for m in PIPELINE[1:]:
        lines.append(
            f"| {m} | {_fmt(prof16.get(m, {}).get('avg_batch'), 2)} | {_fmt(cpu1.get(m))} | {_fmt(cpu16.get(m))} |"
        )
    why = ""
    if cpu1 and cpu16:
        cores1, cores16 = (
            rows[1]["server"]["server_cpu_cores_used"],
            rows[16]["server"]["server_cpu_cores_used"],
        )
        per1, per16 = sum(cpu1.values()), sum(cpu16.values())
        dedicated = (os.cpu_count() or 1) / cores1 * per1 / per16
        why = (
            f"\n\nThroughput = CPU cores the server gets ÷ CPU per request, so the gain splits into "
            f"**more cores** ({_fmt(cores16, 2)} ÷ {_fmt(cores1, 2)} = {cores16 / cores1:.2f}) × **cheaper requests "
            f"thanks to batching** ({_fmt(per1)} ÷ {_fmt(per16)} ms = {per1 / per16:.2f}) = {cores16 / cores1 * per1 / per16:.2f}. "
            f"At concurrency 1 the pipeline already keeps {_fmt(cores1, 2)} cores busy, and the server got only "
            f"{_fmt(cores16, 2)} at 16 on this shared machine; with all {os.cpu_count()} cores to itself the same "
            f"batching would give at most ≈ {dedicated:.1f}."
        )
    md = (
        f"Throughput at concurrency 16 ÷ at 1 = {rows[16]['rps']:.2f} ÷ {rows[1]['rps']:.2f} = **{gain:.2f}**.\n\n"
        + "\n".join(lines)
        + "\n\nCPU ms/request: CPU time of the model's stub process(es) ÷ requests (needs a local server)."
        + why
    )
    return Section(key, title, md, {"gain": gain})


def perf_analyzer_table(ctx: BenchContext) -> Section:
    from mambaserve.loadtest import perf_analyzer as pa

    key, title = "perf_analyzer", "perf_analyzer (NVIDIA's load generator), 5 s clips"
    audio = [clip_of_length(ctx.clips[i:] + ctx.clips[:i], 5.0) for i in range(8)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = pa.write_input_data(Path(tmp) / "input.json", audio)
        for c in (1, 4) if ctx.quick else (1, 4, 16):
            rows += pa.run(
                url=ctx.grpc_url,
                input_data=data,
                concurrency=str(c),
                measurement_ms=3000 if ctx.quick else 5000,
            )
    lines = [
        "| concurrency | infer/s | RTFx | p50 ms | p90 ms | p95 ms | p99 ms | avg ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['infer_per_sec']:.2f} | {5.0 * r['infer_per_sec']:.1f} | "
            f"{_fmt(r['p50_ms'])} | {_fmt(r['p90_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | "
            f"{_fmt(r['avg_ms'])} |"
        )
    cmd = (
        "python -m mambaserve.loadtest.perf_analyzer run --url HOST:8001 --concurrency 1:16:5 --seconds 5  "
        "# or: perf_analyzer -m asr -u HOST:8001 -i grpc --input-data input.json --concurrency-range 1:16:5 -s 50"
    )
    md = (
        f"8 different 5 s clips of real speech as `--input-data` (AUDIO with its shape), gRPC, "
        f"`-s 50` (the default 10 % stability is rarely met on a shared machine). Reproduce:\n\n```\n{cmd}\n```\n\n"
        + "\n".join(lines)
    )
    return Section(key, title, md, rows)


def server_profile(ctx: BenchContext) -> Section:
    """Where the time goes at the highest concurrency, and what bounds capacity on this machine."""
    key, title = "profile", "Server-side profile and what limits throughput"
    sweep = ctx.results.get("sweep") or []
    if not sweep:
        return Section(key, title, "*Not run:* needs the concurrency sweep.", status="not run")
    top = sweep[-1]
    prof = {k: server_stats.ModelProfile(**v) for k, v in top["server"]["profile"].items() if v["requests"]}
    table = server_stats.markdown_table(prof, PIPELINE)
    cpu = {k: v for k, v in top["server"]["cpu_ms_per_request"].items() if k in prof or k == procs.SERVER}
    text = []
    if cpu:
        models = {m: cpu.get(m, 0.0) for m in PIPELINE[1:]}
        total = sum(cpu.values())
        heaviest = max(models, key=models.get)
        per_audio_s = total / 1000 / _clip_seconds(ctx)
        cores = os.cpu_count() or 1
        text.append(
            f"CPU per request at c={top['concurrency']}: "
            + ", ".join(f"{m} {_fmt(v)} ms" for m, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
            + f" — **{_fmt(total)} ms in all**, i.e. {per_audio_s:.3f} CPU-s per audio second. "
            f"The heaviest step is **{heaviest}** ({100 * models[heaviest] / total:.0f} %)."
        )
        tokens = top["server"].get("decoder_tokens_per_request")
        if tokens:
            text.append(
                f"The decoder generated {tokens:.1f} tokens per request ({tokens / _clip_seconds(ctx):.1f} per "
                "audio second"
                + (
                    ", the length budget of a randomly initialised model that never emits "
                    "end-of-sequence: a trained model stops earlier and decodes for less"
                    if ctx.random_checkpoint
                    else ""
                )
                + ")."
            )
        text.append(
            f"Upper bound from CPU alone: {cores} cores ÷ {per_audio_s:.3f} = **RTFx ≈ {cores / per_audio_s:.0f}** "
            f"if the whole machine served this model; during the run the server used "
            f"{_fmt(top['server']['server_cpu_cores_used'], 2)} cores and the rest of the host "
            f"(other work on this shared machine) {_fmt(top['server']['other_cpu_cores_used'], 2)} cores."
        )
        dec = prof.get(spec.DECODER)
        if dec and dec.executions and cpu.get(spec.DECODER):
            busy = dec.compute_ms_per_execution * dec.executions / 1000 / top["server"]["wall_s"]
            on_cpu = cpu[spec.DECODER] * dec.requests / 1000 / top["server"]["wall_s"]
            text.append(
                f"The decoder (one instance) was executing {100 * busy:.0f} % of the wall time and on a "
                f"CPU {100 * on_cpu:.0f} % of the wall time; an execution of {dec.avg_batch:.1f} requests "
                f"took {_fmt(dec.compute_ms_per_execution)} ms of wall time for "
                f"{_fmt(cpu[spec.DECODER] * dec.avg_batch)} ms of CPU: the rest it waited for a core."
            )
    md = (
        f"Triton's statistics (`/v2/models/stats`) over the concurrency-{top['concurrency']} run, plus CPU time of "
        f"each model's stub process from /proc:\n\n{table}\n\n" + "\n\n".join(text)
    )
    return Section(key, title, md, {"concurrency": top["concurrency"], "cpu_ms_per_request": cpu})


SECTIONS: list[SectionFn] = [
    served_vs_inprocess,
    concurrency_sweep,
    five_second_clip,
    batching_gain,
    perf_analyzer_table,
    server_profile,
    external("soak", "Soak", "Run `make soak` (`python -m mambaserve.loadtest.soak --minutes 10`)."),
    external(
        "streaming_chunk_latency",
        "Streaming chunk latency",
        "Produced by the streaming benchmark (not written yet).",
    ),
    external(
        "decode_time_vs_history",
        "Decode time vs history length",
        "Produced by the streaming benchmark (not written yet).",
    ),
    external(
        "memory_per_session",
        "Memory per streaming session",
        "Produced by the streaming benchmark (not written yet).",
    ),
]
"""The report, in order. Add a function here, or write `benchmarks/sections/<key>.json` from another
benchmark and list it with `external(...)`."""


# ---------------------------------------------------------------------------------------------
# Assembling the report
# ---------------------------------------------------------------------------------------------
def goals_table(results: dict) -> str:
    lines = ["| goal | target | measured | met |", "|---|---:|---:|:---:|"]
    for key, text, op, target in GOALS:
        value = results.get(key)
        if value is None:
            lines.append(f"| {text} | {op} {target:g} | not run | – |")
            continue
        ok = value >= target if op == ">=" else value <= target
        lines.append(f"| {text} | {op} {target:g} | {value:.2f} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines)


def render(ctx: BenchContext, sections: list[Section], meta: dict) -> str:
    m = meta["machine"]
    head = [
        "# mambaserve benchmark report",
        "",
        f"Generated by `make bench` (`python -m mambaserve.loadtest.report`) on {meta['date']}, commit "
        f"`{meta['commit']}`.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, no GPU; {m['os']}; Python {m['python']}.",
        f"- Load average before / after: {meta['load_before']} / {meta['load_after']} (the machine is shared with "
        "other work: see the 'other CPU cores' column).",
        f"- Server: tritonserver {meta.get('server_version', '?')} ({meta['server']}); repository `{meta['repository']}`; "
        f"build options {meta.get('build_options', '?')}.",
        f"- Checkpoint: `{meta['checkpoint']}`"
        + (
            " — **randomly initialised** (no trained checkpoint yet): "
            "transcripts are garbage but deterministic; the decoder then "
            "generates up to its length budget, so decode costs are an upper bound."
            if ctx.random_checkpoint
            else "."
        ),
        f"- Clips: {len(ctx.clips)} real-speech clips from `{meta['manifest']}` (mean {_clip_seconds(ctx):.2f} s).",
        "",
        "## Goals (issue 3, this 2-core CPU machine)",
        "",
        goals_table(ctx.results),
        "",
    ]
    body = []
    for s in sections:
        suffix = "" if s.status == "ok" else f" ({s.status})"
        body += [f"## {s.title}{suffix}", "", s.markdown.strip(), ""]
    return "\n".join(head + body)


def _server_version(http_url: str) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{http_url}/v2", timeout=5) as resp:
            return json.loads(resp.read()).get("version", "?")
    except OSError:
        return "?"


def _resolve_repository(args, log) -> tuple[Path, Path | None, bool]:
    """(repository, checkpoint, random?) — builds one under .cache/bench when none is given."""
    if args.repository:
        repo = Path(args.repository)
        info = sorted(repo.glob(f"{spec.ASR}/*/build.json"))
        ckpt = Path(json.loads(info[-1].read_text())["checkpoint"]) if info else None
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
        return repo, ckpt, False
    default_ckpt = ROOT / "checkpoints" / "default"
    ckpt = Path(args.checkpoint) if args.checkpoint else default_ckpt
    random_ckpt = False
    if not (ckpt / "model.safetensors").exists():
        if args.checkpoint:
            raise SystemExit(f"error: checkpoint {ckpt} has no model.safetensors")
        from mambaserve.model.checkpoint import init_checkpoint

        ckpt = ROOT / ".cache" / "bench" / "random-checkpoint"
        if not (ckpt / "model.safetensors").exists():
            log(f"no trained checkpoint at {default_ckpt}: using a random one ({ckpt})")
            init_checkpoint(ckpt, seed=0)
        random_ckpt = True
    repo = ROOT / ".cache" / "bench" / "model_repository"
    from mambaserve.build.repository import checkpoint_digest

    info = sorted(repo.glob(f"{spec.ASR}/*/build.json"))
    if not info or json.loads(info[-1].read_text()).get("checkpoint_sha256") != checkpoint_digest(ckpt):
        log(f"building {repo} from {ckpt} ...")
        shutil.rmtree(repo, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "mambaserve.build", "--checkpoint", str(ckpt), "--out", str(repo)],
            check=True,
            cwd=ROOT,
        )
    return repo, ckpt, random_ckpt


def bench_server(args, log):
    """A tritonserver on free local ports serving the bench repository (built if needed), not yet started.

    Returns (server, checkpoint, random checkpoint?); shared by the report, the soak and the streaming bench.
    """
    from mambaserve.serving.server import TritonServer, free_port

    repo, ckpt, random_ckpt = _resolve_repository(args, log)
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), startup_timeout=600
    )
    log(f"starting tritonserver on {repo} ...")
    return server, ckpt, random_ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.loadtest.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--repository", default=None, help="model repository to serve (default: build one under .cache/bench)"
    )
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint (default: checkpoints/default, else a random one)"
    )
    parser.add_argument(
        "--http-url", default=None, help="use a running server (with --grpc-url) instead of starting one"
    )
    parser.add_argument("--grpc-url", default=None)
    parser.add_argument("--metrics-url", default=None, help="with --http-url: the server's metrics host:port")
    parser.add_argument(
        "--manifest", default=None, help="clips (default: corpus test set, else the shipped samples)"
    )
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--duration", type=int, default=20, help="seconds per concurrency level")
    parser.add_argument("--only", default="", help="comma-separated section function names to run")
    parser.add_argument("--quick", action="store_true", help="fewer levels and requests (a smoke run)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Path(args.manifest) if args.manifest else default_manifest()
    clips = load_clips(manifest, limit=args.clips, prompts=False)
    from mambaserve.loadtest import perf_analyzer

    perf_analyzer.install()  # automated: nothing to set up by hand
    server = None
    if args.http_url and args.grpc_url:
        repo, ckpt, random_ckpt = (
            Path(args.repository) if args.repository else None,
            Path(args.checkpoint) if args.checkpoint else None,
            False,
        )
        http_url, grpc_url, pid, metrics_url = args.http_url, args.grpc_url, None, args.metrics_url
    else:
        server, ckpt, random_ckpt = bench_server(args, log)
        repo = server.repository
        server.start()
        http_url, grpc_url, pid, metrics_url = (
            server.http_url,
            server.grpc_url,
            server.pid,
            server.metrics_url,
        )
    try:
        ctx = BenchContext(
            http_url=http_url,
            grpc_url=grpc_url,
            server_pid=pid,
            metrics_url=metrics_url,
            checkpoint=ckpt,
            random_checkpoint=random_ckpt,
            repository=repo,
            clips=clips,
            out=out,
            duration_s=args.duration,
            quick=args.quick,
        )
        build = sorted(repo.glob(f"{spec.ASR}/*/build.json")) if repo else []
        meta = {
            "date": _now(),
            "commit": _commit(),
            "machine": _machine(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "server": "started by the report" if server else f"running at {http_url}",
            "server_version": _server_version(http_url),
            "repository": str(repo),
            "build_options": json.loads(build[-1].read_text()).get("options") if build else None,
            "checkpoint": str(ckpt),
            "manifest": str(manifest),
        }
        only = {s for s in args.only.split(",") if s}
        sections = []
        for fn in SECTIONS:
            if only and fn.__name__ not in only and not fn.__name__.startswith("external_"):
                continue
            log(f"section {fn.__name__} ...")
            try:
                sections.append(fn(ctx))
            except Exception as e:  # a failed section is reported, the others still run
                log(f"section {fn.__name__} FAILED: {type(e).__name__}: {e}")
                sections.append(
                    Section(fn.__name__, fn.__name__, f"*Failed:* `{type(e).__name__}: {e}`", status="failed")
                )
        meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        if server is not None:
            server.stop()
    manifest_dir = ctx.results.pop("_manifest", None)
    if manifest_dir:
        shutil.rmtree(Path(manifest_dir).parent, ignore_errors=True)
    (out / "REPORT.md").write_text(render(ctx, sections, meta))
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "goals": {k: ctx.results.get(k) for k, *_ in GOALS},
                "sections": {s.key: {"title": s.title, "status": s.status, "data": s.data} for s in sections},
            },
            indent=1,
            default=_jsonable,
        )
    )
    log(f"wrote {out / 'REPORT.md'} and {out / 'results.json'}")
    return 0 if all(s.status != "failed" for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
