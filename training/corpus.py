"""Build the synthetic speech corpus: train, dev and three held-out test sets.

    python -m mambaserve.training.corpus --out data/corpus [--n-train 12000] [--n-piper-train 800] ...

Writes ``train.jsonl, dev.jsonl, test_espeak.jsonl, test_piper.jsonl, test_hotwords.jsonl`` and
``audio/<split>/<id>.wav`` (16 kHz mono PCM) under ``--out``, plus ``summary.json``.

* train: espeak voices + some piper (a model trained on espeak alone transcribes piper badly), with
  training voice settings only; `prompt_fraction` of items carry a prompt (see hotwords.py).
* dev: dev sentences and dev rare words, held-out voice settings, same prompt fraction as train.
* test_espeak / test_piper: test sentences (incl. words never in training), held-out settings, no prompt.
* test_hotwords: test sentences with 1–2 test-pool rare words (never in training) and a prompt each.

Held-out rules live in text_corpus.py (sentences), hotwords.py (rare words) and synth.py (voices);
`plan_corpus` re-checks them and refuses to build a corpus that breaks one.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hotwords import hotword_pools, hotword_sentence, make_prompt, plan_texts
from .manifest import write_manifest
from .synth import (
    EspeakVoice,
    PiperSetting,
    piper_synth,
    sample_espeak_voice,
    sample_piper_setting,
    synth_espeak_many,
)
from .text_corpus import sentence_splits

__all__ = ["SPLITS", "Job", "build_corpus", "main", "plan_corpus"]

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test_espeak", "test_piper", "test_hotwords")


@dataclass
class Job:
    """One utterance to synthesise."""

    split: str
    id: str
    text: str
    voice: EspeakVoice | PiperSetting
    prompt: str = ""
    hotwords: list[str] = field(default_factory=list)

    @property
    def engine(self) -> str:
        return "espeak" if isinstance(self.voice, EspeakVoice) else "piper"

    def item(self, audio: Path, duration: float) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "audio": str(audio), "text": self.text, "duration": duration}
        if self.prompt:
            out["prompt"] = self.prompt
        if self.hotwords:
            out["hotwords"] = list(self.hotwords)
        out["voice"] = self.voice.name
        return out


def _nonneg(**counts: int) -> None:
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def plan_corpus(
    *,
    n_train: int = 12_000,
    n_piper_train: int = 800,
    n_dev: int = 300,
    n_test: int = 300,
    n_piper_test: int = 150,
    n_hotword_test: int = 200,
    prompt_fraction: float = 0.3,
    dev_piper_fraction: float = 0.2,
    hotword_piper_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, list[Job]]:
    """Every utterance's text, prompt and voice setting, per split; deterministic for `seed`."""
    _nonneg(n_train=n_train, n_piper_train=n_piper_train, n_dev=n_dev, n_test=n_test,
            n_piper_test=n_piper_test, n_hotword_test=n_hotword_test)  # fmt: skip
    sentences = sentence_splits(seed)
    rare = hotword_pools(seed)
    plans: dict[str, list[Job]] = {s: [] for s in SPLITS}

    def add(split: str, texts: list, engines: list[str]) -> None:
        vrng = random.Random(f"{seed}:{split}:voice")
        heldout = split != "train"
        for i, (plan, engine) in enumerate(zip(texts, engines)):
            voice = (
                sample_espeak_voice(vrng, heldout)
                if engine == "espeak"
                else sample_piper_setting(vrng, heldout)
            )
            plans[split].append(
                Job(split, f"{split}-{i:06d}", plan.text, voice, plan.prompt, list(plan.hotwords))
            )

    def engines(n: int, n_piper: int, split: str) -> list[str]:
        out = ["espeak"] * (n - n_piper) + ["piper"] * n_piper
        random.Random(f"{seed}:{split}:engine").shuffle(out)
        return out

    n = n_train + n_piper_train
    add(
        "train",
        plan_texts(n, random.Random(f"{seed}:train:text"), sentences.train, rare.train, prompt_fraction),
        engines(n, n_piper_train, "train"),
    )
    add(
        "dev",
        plan_texts(n_dev, random.Random(f"{seed}:dev:text"), sentences.dev, rare.dev, prompt_fraction),
        engines(n_dev, round(n_dev * dev_piper_fraction), "dev"),
    )
    add(
        "test_espeak",
        plan_texts(n_test, random.Random(f"{seed}:test_espeak:text"), sentences.test, rare.test, 0.0),
        ["espeak"] * n_test,
    )
    add(
        "test_piper",
        plan_texts(n_piper_test, random.Random(f"{seed}:test_piper:text"), sentences.test, rare.test, 0.0),
        ["piper"] * n_piper_test,
    )
    hrng = random.Random(f"{seed}:test_hotwords:text")
    hot = []
    for _ in range(n_hotword_test):
        text, words = hotword_sentence(hrng, rare.test, sentences.test)
        hot.append(_Plan(text, make_prompt(hrng, words, rare.test), words))
    add(
        "test_hotwords",
        hot,
        engines(n_hotword_test, round(n_hotword_test * hotword_piper_fraction), "test_hotwords"),
    )
    _check_heldout(plans, sentences.heldout_words, rare.test)
    return plans


