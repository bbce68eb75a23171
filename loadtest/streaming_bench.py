"""Streaming and session benchmarks -> three sections of the benchmark report (benchmarks/sections/).

    python -m mambaserve.loadtest.streaming_bench [--repository DIR | --grpc-url H:P --http-url H:P]
                                                  [--seconds 20] [--sessions 10000] [--quick]

- ``streaming_chunk_latency``: live streams (audio sent in real time, 320 ms chunks) at 1, 8 and 32
  concurrent streams; latency of every chunk from send to answer, p50/p95/p99.
- ``decode_time_vs_history``: time per generated token of a decoder session whose kept history is
  64 vs 4096 positions (served, gRPC streaming, inter-token times; and in-process), and the ratio.
- ``memory_per_session``: bytes of kept state per session, and the resident memory of the session
  model with 10,000 idle sessions open.

`make bench` runs this before `mambaserve.loadtest.report`, which includes the sections.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from mambaserve.contract import spec
from mambaserve.loadtest import CHECKOUT

ROOT = CHECKOUT
LEVELS = (1, 8, 32)
CHUNK_MS = (320.0, 640.0)
HISTORIES = (64, 4096)
GOALS = {"chunk_p99_ms_at_32": 60.0, "token_time_ratio": 1.05, "state_kb_per_session": 64.0}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _log(msg: str) -> None:
    print(f"[streaming-bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 1. chunk latency of live streams
# ---------------------------------------------------------------------------------------------
def chunk_latency(
    grpc_url: str,
    http_url: str | None,
    clips: list[np.ndarray],
    streams: int,
    seconds: float,
    chunk_ms: float = 320.0,
    seed: int = 0,
) -> dict:
    """`streams` threads, each streaming clips back to back in real time for about `seconds`."""
    from mambaserve.clients import StreamingClient

    partial, final, errors = [], [], []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        time.sleep(rng.uniform(0, chunk_ms / 1000))  # streams do not start in lock step
        with StreamingClient(grpc_url, timeout=60) as client:
            while time.monotonic() < stop_at:
                audio = clips[rng.randrange(len(clips))]
                try:
                    for r in client.stream(audio, chunk_ms=chunk_ms, speed=1.0):
                        with lock:
                            (final if r.is_final else partial).append(r.latency_s * 1000)
                except Exception as e:  # counted and reported; the stream goes on with the next clip
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

    before = _stats(http_url)
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(streams)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    profile = _profile(before, _stats(http_url))
    every = partial + final
    return {
        "streams": streams,
        "chunk_ms": chunk_ms,
        "wall_s": round(wall, 1),
        "chunks": len(every),
        "utterances": len(final),
        "errors": len(errors),
        "error_examples": errors[:3],
        "all": {"p50_ms": _pct(every, 50), "p95_ms": _pct(every, 95), "p99_ms": _pct(every, 99)},
        "partial": {"p50_ms": _pct(partial, 50), "p99_ms": _pct(partial, 99)},
        "final": {"p50_ms": _pct(final, 50), "p99_ms": _pct(final, 99)},
        "avg_batch": {
            m: profile.get(m, {}).get("avg_batch") for m in (spec.STREAMING_ENCODER, spec.STREAMING_DECODER)
        },
        "compute_ms_per_execution": {
            m: profile.get(m, {}).get("compute_ms_per_execution")
            for m in (spec.STREAMING_ENCODER, spec.STREAMING_DECODER)
        },
        "queue_ms_per_request": {
            m: profile.get(m, {}).get("queue_ms_per_request")
            for m in (spec.STREAMING_ENCODER, spec.STREAMING_DECODER)
        },
        "host_load": list(os.getloadavg()),
    }


def _stats(http_url: str | None) -> dict:
    if not http_url:
        return {}
    from mambaserve.loadtest import server_stats

    return server_stats.snapshot(http_url)


def _profile(before: dict, after: dict) -> dict:
    if not after:
        return {}
    from mambaserve.loadtest import server_stats

    return {k: v.to_json() for k, v in server_stats.diff(before, after).items()}


# ---------------------------------------------------------------------------------------------
# 2. time per token vs the session's history
# ---------------------------------------------------------------------------------------------
def grow_history(session, target: int, word: str = "the") -> int:
    """Add CONTEXT to a session until its history is >= target positions; returns the history."""
    h0 = session.history_length
    if h0 >= target:
        return h0
    h1 = session.add_context(word)
    per_word = max(1, h1 - h0)
    while session.history_length < target:
        words = max(1, min((target - session.history_length) // per_word, 200))  # 200 words < 1024 bytes
        session.add_context(" ".join([word] * words))
    return session.history_length


def served_token_times(
    grpc_url: str, audio: np.ndarray, histories=HISTORIES, tokens: int = 64, repeats: int = 7
) -> dict:
    """Median inter-token time of `tokens` sampled tokens (EOS suppressed) per history length."""
    from mambaserve.clients import SessionClient

    out = {}
    with SessionClient(grpc_url, timeout=120) as client:
        sessions = {}
        for h in histories:
            s = client.open(audio)
            sessions[h] = (s, grow_history(s, h))
        samples: dict[int, list[float]] = {h: [] for h in histories}
        for r in range(repeats):
            for h in histories if r % 2 == 0 else histories[::-1]:  # alternate the order
                g = sessions[h][0].generate(method="sample", seed=r, min_tokens=tokens, max_tokens=tokens)
                samples[h] += [1000 * (b - a) for a, b in itertools.pairwise(g.token_times)]
        for h in histories:
            s, actual = sessions[h]
            out[h] = {
                "history": actual,
                "ms_per_token": statistics.median(samples[h]),
                "mean_ms": statistics.fmean(samples[h]),
                "gaps": len(samples[h]),
            }
            s.close()
    return out


def inprocess_token_times(checkpoint: Path, histories=HISTORIES, tokens: int = 64, repeats: int = 7) -> dict:
    """The same measurement in this process (1 torch thread, as served): DecoderPool steps on a
    state that has seen `h` positions."""
    import torch
    from mambaserve.model.checkpoint import load_checkpoint
    from mambaserve.serving.streaming_engine import DecoderPool, Sampling

    torch.set_num_threads(1)
    ckpt = load_checkpoint(checkpoint)
    dec = ckpt.model.decoder.eval()
    pool = DecoderPool(dec, capacity=len(histories))
    g = torch.Generator().manual_seed(0)
    logits = {}
    for row, h in enumerate(histories):
        pool.reset([row])
        ids = torch.randint(4, ckpt.config.vocab_size, (h,), generator=g).tolist()
        logits[h] = pool.feed_tokens([row], [ids])
    saved = pool.state.clone()
    times: dict[int, list[float]] = {h: [] for h in histories}
    for r in range(repeats):
        for row, h in enumerate(histories):
            pool.state.conv.copy_(saved.conv)
            pool.state.ssm.copy_(saved.ssm)
            stamps: list[float] = []
            pool.generate(
                [row],
                logits[h],
                [Sampling(method="sample", seed=r, min_tokens=tokens, max_tokens=tokens)],
                [tokens],
                ckpt.config.eos_id,
                on_token=lambda _r, _t, out=stamps: out.append(time.perf_counter()),
            )
            times[h] += [1000 * (b - a) for a, b in itertools.pairwise(stamps)]
    return {
        h: {
            "history": h,
            "ms_per_token": statistics.median(times[h]),
            "mean_ms": statistics.fmean(times[h]),
            "gaps": len(times[h]),
        }
        for h in histories
    }


# ---------------------------------------------------------------------------------------------
# 3. memory per idle session
# ---------------------------------------------------------------------------------------------
def state_bytes(checkpoint: Path) -> dict:
    from mambaserve.model.config import ModelConfig

    c = ModelConfig.load(checkpoint / "config.json")
    m = c.decoder.mamba
    e = c.encoder.mamba
    per = m.n_layers * m.d_inner * (m.d_conv - 1 + m.d_state)
    enc = e.n_layers * e.d_inner * (e.d_conv - 1 + e.d_state)
    return {
        "decoder_fp32": 4 * per,
        "decoder_fp16": 2 * per,
        "encoder_fp32": 4 * enc,
        "layers": m.n_layers,
        "d_inner": m.d_inner,
        "d_state": m.d_state,
        "d_conv": m.d_conv,
    }


def idle_sessions_memory(
    grpc_url: str, server_pid: int, audio: np.ndarray, n: int, concurrency: int = 16
) -> dict:
    """Open `n` sessions (audio only, nothing generated) and measure the session model's RSS."""
    from mambaserve.clients import SessionClient
    from mambaserve.loadtest import procs

    def rss() -> int:
        return procs.rss_bytes(procs.server_processes(server_pid).get(spec.DECODER_SESSION, []))

    before = rss()
    lock = threading.Lock()
    opened: list = []
    t0 = time.monotonic()

    def worker(k: int) -> None:
        with SessionClient(grpc_url, timeout=120) as client:
            for _ in range(k, n, concurrency):
                s = client.open(audio)
                with lock:
                    opened.append(s.id)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    seconds = time.monotonic() - t0
    after = rss()
    return {
        "sessions": len(opened),
        "open_seconds": round(seconds, 1),
        "rss_before": before,
        "rss_after": after,
        "bytes_per_session": (after - before) / max(1, len(opened)),
        "audio_seconds": len(audio) / spec.SAMPLE_RATE,
    }


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def _write(key: str, title: str, markdown: str, data: dict) -> None:
    from mambaserve.loadtest.report import write_section

    path = write_section(key, title, markdown, data)
    _log(f"wrote {path}")


