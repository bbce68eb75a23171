"""Server-side profile of a load run from Triton's statistics API (`GET /v2/models/stats`).

Two snapshots bracket a run; their difference says, per model, how many requests it served, how
many executions that took (dynamic batching = inferences ÷ executions, and the batch-size
histogram), how long requests queued, and how long one execution computed. That is where the
time goes inside the ensemble, measured by the server itself.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import asdict, dataclass, field


def snapshot(http_url: str, timeout: float = 10.0) -> dict[str, dict]:
    """{model name: its statistics entry} for every loaded model (latest version)."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=timeout) as resp:
        stats = json.loads(resp.read())["model_stats"]
    return {m["name"]: m for m in stats}


def settled_snapshot(http_url: str, timeout: float = 3.0, interval: float = 0.05) -> dict[str, dict]:
    """A snapshot taken once the statistics stopped moving (two in a row alike, or `timeout`).

    Triton counts a request in its statistics just after the response is sent, so a snapshot taken
    the moment the last answer arrives can miss it.
    """
    deadline = time.monotonic() + timeout
    last = snapshot(http_url)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = snapshot(http_url)
        if now == last:
            return now
        last = now
    return last


@dataclass
class ModelProfile:
    model: str
    requests: int
    inferences: int
    executions: int
    avg_batch: float
    queue_ms_per_request: float
    compute_ms_per_request: float  # input + infer + output of the execution the request was in
    compute_ms_per_execution: float  # wall time of one execution (batch statistics)
    batch_histogram: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _ns(entry: dict, key: str) -> int:
    return int(entry.get("inference_stats", {}).get(key, {}).get("ns", 0))


def _count(entry: dict, key: str) -> int:
    return int(entry.get("inference_stats", {}).get(key, {}).get("count", 0))


_COMPUTE = ("compute_input", "compute_infer", "compute_output")


def _batch_ns(entry: dict) -> int:
    return sum(int(s[k]["ns"]) for s in entry.get("batch_stats", []) for k in _COMPUTE if k in s)


def diff(before: dict[str, dict], after: dict[str, dict]) -> dict[str, ModelProfile]:
    out = {}
    for name, b in after.items():
        a = before.get(name, {})
        requests = _count(b, "success") - _count(a, "success")
        inferences = int(b.get("inference_count", 0)) - int(a.get("inference_count", 0))
        executions = int(b.get("execution_count", 0)) - int(a.get("execution_count", 0))
        queue = _ns(b, "queue") - _ns(a, "queue")
        # inference_stats add an execution's duration to *each* request in its batch;
        # batch_stats count each execution once
        compute = sum(_ns(b, k) - _ns(a, k) for k in _COMPUTE)
        hist_a = {s["batch_size"]: s["compute_infer"]["count"] for s in a.get("batch_stats", [])}
        hist = {
            s["batch_size"]: s["compute_infer"]["count"] - hist_a.get(s["batch_size"], 0)
            for s in b.get("batch_stats", [])
        }
        exec_ns = _batch_ns(b) - _batch_ns(a)
        batch_execs = sum(hist.values())
        out[name] = ModelProfile(
            model=name,
            requests=requests,
            inferences=inferences,
            executions=executions,
            avg_batch=inferences / executions if executions else float("nan"),
            queue_ms_per_request=queue / 1e6 / requests if requests else float("nan"),
            compute_ms_per_request=compute / 1e6 / requests if requests else float("nan"),
            compute_ms_per_execution=exec_ns / 1e6 / batch_execs if batch_execs else float("nan"),
            batch_histogram={k: v for k, v in sorted(hist.items()) if v},
        )
    return out


def markdown_table(profiles: dict[str, ModelProfile], order: tuple[str, ...] = ()) -> str:
    names = [n for n in order if n in profiles] + sorted(n for n in profiles if n not in order)
    lines = [
        "| model | requests | executions | avg batch | queue ms/request | compute ms/execution | "
        "batch sizes (count) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in names:
        p = profiles[n]
        hist = ", ".join(f"{k}:{v}" for k, v in p.batch_histogram.items()) or "–"
        lines.append(
            f"| {n} | {p.requests} | {p.executions} | {p.avg_batch:.2f} | {p.queue_ms_per_request:.1f} | "
            f"{p.compute_ms_per_execution:.1f} | {hist} |"
        )
    return "\n".join(lines)