@dataclass(frozen=True)
class _Plan:
    text: str
    prompt: str
    hotwords: list[str]


def _check_heldout(
    plans: dict[str, list[Job]], heldout_words: frozenset[str], test_rare: Sequence[str]
) -> None:
    """Guard the held-out rules against a future edit: nothing test-only may reach train."""
    train = plans["train"]
    train_words = {w for j in train for w in j.text.split()} | {
        w for j in train for w in j.prompt.replace(",", " ").split()
    }
    leaked_words = train_words & (set(heldout_words) | set(test_rare))
    if leaked_words:
        raise RuntimeError(f"plan_corpus: held-out words reached train: {sorted(leaked_words)[:10]}")
    train_voices = {j.voice.name for j in train}
    for split in SPLITS[1:]:
        leaked = [j.voice.name for j in plans[split] if j.voice.name in train_voices or not j.voice.heldout]
        if leaked:
            raise RuntimeError(f"plan_corpus: {split} uses training voice settings: {leaked[:5]}")
    train_texts = {j.text for j in train}
    for split in ("test_espeak", "test_piper", "test_hotwords"):
        shared = [j.text for j in plans[split] if j.text in train_texts]
        if shared:
            raise RuntimeError(f"plan_corpus: {split} shares sentences with train: {shared[:3]}")


