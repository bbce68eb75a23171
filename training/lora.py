"""LoRA fine-tuning of the decoder with peft, e.g. adapting a checkpoint to the neural voice.

    python -m mambaserve.training.lora --checkpoint checkpoints/default \
        --train data/corpus/train.jsonl --filter-voice piper --out runs/lora_piper --steps 300

Only the adapters train (the encoder and the base decoder stay frozen). The run writes the adapters
alone (``adapter/``: peft's ``adapter_config.json`` + ``adapter_model.safetensors``, a few hundred KB)
and a merged checkpoint (``merged/``) that the build exports like any other: serving never needs peft.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mambaserve.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mambaserve.model.network import SpeechMamba
from mambaserve.training.dataset import ManifestDataset
from mambaserve.training.manifest import load_manifest
from mambaserve.training.train import BatchStream, Dist, TrainConfig, WarmupCosine, make_optimizer
from tqdm import tqdm

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


CHECKOUT = Path(__file__).resolve().parents[1]


def _peft():
    """peft, imported so that transformers finds the PyPI `kernels` package it needs.

    Why: run from the checkout root (`python -m ...`, pytest), the current directory is on sys.path and
    our top-level `kernels/` folder (the `mambaserve.kernels` package) would be imported as `kernels`.
    """
    shadow = sys.modules.get("kernels")
    if shadow is not None and str(getattr(shadow, "__file__", "")).startswith(str(CHECKOUT)):
        del sys.modules["kernels"]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(CHECKOUT)]
    try:
        return importlib.import_module("peft")
    finally:
        sys.path[:] = saved


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["in_proj", "x_proj", "out_proj"])


def add_adapters(model: SpeechMamba, settings: LoraSettings) -> SpeechMamba:
    """Wrap ``model.decoder`` in a peft LoRA model; freeze everything but the adapters."""
    peft = _peft()
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.targets,
    )
    model.requires_grad_(False)
    model.decoder = peft.get_peft_model(model.decoder, config)
    return model


def load_adapters(checkpoint: str | Path, adapter_dir: str | Path) -> Checkpoint:
    """A checkpoint with saved adapters applied (unmerged, as during fine-tuning)."""

    ckpt = load_checkpoint(checkpoint)
    ckpt.model.decoder = _peft().PeftModel.from_pretrained(ckpt.model.decoder, str(adapter_dir))
    ckpt.model.eval()
    return ckpt


def merge_adapters(model: SpeechMamba) -> SpeechMamba:
    """Fold the adapters into the decoder's weights: a plain SpeechMamba again."""
    model.decoder = model.decoder.merge_and_unload()
    return model


def finetune(
    checkpoint: str | Path,
    train_manifest: str | Path,
    out_dir: str | Path,
    steps: int = 300,
    lr: float = 1e-3,
    settings: LoraSettings | None = None,
    max_batch_seconds: float = 60.0,
    voice_filter: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Train adapters; returns (adapter directory, merged checkpoint directory)."""
    out = Path(out_dir)
    settings = settings or LoraSettings()
    ckpt = load_checkpoint(checkpoint)
    items, _ = load_manifest(train_manifest)
    if voice_filter:
        items = [it for it in items if voice_filter in str(it.get("voice", ""))]
    if not items:
        raise ValueError(
            f"{train_manifest}: no items{f' with voice {voice_filter!r}' if voice_filter else ''}"
        )
    dataset = ManifestDataset(items)
    torch.manual_seed(seed)
    model = add_adapters(ckpt.model, settings)
    config = TrainConfig(
        max_batch_seconds=max_batch_seconds,
        max_steps=steps,
        lr=lr,
        warmup_steps=min(50, steps // 5),
        seed=seed,
        weight_decay=0.0,
    )
    optimizer = make_optimizer(model, config)
    schedule = WarmupCosine(optimizer, config)
    batches = iter(BatchStream(dataset, config, Dist()))
    model.train()
    bar = tqdm(total=steps, desc="lora", disable=not progress)
    t0 = time.perf_counter()
    while not schedule.finished():
        schedule.apply()
        batch = next(batches)
        with torch.no_grad():
            feats, lengths = model.features(batch["audio"], batch["audio_lengths"])
        targets = [ckpt.tokenizer.encode(t) for t in batch["texts"]]
        prompts = [ckpt.tokenizer.encode(p) if p else [] for p in batch["prompts"]]
        out_ = model.compute_loss(feats, lengths, targets, prompts, ctc_weight=0.0)
        out_["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step_count += 1
        bar.update(1)
        bar.set_postfix(ce=f"{float(out_['ce']):.3f}")
    bar.close()
    adapter_dir = out / ADAPTER_DIR
    model.decoder.save_pretrained(str(adapter_dir))
    (out / "lora.json").write_text(
        json.dumps(
            {
                "base_checkpoint": str(checkpoint),
                "settings": dataclasses.asdict(settings),
                "steps": steps,
                "items": len(items),
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
        + "\n"
    )
    merged = merge_adapters(model).eval()
    merged_dir = save_checkpoint(out / MERGED_DIR, merged, ckpt.tokenizer, ckpt.config)
    return adapter_dir, merged_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--train", required=True, help="training manifest")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--filter-voice", help="only items whose 'voice' field contains this (e.g. piper)")
    args = parser.parse_args(argv)
    adapter, merged = finetune(
        args.checkpoint,
        args.train,
        args.out,
        args.steps,
        args.lr,
        LoraSettings(rank=args.rank, alpha=args.alpha),
        voice_filter=args.filter_voice,
    )
    print(f"adapters: {adapter}\nmerged checkpoint: {merged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
