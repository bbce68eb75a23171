"""/proc facts about a local tritonserver's python-backend stub processes (Linux only).

Shared by the watchdog (which stub died), the load-test tooling (memory and CPU by model) and the
launcher (which /dev/shm regions belong to no live process).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first, then ppid, ...); None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return raw[raw.rindex(")") + 2 :].split()


def stub_model(pid: int) -> str | None:
    """The model a stub process serves (from its argv[1], `<repo>/<model>/<version>/model.py`)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(argv) < 2 or not argv[0].endswith(b"triton_python_backend_stub"):
        return None
    parts = Path(argv[1].decode(errors="replace")).parts
    return parts[-3] if len(parts) >= 3 else None


# ---------------------------------------------------------------------------------------------
# Shared-memory regions left behind by dead servers
# ---------------------------------------------------------------------------------------------
SHM_DIR = Path("/dev/shm")
SHM_REGION = re.compile(r"^triton_\w+_backend_shm_region_")
"""The python backend's regions (`triton_python_backend_shm_region_<uuid>`), and those of python-based
backends such as the onnxruntime stand-in (`triton_onnxruntime_backend_shm_region_<uuid>`)."""


ATTACHING = ("tritonserver", "triton_python_backend_stub")


def _may_attach(proc: Path) -> bool:
    """Whether an uninspectable process could hold backend regions: only tritonserver and its stubs
    attach to them, so any other program (named by its readable command line) cannot."""
    try:
        argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return True
    return not argv0 or Path(argv0.decode(errors="replace")).name in ATTACHING


def _shm_references(shm_dir: Path) -> tuple[set[str], set[int]]:
    """(names under `shm_dir` that some process maps or holds open, uids of processes we could not inspect)."""
    names: set[str] = set()
    blind: set[int] = set()
    prefix = f"{shm_dir}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            maps = (entry / "maps").read_text(errors="replace")
            fds = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except FileNotFoundError:  # exited meanwhile: holds nothing any more
            continue
        except OSError:  # not ours to inspect (another user's, or init in a sandbox)
            if _may_attach(entry):
                with contextlib.suppress(OSError):
                    blind.add(entry.stat().st_uid)
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            path = fields[5] if len(fields) == 6 else ""
            if path.startswith(prefix):
                names.add(path[len(prefix) :].removesuffix(" (deleted)"))
        names.update(fd[len(prefix) :] for fd in fds if fd.startswith(prefix))
    return names, blind


def stale_shm_regions(shm_dir: Path = SHM_DIR, min_age: float = 10.0) -> list[Path]:
    """Triton backend regions in `shm_dir` that no process maps or holds open (their server is gone).

    Safe next to other live servers: a live server keeps each of its regions both open and mapped
    (and its stubs map them), so only regions of dead servers are listed. A region younger than
    `min_age` seconds, or owned by a user whose processes this one cannot inspect, is never listed.
    """
    try:
        candidates = [p for p in shm_dir.iterdir() if SHM_REGION.match(p.name)]
    except OSError:
        return []
    if not candidates:
        return []
    referenced, blind = _shm_references(shm_dir)
    now = time.time()
    stale = []
    for path in candidates:
        try:
            st = path.stat()
        except OSError:
            continue
        if path.name in referenced or st.st_uid in blind or now - st.st_mtime < min_age:
            continue
        stale.append(path)
    return stale


def remove_stale_shm_regions(shm_dir: Path = SHM_DIR, min_age: float = 10.0) -> list[Path]:
    """Delete :func:`stale_shm_regions`; returns what was removed (files of others we may not delete are kept)."""
    removed = []
    for path in stale_shm_regions(shm_dir, min_age):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed
