"""Fixtures for the training tests: a tiny synthetic corpus and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest
from mambaserve.training.train import load_config

TINY_YAML = helpers.ROOT / "training" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few espeak utterances (and one piper one in dev/hotwords) with manifests, built by the real generator."""
    from mambaserve.training.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(
        out,
        n_train=24,
        n_piper_train=0,
        n_dev=4,
        n_test=4,
        n_piper_test=0,
        n_hotword_test=4,
        n_test_diphone=2,
        n_heldout_voices=2,
        progress=False,
    )
    return out


@pytest.fixture
def tiny_train_config(tiny_corpus: Path, tmp_path: Path):
    return load_config(
        TINY_YAML,
        [
            f"train_manifest={tiny_corpus / 'train.jsonl'}",
            f"dev_manifest={tiny_corpus / 'dev.jsonl'}",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
