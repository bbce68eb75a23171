"""Checkpoints: ``model.safetensors`` + ``config.json`` + ``tokenizer.model`` in one directory.

Writes are crash-safe: everything goes to a temporary sibling directory that is renamed into place,
so a reader sees the old checkpoint or the new one, never half of one. ``parts`` writes a subset of
the weights (e.g. only the decoder for the serving decoder model); loading checks that every weight
of the saved parts is present.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from mambaserve.model.config import ModelConfig
from mambaserve.model.network import SpeechMamba
from mambaserve.model.tokenizer import Tokenizer, train_tokenizer
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.model"


@dataclass
class Checkpoint:
    model: SpeechMamba
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path


def _tied_duplicates(model: torch.nn.Module) -> set[str]:
    """State-dict keys that alias an earlier key (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    dupes = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            dupes.add(name)
        else:
            seen[ptr] = name
    return dupes


def model_state(model: SpeechMamba, parts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Weights to save: tied aliases dropped, optionally only keys under ``parts`` prefixes."""
    skip = _tied_duplicates(model)
    state = {}
    for name, tensor in model.state_dict().items():
        if name in skip or (parts and not any(name == p or name.startswith(p + ".") for p in parts)):
            continue
        state[name] = tensor.detach().to("cpu").contiguous()
    return state


def atomic_directory(path: Path) -> tempfile.TemporaryDirectory:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{path.name}.tmp-", dir=path.parent)


def replace_directory(tmp: Path, path: Path) -> None:
    """Move a finished directory into place; the previous one is removed only afterwards."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        f.chmod(0o644)
    tmp.chmod(0o755)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    path: str | Path,
    model: SpeechMamba,
    tokenizer: Tokenizer,
    config: ModelConfig,
    parts: Sequence[str] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    path = Path(path)
    with atomic_directory(path) as tmp_name:
        tmp = Path(tmp_name) / "ckpt"
        tmp.mkdir()
        metadata = {"format": "pt", "parts": json.dumps(list(parts) if parts else [])}
        save_file(model_state(model, parts), str(tmp / WEIGHTS), metadata=metadata)
        config.save(tmp / CONFIG)
        tokenizer.save(tmp / TOKENIZER)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        replace_directory(tmp, path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not (path / WEIGHTS).exists():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no {WEIGHTS})")
    config = ModelConfig.load(path / CONFIG)
    tokenizer = Tokenizer.load(path / TOKENIZER)
    model = SpeechMamba(config)
    state = load_file(str(path / WEIGHTS))
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), "pt") as f:
        parts = json.loads((f.metadata() or {}).get("parts", "[]"))
    expected = set(model_state(model, parts or None))
    missing = expected - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{path}: missing weights {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return Checkpoint(model.to(device).eval(), tokenizer, config, path)


def default_tokenizer_texts(n_words: int = 6000) -> Iterable[str]:
    """Common English words as pseudo-sentences: enough to train a tokenizer for an untrained model."""
    from wordfreq import top_n_list

    words = top_n_list("en", n_words)
    return [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]


def init_checkpoint(path: str | Path, config: ModelConfig | None = None, seed: int = 0) -> Path:
    """A randomly initialised checkpoint: lets the build and serving work before any training."""
    config = config or ModelConfig()
    tokenizer = train_tokenizer(default_tokenizer_texts(), vocab_size=config.vocab_size)
    config.vocab_size = tokenizer.vocab_size
    torch.manual_seed(seed)
    return save_checkpoint(path, SpeechMamba(config), tokenizer, config)


def average_checkpoints(paths: Sequence[str | Path]) -> SpeechMamba:
    """The element-wise mean of several checkpoints' weights (usually the last few of a run)."""
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    first = load_checkpoint(paths[0])
    total = {k: v.double().clone() for k, v in first.model.state_dict().items()}
    for p in paths[1:]:
        for k, v in load_checkpoint(p).model.state_dict().items():
            total[k] += v.double()
    model = first.model
    model.load_state_dict({k: (v / len(paths)).to(model.state_dict()[k].dtype) for k, v in total.items()})
    return model
