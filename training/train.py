"""Train the speech Mamba model: config-driven, exactly resumable, single process or DDP (torchrun).

    python -m mambaserve.training.train --config training/configs/default.yaml \
        --train data/corpus/train.jsonl --dev data/corpus/dev.jsonl --out runs/default [--resume]
    torchrun --nproc_per_node 2 -m mambaserve.training.train ...   # gloo on CPU, nccl on GPU

A run directory holds ``tokenizer.model``, ``checkpoints/step_*`` (weights + config + tokenizer +
``training_state.pt`` with optimizer, schedule, RNG and data position), ``final`` (the average of
the last checkpoints) and ``tb/`` (TensorBoard logs).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from mambaserve.model.checkpoint import Checkpoint, average_checkpoints, load_checkpoint, save_checkpoint
from mambaserve.model.config import ModelConfig, from_dict
from mambaserve.model.ctc import ctc_greedy
from mambaserve.model.network import SpeechMamba
from mambaserve.model.recognizer import Recognizer
from mambaserve.model.scoring import score
from mambaserve.model.tokenizer import Tokenizer, train_tokenizer
from mambaserve.training.augment import SpecAugmentConfig, spec_augment, synthetic_prompt
from mambaserve.training.bucketing import BucketBatchSampler
from mambaserve.training.dataset import ManifestDataset, collate_audio, load_audio
from torch import Tensor
from tqdm import tqdm

log = logging.getLogger("mambaserve.train")

TRAINING_STATE = "training_state.pt"


@dataclass
class TrainConfig:
    train_manifest: str = "data/corpus/train.jsonl"
    dev_manifest: str | None = "data/corpus/dev.jsonl"
    out_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab_size: int = 256
    max_batch_seconds: float = 100.0
    max_batch_items: int | None = 48
    num_buckets: int = 20
    max_steps: int = 3000
    max_minutes: float | None = None  # wall-clock budget; the LR schedule follows whichever ends first
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    prompt_augment: float = 0.2  # chance that an item without a prompt gets a synthetic one
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    eval_items: int = 96
    save_every: int = 250
    keep_last: int = 3
    average_last: int = 3
    stats_items: int = 400
    threads: int = 0
    data_workers: int = 2  # DataLoader worker processes reading the batches' audio (0: in the training loop)
    device: str = "auto"
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Strict: unknown keys and values of the wrong type are ValueErrors naming the field."""
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""1e-3: a float in YAML 1.2, a string to PyYAML (YAML 1.1 wants a dot: 1.0e-3)."""


def _override_value(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(text.strip()):
        return float(text)
    return value


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML config plus ``key.sub=value`` overrides (values parsed as YAML; ``1e-3`` is a float)."""
    data: dict[str, Any] = yaml.safe_load(Path(path).read_text()) if path else {}
    data = data or {}
    for item in overrides:
        key, _, value = item.partition("=")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _override_value(value)
    return TrainConfig.from_dict(data)


