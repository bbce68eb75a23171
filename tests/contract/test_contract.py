"""The contract layer: defined once, imported by everything above, importing nothing of ours."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import helpers
from mambaserve.contract import spec
from mambaserve.model.config import FeatureConfig

CODE = ("contract", "kernels", "model", "training", "serving", "build", "clients", "loadtest", "demo")


def test_the_sample_rate_is_defined_once():
    definition = re.compile(r"^\s*SAMPLE_RATE\s*(:\s*\w+\s*)?=|\b16_?000\b", re.M)
    found = sorted(
        str(path.relative_to(helpers.ROOT))
        for folder in CODE
        for path in (helpers.ROOT / folder).rglob("*.py")
        if definition.search(path.read_text())
    )
    assert found == ["contract/spec.py"], found
    assert FeatureConfig().sample_rate == spec.SAMPLE_RATE


def test_every_import_points_down_the_layers():
    """import-linter's contracts in pyproject.toml ([tool.importlinter]), as `make lint` runs them."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=helpers.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"Contracts: \d+ kept, 0 broken", proc.stdout), proc.stdout[-2000:]


def test_tensor_specs_know_their_wire_and_numpy_types():
    assert (spec.AUDIO.wire_dtype, spec.AUDIO.numpy_dtype) == ("FP32", "float32")
    assert (spec.PROMPT.wire_dtype, spec.PROMPT.numpy_dtype, spec.PROMPT.optional) == (
        "BYTES",
        "object",
        True,
    )
    assert spec.AUDIO.as_optional().optional and not spec.AUDIO.optional