def latency_markdown(rows: list[dict], random_model: bool) -> str:
    lines = [
        "| chunk ms | streams | chunks | utterances | p50 ms | p95 ms | p99 ms | partial p99 ms | final p50 / p99 ms | "
        "avg batch enc / dec | compute ms/exec enc / dec | queue ms enc / dec | errors | host load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|",
    ]
    for r in rows:

        def pair(values: dict, digits: int = 2) -> str:
            return " / ".join(
                "–" if values.get(m) is None else f"{values[m]:.{digits}f}"
                for m in (spec.STREAMING_ENCODER, spec.STREAMING_DECODER)
            )

        batch = pair(r["avg_batch"])
        compute, queue = (
            pair(r.get("compute_ms_per_execution", {}), 1),
            pair(r.get("queue_ms_per_request", {}), 1),
        )
        load = f"{r['host_load'][0]:.1f}" if r.get("host_load") else "–"
        lines.append(
            f"| {r['chunk_ms']:.0f} | {r['streams']} | {r['chunks']} | {r['utterances']} | {r['all']['p50_ms']:.1f} | "
            f"{r['all']['p95_ms']:.1f} | {r['all']['p99_ms']:.1f} | {r['partial']['p99_ms']:.1f} | "
            f"{r['final']['p50_ms']:.1f} / {r['final']['p99_ms']:.1f} | {batch} | {compute} | {queue} | {r['errors']} | {load} |"
        )
    at32 = {r["chunk_ms"]: r["all"]["p99_ms"] for r in rows if r["streams"] == max(LEVELS)}
    verdict = "; ".join(
        f"{ms:.0f} ms chunks: {p99:.1f} ms ({'met' if p99 <= GOALS['chunk_p99_ms_at_32'] else 'not met'})"
        for ms, p99 in at32.items()
    )
    note = (
        " The checkpoint is randomly initialised: its decoder runs to its length budget at END, so final-chunk "
        "latencies are an upper bound."
        if random_model
        else ""
    )
    return (
        "Live streams: each stream sends real-speech clips back to back in fixed-size chunks "
        "at real-time pace over one gRPC bidirectional stream (`StreamingClient`, speed 1.0); latency = send "
        "of a chunk to its answer (partial transcript; the last chunk of an utterance also runs the final "
        "decode). 'avg batch', 'compute ms/exec' (one execution of a whole batch) and 'queue ms' (per request) "
        "are Triton's statistics for the two sequence-batched steps; 'host load' = 1-minute load average of "
        "this shared 2-core machine at the end of the level."
        f"{note}\n\n"
        + "\n".join(lines)
        + f"\n\n**Goal: p99 ≤ {GOALS['chunk_p99_ms_at_32']:.0f} ms at {max(LEVELS)} streams — {verdict}.**"
    )


