"""Numbered model versions: a build adds `<model>/<N+1>/` and never overwrites a served version.

Configs keep Triton's default policy (serve the latest version), so a new build takes over on the
next (re)load while the previous version stays on disk to roll back to (delete the newer folder).
"""

from __future__ import annotations

import json
from pathlib import Path

BUILD_INFO = "build.json"
"""Written into every new version folder: checkpoint hash, build options, time (the demo reads it)."""


def versions(model_dir: str | Path) -> list[int]:
    """The integer version folders of a model, ascending (other folders, e.g. warmup/, are ignored)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
    )


def latest_version(model_dir: str | Path) -> int | None:
    found = versions(model_dir)
    return found[-1] if found else None


def next_version(model_dir: str | Path) -> int:
    return (latest_version(model_dir) or 0) + 1


def read_build_info(model_dir: str | Path, version: int | None = None) -> dict | None:
    """build.json of `version` (default: the latest), or None if there is none."""
    version = version if version is not None else latest_version(model_dir)
    if version is None:
        return None
    path = Path(model_dir) / str(version) / BUILD_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