def build_corpus(
    out_dir: str | Path,
    *,
    n_train: int = 12_000,
    n_piper_train: int = 800,
    n_dev: int = 300,
    n_test: int = 300,
    n_piper_test: int = 150,
    n_hotword_test: int = 200,
    prompt_fraction: float = 0.3,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Synthesise the corpus into `out_dir`; returns the summary (also written to summary.json).

    Summary keys: "splits" ({split: {"items", "hours", "espeak", "piper", "prompted", "manifest"}}),
    "total_items", "total_hours", "failed" ({split: n}), "speed" (utterances/s and real-time factor
    per engine, measured on this run), "sentences" (sentence pool sizes), "seed".
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(n_train=n_train, n_piper_train=n_piper_train, n_dev=n_dev, n_test=n_test,
                        n_piper_test=n_piper_test, n_hotword_test=n_hotword_test,
                        prompt_fraction=prompt_fraction, seed=seed)  # fmt: skip
    jobs = [j for split in SPLITS for j in plans[split]]
    audio_of = {j.id: out_dir / "audio" / j.split / f"{j.id}.wav" for j in jobs}
    durations: dict[str, float] = {}
    failures: Counter[str] = Counter()
    speed: dict[str, dict[str, float]] = {}

    espeak_jobs = [j for j in jobs if j.engine == "espeak"]
    if espeak_jobs:
        bar = tqdm(total=len(espeak_jobs), desc="espeak-ng", unit="utt", disable=not progress)

        def done(i: int, duration: float | None, err: BaseException | None) -> None:
            job = espeak_jobs[i]
            if err is not None:
                failures[job.split] += 1
                log.warning("espeak-ng failed on %s (%s): %s", job.id, job.voice.name, err)
            else:
                durations[job.id] = duration
            bar.update()

        t0 = time.perf_counter()
        synth_espeak_many(
            [(j.text, j.voice, audio_of[j.id]) for j in espeak_jobs], workers=workers, on_done=done
        )
        bar.close()
        speed["espeak"] = _speed(espeak_jobs, durations, time.perf_counter() - t0)

    piper_jobs = [j for j in jobs if j.engine == "piper"]
    if piper_jobs:
        synth = piper_synth()  # loaded before timing starts: a one-off second
        t0 = time.perf_counter()
        for job in tqdm(piper_jobs, desc="piper", unit="utt", disable=not progress):
            try:
                durations[job.id] = synth.synth(job.text, job.voice, audio_of[job.id])
            except Exception as e:  # one bad utterance must not end a long run
                failures[job.split] += 1
                log.warning("piper failed on %s (%s): %s", job.id, job.voice.name, e)
        speed["piper"] = _speed(piper_jobs, durations, time.perf_counter() - t0)

    summary: dict[str, Any] = {"out_dir": str(out_dir), "seed": seed, "splits": {}}
    for split in SPLITS:
        items = [j.item(audio_of[j.id], durations[j.id]) for j in plans[split] if j.id in durations]
        path = out_dir / f"{split}.jsonl"
        write_manifest(path, items)
        summary["splits"][split] = {
            "items": len(items),
            "hours": round(sum(it["duration"] for it in items) / 3600, 4),
            "espeak": sum(it["voice"].startswith("espeak:") for it in items),
            "piper": sum(it["voice"].startswith("piper:") for it in items),
            "prompted": sum(bool(it.get("prompt")) for it in items),
            "manifest": path.name,
        }
    summary["total_items"] = sum(s["items"] for s in summary["splits"].values())
    summary["total_hours"] = round(sum(s["hours"] for s in summary["splits"].values()), 4)
    summary["failed"] = dict(failures)
    summary["speed"] = speed
    summary["sentences"] = dict(sentence_splits(seed).stats)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        log.warning("synthesis failed for %d utterances: %s", sum(failures.values()), dict(failures))
    return summary


def _speed(jobs: Sequence[Job], durations: dict[str, float], wall: float) -> dict[str, float]:
    done = [durations[j.id] for j in jobs if j.id in durations]
    return {
        "utterances": len(done),
        "wall_s": round(wall, 2),
        "utt_per_s": round(len(done) / wall, 2) if wall > 0 else float("nan"),
        "audio_s_per_wall_s": round(sum(done) / wall, 1) if wall > 0 else float("nan"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Synthesise the speech corpus (espeak-ng + piper).")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/corpus")
    parser.add_argument("--n-train", type=int, default=12_000, help="espeak training utterances")
    parser.add_argument("--n-piper-train", type=int, default=800, help="piper training utterances")
    parser.add_argument("--n-dev", type=int, default=300, help="dev utterances (20%% piper)")
    parser.add_argument("--n-test", type=int, default=300, help="test_espeak utterances")
    parser.add_argument("--n-piper-test", type=int, default=150, help="test_piper utterances")
    parser.add_argument(
        "--n-hotword-test", type=int, default=200, help="test_hotwords utterances (20%% piper)"
    )
    parser.add_argument(
        "--prompt-fraction", type=float, default=0.3, help="share of train/dev items with a prompt"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = build_corpus(
        args.out, n_train=args.n_train, n_piper_train=args.n_piper_train, n_dev=args.n_dev, n_test=args.n_test,
        n_piper_test=args.n_piper_test, n_hotword_test=args.n_hotword_test, prompt_fraction=args.prompt_fraction,
        seed=args.seed, workers=args.workers,
    )  # fmt: skip
    for split, s in summary["splits"].items():
        print(f"{split:14s} {s['items']:6d} items  {s['hours'] * 60:7.1f} min  espeak {s['espeak']:5d}  "
              f"piper {s['piper']:4d}  prompted {s['prompted']:5d}")  # fmt: skip
    for engine, s in summary["speed"].items():
        print(
            f"{engine}: {s['utt_per_s']} utterances/s, {s['audio_s_per_wall_s']}x real time ({s['utterances']} in {s['wall_s']} s)"
        )
    print(
        f"total {summary['total_items']} items, {summary['total_hours']:.2f} h; failed {summary['failed'] or 0}"
    )
    print(json.dumps({k: summary[k] for k in ("total_items", "total_hours", "failed")}))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