def history_markdown(served: dict, local: dict | None) -> str:
    short, long = HISTORIES
    lines = [
        "| where | history (positions) | ms per token (median gap) | mean gap ms |",
        "|---|---:|---:|---:|",
    ]
    for h in HISTORIES:
        lines.append(
            f"| served (`{spec.DECODER_SESSION}`, gRPC stream) | {served[h]['history']} | "
            f"{served[h]['ms_per_token']:.3f} | {served[h]['mean_ms']:.3f} |"
        )
    if local:
        for h in HISTORIES:
            lines.append(
                f"| in-process (`DecoderPool.generate`, 1 thread) | {local[h]['history']} | "
                f"{local[h]['ms_per_token']:.3f} | {local[h]['mean_ms']:.3f} |"
            )
    ratio = served[long]["ms_per_token"] / served[short]["ms_per_token"]
    text = (
        f"Two sessions on the same audio; one's kept history is grown with CONTEXT to {served[short]['history']} "
        f"positions, the other's to {served[long]['history']}. Each then generates 64 sampled tokens "
        "(end-of-sequence suppressed, MIN_TOKENS = MAX_TOKENS = 64) from a copy of its kept state, 7 runs in "
        "alternating order; time per token = the median gap between consecutive tokens as they arrive (robust to "
        "the other work on this shared machine; the mean is in the data).\n\n"
        + "\n".join(lines)
        + f"\n\n**Ratio {long} ÷ {short} (served) = {ratio:.3f}** (goal ≤ {GOALS['token_time_ratio']}: "
        f"{'met' if ratio <= GOALS['token_time_ratio'] else 'not met'})."
    )
    if local:
        lr = local[long]["ms_per_token"] / local[short]["ms_per_token"]
        text += f" In-process ratio = {lr:.3f}."
    return text + (
        " The state is the same two tensors whatever the history, so each step does the same work."
    )


