#!/usr/bin/env bash
# Run mambaserve.kernels.gpu_check from a plain checkout, with nothing installed: the lent GPU machine
# has torch, triton, numpy, safetensors and sentencepiece in its python3 but no network and no venv.
# The mambaserve namespace is mapped onto this checkout with symbolic links, folder by folder as
# pyproject.toml's [tool.setuptools.package-dir] maps it (so moved or new packages follow), in a
# temporary directory put first on PYTHONPATH. $PYTHON (default python3) runs it; arguments pass through.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
ns="$(mktemp -d)"
trap 'rm -rf "$ns"' EXIT
"$python" - "$root" "$ns" <<'PY'
import pathlib, sys, tomllib
root, ns = map(pathlib.Path, sys.argv[1:])
dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
(ns / "mambaserve").mkdir()
(ns / "mambaserve" / "__init__.py").write_text("")
for name, folder in dirs.items():
    parts = name.split(".")
    if parts[0] == "mambaserve" and len(parts) == 2:
        (ns / "mambaserve" / parts[1]).symlink_to(root / folder, target_is_directory=True)
PY
cd "$root"
PYTHONPATH="$ns${PYTHONPATH:+:$PYTHONPATH}" "$python" -m mambaserve.kernels.gpu_check "$@"
