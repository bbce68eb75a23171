"""Build the synthetic speech corpus: train, dev, held-out test sets and a held-out-voice set.

    python -m mambaserve.training.corpus --out data/corpus [--n-train 30000] [--workers 2] ...

Writes ``<split>.jsonl`` for every split in `SPLITS` and ``audio/<split>/<id>.wav`` (16 kHz mono
PCM) under ``--out``, plus ``summary.json``. Generation is resumable: an utterance whose wav exists
is not synthesised again (wavs are written to a temporary name and renamed), so an interrupted
run continues where it stopped when the same command is run again.

* train: four voice families (voices.py) mixed by `TRAIN_MIX` (by items; MBROLA + piper, the
  diphone and neural voices, are more than half of the audio: the summary reports the share by
  duration), training voice settings only; `effects_fraction` of the items get a random speaker /
  channel augmentation chain (effects.py), recorded in the item's "effects"; `prompt_fraction`
  carry a prompt (hotwords.py).
* dev: dev sentences and dev rare words, training voices at held-out settings, no effects.
* test_espeak / test_piper / test_diphone (MBROLA training voices + Pico en-US): test sentences
  (incl. words never in training), held-out settings, no prompt, no effects.
* test_hotwords: test sentences with 1–2 test-pool invented names; the prompt lists them plus 1–2
  distractor names that are not said (items record "hotwords" and "distractors").
* heldout_voices: test sentences spoken by voices that no training item uses (MBROLA mb-us3, Pico
  en-GB): the held-out-voice check for model selection.

Reserved for evaluation (reserved.py, evalsets.py) and refused here: the CMU voices and engines
(flite, festival) and Debian's package descriptions as text. Held-out rules live in text_corpus.py
(sentences), hotwords.py (rare words), synth.py / voices.py (voices); `plan_corpus` re-checks
them all and refuses to build a corpus that breaks one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mambaserve.contract.spec import SAMPLE_RATE

from .effects import apply_chain, chain_str, parse_chain, sample_chain
from .hotwords import hotword_pools, hotword_sentence, make_prompt, parse_prompt, plan_texts
from .manifest import write_manifest
from .reserved import check_training_voice, reserved_sentences
from .synth import EspeakVoice, sample_espeak_voice
from .text_corpus import sentence_splits, stable_fraction
from .voices import FAMILIES, NEURAL_OR_DIPHONE, Voice, family, is_unseen, render, sample_voice

__all__ = ["SPLITS", "TEST_SPLITS", "TRAIN_MIX", "Job", "build_corpus", "main", "plan_corpus"]

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test_espeak", "test_piper", "test_hotwords", "test_diphone", "heldout_voices")
TEST_SPLITS = SPLITS[2:]
TRAIN_MIX = {"espeak": 0.27, "mbrola": 0.41, "pico": 0.12, "piper": 0.20}
DEV_MIX = {"espeak": 0.35, "mbrola": 0.30, "pico": 0.10, "piper": 0.25}
HOTWORD_MIX = DEV_MIX
DIPHONE_MIX = {"mbrola": 0.75, "pico": 0.25}
HELDOUT_VOICE_MIX = {"mbrola": 0.5, "pico": 0.5}
# Output peak levels: training draws from a range (loudness is one more thing to generalise over).
TRAIN_PEAK = (0.15, 0.95)
TEST_PEAKS = (0.5, 0.6, 0.7, 0.8, 0.9)
BABBLE_CLIPS = 48


@dataclass
class Job:
    """One utterance to synthesise."""

    split: str
    id: str
    text: str
    voice: Voice
    prompt: str = ""
    hotwords: list[str] = field(default_factory=list)
    effects: str = ""
    seed: int = 0
    peak: float = 0.8

    @property
    def engine(self) -> str:
        """The voice family: espeak, mbrola, pico or piper."""
        return family(self.voice)

    @property
    def distractors(self) -> list[str]:
        return [w for w in parse_prompt(self.prompt) if w not in set(self.hotwords)]

    def item(self, audio: Path, duration: float) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "audio": str(audio), "text": self.text, "duration": duration}
        if self.prompt:
            out["prompt"] = self.prompt
            out["distractors"] = self.distractors
        if self.hotwords:
            out["hotwords"] = list(self.hotwords)
        out["voice"] = self.voice.name
        out["family"] = self.engine
        if self.effects:
            out["effects"] = self.effects
        return out


def _nonneg(**counts: int) -> None:
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def family_counts(n: int, mix: dict[str, float], fixed: dict[str, int] | None = None) -> dict[str, int]:
    """Split `n` items over families by `mix` (largest remainder); `fixed` families get exact counts."""
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    if sum(fixed.values()) > n:
        raise ValueError(f"family_counts: fixed counts {fixed} exceed n={n}")
    rest = {k: w for k, w in mix.items() if k not in fixed and w > 0}
    left = n - sum(fixed.values())
    total = sum(rest.values())
    if left and not total:
        raise ValueError(f"family_counts: nothing to fill {left} items with (mix {mix}, fixed {fixed})")
    raw = {k: left * w / total for k, w in rest.items()} if total else {}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: left - sum(counts.values())]:
        counts[k] += 1
    return {**{k: 0 for k in mix}, **counts, **fixed}


def _families(
    n: int, mix: dict[str, float], rng: random.Random, fixed: dict[str, int] | None = None
) -> list[str]:
    counts = family_counts(n, mix, fixed)
    out = [f for f in FAMILIES if f in counts for _ in range(counts[f])]
    rng.shuffle(out)
    return out


def demo_sentences() -> tuple[str, ...]:
    """The sentences of the shipped demo clips (samples.py): never in training."""
    from . import samples

    return tuple(samples._SENTENCES)


def plan_corpus(
    *,
    n_train: int = 30_000,
    n_piper_train: int | None = None,
    train_mix: dict[str, float] | None = None,
    n_dev: int = 300,
    n_test: int = 300,
    n_piper_test: int = 200,
    n_hotword_test: int = 200,
    n_test_diphone: int = 200,
    n_heldout_voices: int = 300,
    prompt_fraction: float = 0.3,
    effects_fraction: float = 0.8,
    seed: int = 0,
) -> dict[str, list[Job]]:
    """Every utterance's text, prompt, voice, effects chain and level, per split; deterministic for `seed`.

    `n_train` is the number of training items, spread over families by `train_mix` (default
    `TRAIN_MIX`); `n_piper_train`, when given, fixes the piper count and the mix shares the rest.
    """
    _nonneg(
        n_train=n_train,
        n_dev=n_dev,
        n_test=n_test,
        n_piper_test=n_piper_test,
        n_hotword_test=n_hotword_test,
        n_test_diphone=n_test_diphone,
        n_heldout_voices=n_heldout_voices,
    )
    if not 0 <= effects_fraction <= 1:
        raise ValueError(f"effects_fraction must be in [0, 1], got {effects_fraction}")
    sentences = sentence_splits(seed)
    demo = set(demo_sentences())
    train_sentences = [s for s in sentences.train if s not in demo]
    rare = hotword_pools(seed)
    plans: dict[str, list[Job]] = {s: [] for s in SPLITS}

    def add(split: str, texts: list, fams: list[str], unseen: bool = False) -> None:
        vrng = random.Random(f"{seed}:{split}:voice")
        erng = random.Random(f"{seed}:{split}:effects")
        train = split == "train"
        for i, (plan, fam) in enumerate(zip(texts, fams)):
            voice = sample_voice(vrng, fam, heldout=not train, unseen=unseen)
            effects = chain_str(sample_chain(erng)) if train and erng.random() < effects_fraction else ""
            peak = (
                round(erng.uniform(*TRAIN_PEAK), 3)
                if train
                else getattr(voice, "peak", None) or erng.choice(TEST_PEAKS)
            )
            job_id = f"{split}-{i:06d}"
            plans[split].append(
                Job(
                    split,
                    job_id,
                    plan.text,
                    voice,
                    plan.prompt,
                    list(plan.hotwords),
                    effects,
                    seed=int(stable_fraction("effects-seed", seed, job_id) * 2**32),
                    peak=peak,
                )
            )

    def texts(split: str, n: int, pool: Sequence[str], rare_pool: Sequence[str], pf: float) -> list:
        return plan_texts(n, random.Random(f"{seed}:{split}:text"), pool, rare_pool, pf)

    fixed = {"piper": n_piper_train} if n_piper_train is not None else None
    add(
        "train",
        texts("train", n_train, train_sentences, rare.train, prompt_fraction),
        _families(n_train, train_mix or TRAIN_MIX, random.Random(f"{seed}:train:engine"), fixed),
    )
    add(
        "dev",
        texts("dev", n_dev, sentences.dev, rare.dev, prompt_fraction),
        _families(n_dev, DEV_MIX, random.Random(f"{seed}:dev:engine")),
    )
    add("test_espeak", texts("test_espeak", n_test, sentences.test, rare.test, 0.0), ["espeak"] * n_test)
    add(
        "test_piper",
        texts("test_piper", n_piper_test, sentences.test, rare.test, 0.0),
        ["piper"] * n_piper_test,
    )
    hrng = random.Random(f"{seed}:test_hotwords:text")
    hot = []
    for _ in range(n_hotword_test):
        text, words = hotword_sentence(hrng, rare.test, sentences.test)
        hot.append(_Plan(text, make_prompt(hrng, words, rare.test, n_distractors=(1, 2)), words))
    add(
        "test_hotwords",
        hot,
        _families(n_hotword_test, HOTWORD_MIX, random.Random(f"{seed}:test_hotwords:engine")),
    )
    add(
        "test_diphone",
        texts("test_diphone", n_test_diphone, sentences.test, rare.test, 0.0),
        _families(n_test_diphone, DIPHONE_MIX, random.Random(f"{seed}:test_diphone:engine")),
    )
    add(
        "heldout_voices",
        texts("heldout_voices", n_heldout_voices, sentences.test, rare.test, 0.0),
        _families(n_heldout_voices, HELDOUT_VOICE_MIX, random.Random(f"{seed}:heldout_voices:engine")),
        unseen=True,
    )
    _check_heldout(plans, sentences.heldout_words, rare.test, demo)
    return plans


@dataclass(frozen=True)
class _Plan:
    text: str
    prompt: str
    hotwords: list[str]


def _check_heldout(
    plans: dict[str, list[Job]], heldout_words: frozenset[str], test_rare: Sequence[str], demo: set[str]
) -> None:
    """Guard the held-out and reserved rules against a future edit: nothing test-only or reserved
    may reach train."""
    for split in SPLITS:
        for j in plans[split]:
            check_training_voice(j.voice.name)  # reserved CMU voices: never, in any split
    train = plans["train"]
    train_words = {w for j in train for w in j.text.split()} | {
        w for j in train for w in parse_prompt(j.prompt)
    }
    leaked_words = train_words & (set(heldout_words) | set(test_rare))
    if leaked_words:
        raise RuntimeError(f"plan_corpus: held-out words reached train: {sorted(leaked_words)[:10]}")
    unseen_in_train = [j.voice.name for j in train if is_unseen(j.voice)]
    if unseen_in_train:
        raise RuntimeError(f"plan_corpus: held-out voices reached train: {unseen_in_train[:5]}")
    train_voices = {j.voice.name for j in train}
    for split in SPLITS[1:]:
        leaked = [j.voice.name for j in plans[split] if j.voice.name in train_voices or not j.voice.heldout]
        if leaked:
            raise RuntimeError(f"plan_corpus: {split} uses training voice settings: {leaked[:5]}")
    seen_voice = [j.voice.name for j in plans["heldout_voices"] if not is_unseen(j.voice)]
    if seen_voice:
        raise RuntimeError(f"plan_corpus: heldout_voices uses training voices: {seen_voice[:5]}")
    train_texts = {j.text for j in train}
    for split in TEST_SPLITS:
        shared = [j.text for j in plans[split] if j.text in train_texts]
        if shared:
            raise RuntimeError(f"plan_corpus: {split} shares sentences with train: {shared[:3]}")
    bad = train_texts & (reserved_sentences() | demo)
    if bad:
        raise RuntimeError(f"plan_corpus: reserved or demo sentences reached train: {sorted(bad)[:3]}")


# ---- synthesis ------------------------------------------------------------------------------------
_BABBLE: list = []


def babble_specs(seed: int, n: int = BABBLE_CLIPS) -> list[tuple[str, EspeakVoice]]:
    """The other talkers of the babble effect: training sentences in training espeak voices."""
    rng = random.Random(f"{seed}:babble")
    pool = sentence_splits(seed).train
    return [(rng.choice(pool), sample_espeak_voice(rng, heldout=False)) for _ in range(n)]


def _init_worker(specs: list[tuple[str, EspeakVoice]]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _BABBLE.clear()
    _BABBLE.extend(render(voice, text) for text, voice in specs)


def _synth_job(job: Job, path: Path) -> tuple[str, float | None, str | None]:
    """Synthesise one item into `path` (skipped when it exists); (id, duration, error)."""
    import numpy as np
    import soundfile as sf

    try:
        if path.exists():
            info = sf.info(str(path))
            return job.id, info.frames / info.samplerate, None
        audio = render(job.voice, job.text)
        if job.effects:
            audio = apply_chain(audio, parse_chain(job.effects), job.seed, _BABBLE)
        peak = float(np.abs(audio).max())
        if not np.isfinite(peak) or peak < 1e-6:
            raise RuntimeError("silent or non-finite audio")
        pcm = np.clip(np.round(audio * (job.peak / peak) * 32767.0), -32768, 32767).astype(np.int16)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        sf.write(str(tmp), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        tmp.replace(path)
        return job.id, len(pcm) / SAMPLE_RATE, None
    except Exception as e:  # one bad utterance must not end a long run
        return job.id, None, f"{type(e).__name__}: {e}"


def _synth_star(args: tuple[Job, Path]) -> tuple[str, float | None, str | None]:
    return _synth_job(*args)


def build_corpus(
    out_dir: str | Path,
    *,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    **plan_kwargs: Any,
) -> dict[str, Any]:
    """Synthesise the corpus into `out_dir` (resumable); returns the summary (also summary.json).

    `plan_kwargs` go to `plan_corpus` (n_train, n_piper_train, train_mix, n_dev, n_test,
    n_piper_test, n_hotword_test, n_test_diphone, n_heldout_voices, prompt_fraction, effects_fraction).
    Summary keys: "splits" ({split: {"items", "hours", "families": {family: {"items", "hours"}},
    "prompted", "effects", "manifest"}}), "train_neural_diphone_share" (by duration),
    "effects" (count per effect kind in train), "total_items", "total_hours", "failed" ({split: n}),
    "wall_s", "synthesised" (items made by this run, the rest existed), "sentences", "seed".
    """
    import multiprocessing as mp

    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(seed=seed, **plan_kwargs)
    # Evaluation splits first: a pilot or an interrupted run has its test sets complete early.
    order = [*SPLITS[1:], "train"]
    jobs = [j for split in order for j in plans[split]]
    audio_of = {j.id: out_dir / "audio" / j.split / f"{j.id}.wav" for j in jobs}
    existing = sum(audio_of[j.id].exists() for j in jobs)
    durations: dict[str, float] = {}
    failures: Counter[str] = Counter()
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="synthesis", unit="utt", disable=not progress, mininterval=10)
    by_id = {j.id: j for j in jobs}
    specs = babble_specs(seed) if any(j.effects for j in jobs) else []
    work = [(j, audio_of[j.id]) for j in jobs]
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, workers), initializer=_init_worker, initargs=(specs,)) as pool:
        for job_id, duration, err in pool.imap_unordered(_synth_star, work, chunksize=4):
            if err is not None:
                job = by_id[job_id]
                failures[job.split] += 1
                log.warning("synthesis failed on %s (%s): %s", job_id, job.voice.name, err)
            else:
                durations[job_id] = duration
            bar.update()
    bar.close()
    wall = time.perf_counter() - t0

    summary: dict[str, Any] = {"out_dir": str(out_dir), "seed": seed, "splits": {}}
    effect_counts: Counter[str] = Counter()
    for split in SPLITS:
        items = [j.item(audio_of[j.id], durations[j.id]) for j in plans[split] if j.id in durations]
        path = out_dir / f"{split}.jsonl"
        write_manifest(path, items)
        fams: dict[str, dict[str, float]] = {}
        for it in items:
            f = fams.setdefault(it["family"], {"items": 0, "hours": 0.0})
            f["items"] += 1
            f["hours"] += it["duration"] / 3600
        summary["splits"][split] = {
            "items": len(items),
            "hours": round(sum(it["duration"] for it in items) / 3600, 4),
            "families": {
                k: {"items": v["items"], "hours": round(v["hours"], 4)} for k, v in sorted(fams.items())
            },
            "prompted": sum(bool(it.get("prompt")) for it in items),
            "effects": sum(bool(it.get("effects")) for it in items),
            "manifest": path.name,
        }
        if split == "train":
            for it in items:
                effect_counts.update(e.kind for e in parse_chain(it.get("effects", "")))
    train = summary["splits"]["train"]
    nd = sum(v["hours"] for k, v in train["families"].items() if k in NEURAL_OR_DIPHONE)
    summary["train_neural_diphone_share"] = round(nd / train["hours"], 4) if train["hours"] else None
    summary["effects"] = dict(sorted(effect_counts.items()))
    summary["total_items"] = sum(s["items"] for s in summary["splits"].values())
    summary["total_hours"] = round(sum(s["hours"] for s in summary["splits"].values()), 4)
    summary["failed"] = dict(failures)
    summary["wall_s"] = round(wall, 1)
    summary["synthesised"] = len(durations) - existing
    summary["sentences"] = dict(sentence_splits(seed).stats)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        log.warning("synthesis failed for %d utterances: %s", sum(failures.values()), dict(failures))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Synthesise the speech corpus (espeak-ng, MBROLA, Pico, piper)."
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/corpus")
    parser.add_argument("--n-train", type=int, default=30_000, help="training utterances (all families)")
    parser.add_argument("--n-piper-train", type=int, default=None, help="fix the piper training count")
    parser.add_argument("--n-dev", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300, help="test_espeak utterances")
    parser.add_argument("--n-piper-test", type=int, default=200, help="test_piper utterances")
    parser.add_argument("--n-hotword-test", type=int, default=200, help="test_hotwords utterances")
    parser.add_argument("--n-test-diphone", type=int, default=200, help="test_diphone utterances")
    parser.add_argument("--n-heldout-voices", type=int, default=300, help="heldout_voices utterances")
    parser.add_argument(
        "--prompt-fraction", type=float, default=0.3, help="share of train/dev items with a prompt"
    )
    parser.add_argument(
        "--effects-fraction", type=float, default=0.8, help="share of train items with effects"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel synthesis processes")
    parser.add_argument(
        "--no-setup", action="store_true", help="do not check/install the Debian voices first"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.no_setup:
        from .setup_voices import ensure_voices

        ensure_voices()
    summary = build_corpus(
        args.out,
        n_train=args.n_train,
        n_piper_train=args.n_piper_train,
        n_dev=args.n_dev,
        n_test=args.n_test,
        n_piper_test=args.n_piper_test,
        n_hotword_test=args.n_hotword_test,
        n_test_diphone=args.n_test_diphone,
        n_heldout_voices=args.n_heldout_voices,
        prompt_fraction=args.prompt_fraction,
        effects_fraction=args.effects_fraction,
        seed=args.seed,
        workers=args.workers,
    )
    for split, s in summary["splits"].items():
        fams = "  ".join(f"{k} {v['items']} ({v['hours']:.2f} h)" for k, v in s["families"].items())
        print(
            f"{split:14s} {s['items']:6d} items {s['hours']:7.2f} h  prompted {s['prompted']:5d}  "
            f"effects {s['effects']:5d}  {fams}"
        )
    print(f"train neural+diphone share (by duration): {summary['train_neural_diphone_share']}")
    print(
        f"total {summary['total_items']} items, {summary['total_hours']:.2f} h in {summary['wall_s']} s "
        f"({summary['synthesised']} synthesised now); failed {summary['failed'] or 0}"
    )
    print(json.dumps({k: summary[k] for k in ("total_items", "total_hours", "failed")}))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