def memory_markdown(sizes: dict, mem: dict | None) -> str:
    kb = 1024
    text = (
        f"Kept state of one decoder session: {sizes['layers']} layers × d_inner {sizes['d_inner']} × "
        f"(d_conv−1 + d_state = {sizes['d_conv'] - 1} + {sizes['d_state']}) = **{sizes['decoder_fp32'] / kb:.1f} KB "
        f"in float32** (the default, exact), {sizes['decoder_fp16'] / kb:.1f} KB with the build option "
        "`--session-state-dtype float16` (stored in half precision, computed in float32). A streaming sequence "
        f"also holds its encoder state, {sizes['encoder_fp32'] / kb:.1f} KB. Neither grows with the audio or "
        f"the text.\n\n**Goal ≤ {GOALS['state_kb_per_session']:.0f} KB per session: float32 "
        f"{'met' if sizes['decoder_fp32'] <= GOALS['state_kb_per_session'] * kb else 'not met'}, float16 "
        f"{'met' if sizes['decoder_fp16'] <= GOALS['state_kb_per_session'] * kb else 'not met'}.**"
    )
    if mem:
        text += (
            f"\n\nResident memory of the `{spec.DECODER_SESSION}` process (its slot pool is preallocated for "
            f"{spec.SESSION_SLOTS} sessions but only touched rows become resident): "
            f"{mem['rss_before'] / 2**20:.0f} MiB before, {mem['rss_after'] / 2**20:.0f} MiB with "
            f"**{mem['sessions']} idle sessions** open ({mem['audio_seconds']:.2f} s of audio each, opened in "
            f"{mem['open_seconds']:.0f} s): **{mem['bytes_per_session'] / kb:.1f} KB per session**."
        )
    return text


