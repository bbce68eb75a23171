"""The processes of a local tritonserver: the server and its python-backend stubs, by model.

Each python model instance is its own stub process (`triton_python_backend_stub <repo>/<model>/<v>/model.py`,
the onnxruntime stand-in too), so "server memory" means the server plus all its stubs, and the CPU
a model costs is its stubs' CPU time. Linux /proc only; for a server on this host.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path

from mambaserve.serving.stubs import proc_stat, stub_model

SERVER = "tritonserver"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def server_processes(server_pid: int) -> dict[str, list[int]]:
    """{"tritonserver": [pid], model: [stub pids], ...} (a zombie stub still counts until reaped)."""
    out: dict[str, list[int]] = defaultdict(list)
    out[SERVER].append(server_pid)
    for child in _children(server_pid):
        model = stub_model(child)
        if model:
            out[model].append(child)
    return dict(out)


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (not their children)."""
    total = 0
    for pid in pids:
        fields = proc_stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _TICK


def is_zombie(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def snapshot(server_pid: int) -> dict[str, dict[str, float]]:
    """{process group: {"rss_bytes", "cpu_seconds", "processes"}} for the server and each model."""
    return {
        name: {"rss_bytes": rss_bytes(pids), "cpu_seconds": cpu_seconds(pids), "processes": len(pids)}
        for name, pids in server_processes(server_pid).items()
    }