# ------------------------------------------------------------------------------------------------
# Distributed helpers
# ------------------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks). All ranks must call it."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():  # a second Trainer in the same process (resume) joins the same group
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------
class WarmupCosine:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``; progress is steps or time, whichever is further."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
        self.optimizer = optimizer
        self.config = config
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self.elapsed = 0.0

    def factor(self) -> float:
        c = self.config
        if self.step_count < c.warmup_steps:
            return (self.step_count + 1) / c.warmup_steps
        progress = (self.step_count - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
        if c.max_minutes:
            progress = max(progress, self.elapsed / (60 * c.max_minutes))
        progress = min(1.0, progress)
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self) -> float:
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f
        return self.base_lrs[0] * f

    def finished(self) -> bool:
        c = self.config
        return self.step_count >= c.max_steps or bool(c.max_minutes and self.elapsed >= 60 * c.max_minutes)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "elapsed": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count, self.elapsed = int(state["step_count"]), float(state["elapsed"])


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """No weight decay on norms, biases, embeddings and the SSM's A_log / D (as in mamba-ssm)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or name.endswith(("A_log", "D")) or "embed" in name or "latents" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
class BatchStream:
    """Endless batches from a resumable bucket sampler, read by a DataLoader with ``data_workers``
    processes; tracks what the training loop *consumed* (workers read ahead) for exact resume."""

    def __init__(self, dataset: Any, config: TrainConfig, d: Dist) -> None:
        self.dataset = dataset
        self.workers = config.data_workers
        self.sampler = BucketBatchSampler(
            dataset.durations,
            max_batch_seconds=config.max_batch_seconds,
            max_batch_items=config.max_batch_items,
            num_buckets=config.num_buckets,
            seed=config.seed,
            num_replicas=d.world,
            rank=d.rank,
        )
        self.epoch = 0
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _loader(self, batches: list[list[int]]) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=collate_audio,
            num_workers=self.workers,
            # Workers' seeds come from this generator, not the global RNG: starting an epoch must not
            # move the training randomness (dropout, augmentation), or a resumed run would differ.
            generator=torch.Generator().manual_seed(self.epoch),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            remaining = self.sampler.epoch_batches(self.epoch)[self.position :]
            if remaining:
                for batch in self._loader(remaining):
                    self.position += 1
                    yield batch
            self.epoch, self.position = self.epoch + 1, 0


@torch.no_grad()
def feature_statistics(model: SpeechMamba, dataset: Any, n_items: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-bin mean and std of unnormalised log-mel over a random sample of training items."""
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=min(n_items, len(dataset)), replace=False)
    total = torch.zeros(model.config.features.n_mels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for i in indices:
        lm = model.features.log_mel(dataset[int(i)]["audio"][None].float())[0].double()
        total += lm.sum(0)
        total_sq += (lm * lm).sum(0)
        count += lm.shape[0]
    mean = total / max(count, 1)
    std = (total_sq / max(count, 1) - mean * mean).clamp_min(1e-8).sqrt()
    return mean.float(), std.float()


def load_training_state(path: Path) -> dict[str, Any]:
    """A checkpoint's training state, read with ``weights_only=True``: tensors and plain values only.

    Why: ``torch.load`` with full unpickling runs whatever code a tampered (or downloaded)
    ``training_state.pt`` carries; ``--resume`` must never execute a file's contents. States written
    before this change held a numpy array (the numpy RNG) and are refused the same way.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load: it holds more than tensors and plain Python values "
            f"(a pickled object; possibly written by an older mambaserve, or tampered with): {e}"
        ) from None


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.out = Path(config.out_dir)
        self.device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.dataset = ManifestDataset(config.train_manifest)
        if len(self.dataset) == 0:
            raise ValueError(f"{config.train_manifest}: no usable training items")
        self.dev_items = []
        if config.dev_manifest and Path(config.dev_manifest).exists():
            self.dev_items = ManifestDataset(config.dev_manifest).items[: config.eval_items]

        latest = self.latest_checkpoint() if resume else None
        if resume and latest is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", self.out / "checkpoints")
        if latest is not None:
            ckpt = load_checkpoint(latest, self.device)
            self.tokenizer, self.model_config = ckpt.tokenizer, ckpt.config
            self.model = ckpt.model.train()
        else:
            self.tokenizer = self._tokenizer()
            self.model_config = dataclasses.replace(config.model, vocab_size=self.tokenizer.vocab_size)
            torch.manual_seed(config.seed)
            self.model = SpeechMamba(self.model_config).to(self.device)
            mean, std = feature_statistics(self.model, self.dataset, config.stats_items, config.seed)
            self.model.features.set_statistics(mean.to(self.device), std.to(self.device))
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = make_optimizer(self.model, config)
        self.schedule = WarmupCosine(self.optimizer, config)
        self.stream = BatchStream(self.dataset, config, self.dist)
        self.rng = random.Random(config.seed * 1000 + self.dist.rank)
        torch.manual_seed(config.seed * 1000 + self.dist.rank)
        self.words = sorted({w for it in self.dataset.items for w in it["text"].split()})
        if latest is not None:
            self._load_training_state(latest)
        self.writer = None
        if self.dist.main:
            from torch.utils.tensorboard import SummaryWriter  # the train extra; slow to import

            self.writer = SummaryWriter(str(self.out / "tb"))

    # -- set-up ------------------------------------------------------------------------------------
    def _tokenizer(self) -> Tokenizer:
        path = self.out / "tokenizer.model"
        if self.dist.main:
            texts = [it["text"] for it in self.dataset.items]
            texts += [it["prompt"] for it in self.dataset.items if it.get("prompt")]
            self.out.mkdir(parents=True, exist_ok=True)
            train_tokenizer(texts, vocab_size=self.config.vocab_size).save(path)
        self.dist.barrier()
        return Tokenizer.load(path)

    def latest_checkpoint(self) -> Path | None:
        steps = sorted((self.out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        steps = [p for p in steps if (p / TRAINING_STATE).exists()]
        return steps[-1] if steps else None

    # -- state ---------------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        """This rank's random states as tensors and plain Python values only (loadable with weights_only)."""
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "python": self.rng.getstate(),  # (version, tuple of ints, None): plain types
            "numpy": (
                str(name),
                torch.from_numpy(keys.astype(np.int64)),
                int(pos),
                int(has_gauss),
                float(gauss),
            ),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.rng.setstate(state["python"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def _training_state(self, rng_states: list[dict[str, Any]]) -> bytes:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "stream": self.stream.state_dict(),
            "rng": rng_states,  # one per rank, in rank order: each rank augments differently
            "config": self.config.to_dict(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def _load_training_state(self, path: Path) -> None:
        state = load_training_state(path / TRAINING_STATE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.stream.load_state_dict(state["stream"])
        ranks = state["rng"]
        if len(ranks) == self.dist.world:
            self._set_rng_state(ranks[self.dist.rank])
        else:
            log.warning(
                "%s holds random states of %d ranks, this run has %d: fresh per-rank seeds",
                path,
                len(ranks),
                self.dist.world,
            )
        log.info("resumed from %s at step %d", path, self.schedule.step_count)

    def save(self) -> Path:
        """Write checkpoints/step_N (crash-safe) and drop the oldest beyond keep_last."""
        step = self.schedule.step_count
        path = self.out / "checkpoints" / f"step_{step:07d}"
        rng_states = self.dist.gather(self._rng_state())  # every rank takes part; rank 0 writes
        if self.dist.main:
            save_checkpoint(
                path,
                self.model,
                self.tokenizer,
                self.model_config,
                extra_files={TRAINING_STATE: self._training_state(rng_states)},
            )
            kept = sorted((self.out / "checkpoints").glob("step_*"))
            for old in kept[: -self.config.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return path

    # -- one step --------------------------------------------------------------------------------
    def _prompts(self, batch: dict[str, Any]) -> list[list[int]]:
        prompts = []
        for text, prompt in zip(batch["texts"], batch["prompts"]):
            if not prompt and self.rng.random() < self.config.prompt_augment:
                prompt = synthetic_prompt(text, self.words, self.rng)
            prompts.append(self.tokenizer.encode(prompt) if prompt else [])
        return prompts

    def _features(self, batch: dict[str, Any], augment: bool) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            feats, feat_lengths = self.model.features(
                batch["audio"].to(self.device), batch["audio_lengths"].to(self.device)
            )
            if augment:
                feats = spec_augment(feats, feat_lengths, self.config.spec_augment)
        return feats, feat_lengths

    def _targets(self, batch: dict[str, Any], train: bool) -> tuple[list[list[int]], list[list[int]]]:
        targets = [self.tokenizer.encode(t) for t in batch["texts"]]
        prompts = (
            self._prompts(batch)
            if train
            else [self.tokenizer.encode(p) if p else [] for p in batch["prompts"]]
        )
        return targets, prompts

    def loss_on(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        use_bf16 = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.ddp_model(
                *self._features(batch, augment=True),
                *self._targets(batch, train=True),
                self.config.ctc_weight,
                self.config.label_smoothing,
            )

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        self.model.train()
        lr = self.schedule.apply()
        out = self.loss_on(batch)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step_count += 1
        stats = {k: float(v.detach()) for k, v in out.items()}
        stats.update(lr=lr, grad_norm=float(grad_norm))
        return stats

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev metrics on the first ``eval_items`` dev utterances: decoder greedy and CTC greedy WER/CER,
        and the decoder's teacher-forced cross-entropy (it shows a decoder learning to use the audio
        long before its free-running transcripts improve)."""
        if not self.dev_items:
            return {}
        self.model.eval()
        rec = Recognizer(Checkpoint(self.model, self.tokenizer, self.model_config, self.out), self.device)
        hyps, ctc_hyps, refs = [], [], []
        ce_total, ce_tokens = 0.0, 0
        for start in range(0, len(self.dev_items), 16):
            items = self.dev_items[start : start + 16]
            batch = collate_audio(
                [
                    {
                        "id": it["id"],
                        "audio": torch.from_numpy(load_audio(it["audio"])),
                        "text": it["text"],
                        "prompt": it.get("prompt") or "",
                    }
                    for it in items
                ]
            )
            losses = self.model.compute_loss(
                *self._features(batch, augment=False),
                *self._targets(batch, False),
                ctc_weight=0.0,
                label_smoothing=0.0,
            )
            n_tokens = sum(len(self.tokenizer.encode(t)) + 1 for t in batch["texts"])
            ce_total += float(losses["ce"]) * n_tokens
            ce_tokens += n_tokens
            feats, lengths = rec.features([load_audio(it["audio"]) for it in items])
            enc = rec.encode(feats, lengths)
            hyps += rec.decode(enc, [it.get("prompt") for it in items], method="greedy")
            ctc_hyps += [self.tokenizer.decode(ids) for ids in ctc_greedy(enc.ctc_logprobs, enc.ctc_lengths)]
            refs += [it["text"] for it in items]
        self.model.train()
        ctc = score(refs, ctc_hyps)
        return {
            **score(refs, hyps)._asdict(),
            "ctc_wer": ctc.wer,
            "ctc_cer": ctc.cer,
            "decoder_ce": ce_total / max(ce_tokens, 1),
        }

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> Path:
        c = self.config
        bar = tqdm(
            total=c.max_steps,
            initial=self.schedule.step_count,
            desc="train",
            unit="step",
            disable=not (c.progress and self.dist.main),
            dynamic_ncols=True,
        )
        batches = iter(self.stream)
        running: dict[str, float] = {}
        last_save = self.schedule.step_count
        while not self.schedule.finished():
            t0 = time.perf_counter()
            stats = self.train_step(next(batches))
            self.schedule.elapsed += time.perf_counter() - t0
            step = self.schedule.step_count
            for k, v in stats.items():
                running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
            bar.update(1)
            if step % c.log_every == 0 and self.dist.main:
                bar.set_postfix({k: f"{running[k]:.3g}" for k in ("loss", "ctc", "ce", "accuracy", "lr")})
                for k, v in stats.items():
                    self.writer.add_scalar(f"train/{k}", v, step)
                self.writer.add_scalar("train/epoch", self.stream.epoch, step)
            if step % c.save_every == 0:
                self.save()
                last_save = step
            if c.eval_every and step % c.eval_every == 0 and self.dist.main:
                metrics = self.evaluate()
                for k, v in metrics.items():
                    self.writer.add_scalar(f"dev/{k}", v, step)
                if metrics:
                    bar.write(f"step {step}: dev " + json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        bar.close()
        if self.schedule.step_count != last_save:
            self.save()
        final = self.out / "final"
        if self.dist.main:
            kept = sorted((self.out / "checkpoints").glob("step_*"))[-c.average_last :]
            model = average_checkpoints(kept) if len(kept) > 1 else load_checkpoint(kept[-1]).model
            save_checkpoint(final, model, self.tokenizer, self.model_config)
            metrics = self.evaluate_model(model)
            (self.out / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            log.info("final (average of %d checkpoints): %s", len(kept), metrics)
        self.dist.barrier()
        if self.writer is not None:
            self.writer.close()
        return final

    def evaluate_model(self, model: SpeechMamba) -> dict[str, float]:
        previous = self.model
        self.model = model
        try:
            return self.evaluate()
        finally:
            self.model = previous


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML training config (see training/configs/)")
    parser.add_argument("--train", help="training manifest (overrides the config)")
    parser.add_argument("--dev", help="dev manifest (overrides the config)")
    parser.add_argument("--out", help="run directory (overrides the config)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in the run"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = list(args.set)
    for key, value in (("train_manifest", args.train), ("dev_manifest", args.dev), ("out_dir", args.out)):
        if value:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    trainer = Trainer(config, resume=args.resume)
    final = trainer.fit()
    if trainer.dist.main:
        print(f"final checkpoint: {final}")
    if trainer.dist.world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