# ---------------------------------------------------------------------------------------------
def _clips(manifest: str | None, limit: int) -> list[np.ndarray]:
    from mambaserve.loadtest.clips import default_manifest, load_clips

    return [c.audio for c in load_clips(manifest or default_manifest(), limit=limit, prompts=False)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mambaserve.loadtest.streaming_bench", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--repository", default=None, help="model repository (default: the report's, under .cache/bench)"
    )
    p.add_argument("--checkpoint", default=None)
    p.add_argument(
        "--grpc-url", default=None, help="a running server (with --http-url) instead of starting one"
    )
    p.add_argument("--http-url", default=None)
    p.add_argument("--server-pid", type=int, default=None, help="with a running local server: for its memory")
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    p.add_argument("--sessions", type=int, default=10_000, help="idle sessions for the memory measurement")
    p.add_argument("--manifest", default=None)
    p.add_argument("--only", default="", help="comma-separated: latency,history,memory")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent streams, comma-separated")
    p.add_argument(
        "--chunk-ms", default=",".join(f"{c:g}" for c in CHUNK_MS), help="chunk lengths, comma-separated"
    )
    p.add_argument("--quick", action="store_true", help="short levels, 1000 sessions")
    args = p.parse_args(argv)
    only = {s for s in args.only.split(",") if s} or {"latency", "history", "memory"}
    seconds = 8.0 if args.quick else args.seconds
    n_sessions = min(args.sessions, 1000) if args.quick else args.sessions

    server = None
    if args.grpc_url:
        grpc_url, http_url, pid = args.grpc_url, args.http_url, args.server_pid
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        random_model = False
    else:
        from mambaserve.loadtest.report import bench_server

        server, checkpoint, random_model = bench_server(args, _log)
        server.start()
        grpc_url, http_url, pid = server.grpc_url, server.http_url, server.pid
    results: dict = {}
    try:
        clips = _clips(args.manifest, 60)
        if "latency" in only:
            rows = []
            for chunk_ms in [float(c) for c in args.chunk_ms.split(",")]:
                for n in [int(x) for x in args.levels.split(",")]:
                    _log(f"chunk latency, {chunk_ms:.0f} ms chunks, {n} live streams, {seconds:.0f} s ...")
                    rows.append(chunk_latency(grpc_url, http_url, clips, n, seconds, chunk_ms))
                    _log(f"  p50 {rows[-1]['all']['p50_ms']:.1f} ms, p99 {rows[-1]['all']['p99_ms']:.1f} ms")
            results["latency"] = rows
            _write(
                "streaming_chunk_latency",
                "Streaming chunk latency (asr_streaming, live streams)",
                latency_markdown(rows, random_model),
                {"levels": rows, "goal_p99_ms": GOALS["chunk_p99_ms_at_32"]},
            )
        if "history" in only:
            _log("time per token vs session history ...")
            audio = clips[0][: spec.SAMPLE_RATE]
            served = served_token_times(grpc_url, audio)
            local = inprocess_token_times(checkpoint) if checkpoint else None
            results["history"] = {"served": served, "inprocess": local}
            _write(
                "decode_time_vs_history",
                "Decode time per token vs session history (decoder_session)",
                history_markdown(served, local),
                results["history"],
            )
        if "memory" in only:
            sizes = state_bytes(checkpoint) if checkpoint else None
            mem = None
            if pid:
                _log(f"opening {n_sessions} idle sessions ...")
                mem = idle_sessions_memory(grpc_url, pid, clips[1][: spec.SAMPLE_RATE // 4], n_sessions)
            results["memory"] = {"state_bytes": sizes, "idle_sessions": mem}
            if sizes:
                _write(
                    "memory_per_session",
                    "State and memory per session",
                    memory_markdown(sizes, mem),
                    results["memory"],
                )
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(results, default=float, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
