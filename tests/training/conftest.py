"""Fixtures for the model and training tests: a tiny synthetic corpus and tiny model configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from mambaserve.training.config import MambaConfig, ModelConfig
from mambaserve.training.train import load_config

TINY_YAML = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few espeak utterances (and one piper one in dev/hotwords) with manifests, built by the real generator."""
    from mambaserve.training.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, n_train=24, n_piper_train=0, n_dev=4, n_test=4, n_piper_test=0, n_hotword_test=4,
                 n_test_diphone=2, n_heldout_voices=2, progress=False)
    return out


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    """Odd sizes on purpose: non-power-of-two widths and state sizes."""
    cfg = ModelConfig()
    cfg.encoder.mamba = MambaConfig(d_model=24, n_layers=2, d_state=5, d_conv=4, expand=2)
    cfg.decoder.mamba = MambaConfig(d_model=28, n_layers=2, d_state=6, d_conv=3, expand=2)
    cfg.vocab_size = 40
    return cfg


@pytest.fixture
def tiny_train_config(tiny_corpus: Path, tmp_path: Path):
    return load_config(
        TINY_YAML,
        [f"train_manifest={tiny_corpus / 'train.jsonl'}", f"dev_manifest={tiny_corpus / 'dev.jsonl'}", f"out_dir={tmp_path / 'run'}"],
    )
