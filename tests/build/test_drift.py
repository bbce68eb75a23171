"""Drift: the committed model_repository/ is what the build writes today.

Every config.pbtxt is regenerated from the contract (contract/spec.py), the shipped checkpoint's sizes
and the options its build.json recorded, and compared with the committed file; so are the warm-up data
files and the model.py shims. A change to the contract or the generator that is not followed by a
rebuild (`make repo`) fails here, not on a server.
"""

from __future__ import annotations

import helpers
import pytest
from mambaserve.build.export.modules import EncoderForExport, TritonEncoder
from mambaserve.build.repository import (
    BUILD_FORMAT,
    PYTHON_MODELS,
    BuildOptions,
    checkpoint_digest,
    generate_configs,
    python_model_file,
    warmup_files,
    warmup_shapes,
)
from mambaserve.build.versioning import latest_version, read_build_info
from mambaserve.contract import spec
from mambaserve.model.checkpoint import load_checkpoint

REPOSITORY, CHECKPOINT = helpers.REPOSITORY, helpers.CHECKPOINT


@pytest.fixture(scope="module")
def build_info() -> dict:
    info = read_build_info(REPOSITORY / spec.ASR)
    assert info is not None, f"{REPOSITORY / spec.ASR} has no build.json"
    return info


def test_the_committed_repository_was_built_from_the_shipped_checkpoint_by_this_build_format(build_info):
    assert build_info["build_format"] == BUILD_FORMAT, (
        "rebuild model_repository (make repo): the build format changed"
    )
    assert build_info["checkpoint_sha256"] == checkpoint_digest(CHECKPOINT), (
        "rebuild model_repository: the checkpoint changed"
    )
    names = {p.parent.name for p in REPOSITORY.glob("*/config.pbtxt")}
    assert names == set(build_info["versions"]), names
    for name, version in build_info["versions"].items():
        assert latest_version(REPOSITORY / name) == version, name
        assert read_build_info(REPOSITORY / name) == build_info, f"{name}: another build's build.json"


def test_every_config_regenerated_from_the_contract_equals_the_committed_one(build_info):
    ckpt = load_checkpoint(CHECKPOINT)
    options = BuildOptions(**build_info["options"])
    warm = warmup_shapes(TritonEncoder(EncoderForExport(ckpt.model)).eval(), ckpt.config.features.n_mels)
    configs = generate_configs(ckpt.config, options, warm, build_info["encoder_platform"])
    assert set(configs) == set(build_info["versions"])
    for name, text in configs.items():
        committed = (REPOSITORY / name / "config.pbtxt").read_text()
        assert committed == text, (
            f"{name}/config.pbtxt differs from what the build generates: rebuild (make repo)"
        )
    for relative, data in warmup_files(warm).items():
        assert (REPOSITORY / relative).read_bytes() == data, relative


def test_the_python_model_shims_are_the_generated_ones(build_info):
    for name, (module, _parts) in PYTHON_MODELS.items():
        shim = REPOSITORY / name / str(build_info["versions"][name]) / "model.py"
        assert shim.read_text() == python_model_file(module, name), shim
