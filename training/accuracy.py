"""Accuracy side by side: every test set × {mambaserve, pocketsphinx, Whisper tiny.en} → benchmarks/ACCURACY.md.

    python -m mambaserve.training.accuracy --checkpoint checkpoints/default [--sets test_espeak eval_human ...]
        [--limit N] [--systems mambaserve pocketsphinx whisper-tiny.en] [--out benchmarks/ACCURACY.md]

(`make evaluate`.) Each set is a manifest: a name from `SETS` (looked up under ``--corpus`` or
``--eval-dir``) or a path to a ``.jsonl``. A set whose manifest is not there is reported as missing,
not skipped. On every clip of a set each system runs on the CPU with one thread:

* **mambaserve**: the checkpoint's default decoding, ``Recognizer.transcribe(clips, prompts,
  method=None)``, 16 clips per call (``--batch-size``), with each item's PROMPT; on a set whose items
  carry prompts it also runs without them, and the PROMPT metrics (`evaluate.prompt_metrics`: name
  recall with and without the prompt, distractor insertions) are reported.
* **pocketsphinx** and **Whisper tiny.en** (`peers.py`): one clip at a time, no prompt (their name
  recall without a prompt is reported too). On a prompted set Whisper also runs with the prompt as
  its ``initial_prompt``: an extra row, labelled so, not the peer's score.

WER and CER are corpus rates of `score()` (normalised text); RTFx is audio seconds over the wall
seconds spent transcribing (model loading, a warm-up call and reading audio are not counted). The
demo's five sample clips (``clients/samples``) are listed clip by clip: the reference, mambaserve's
transcript (with the clip's prompt) and each system's word errors.

Writes ``--out`` (Markdown: a table per set, the command that made it, date, machine, load average
and the busiest other processes) and ``--json`` (the same results, default ``accuracy.json`` beside
``--out``); ``--hyps FILE`` also writes every hypothesis as JSONL. The eval_* sets are reserved for
evaluation: reported here, never used to tune anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from mambaserve.contract.spec import SAMPLE_RATE
from mambaserve.model.scoring import score

from .dataset import load_audio
from .evaluate import item_distractors, prompt_metrics, word_errors
from .manifest import load_manifest
from .peers import PEERS, Peer, PeerUnavailable, WhisperTinyEn, make_peer, run_peer, warm_up
from .samples import DEFAULT_OUT as SAMPLES_DIR

__all__ = ["GOALS", "SETS", "SYSTEMS", "MambaServe", "main", "render_markdown", "run_accuracy"]

MAMBASERVE = "mambaserve"
SYSTEMS = (MAMBASERVE, *PEERS)
WHISPER_PROMPT = "whisper-tiny.en+initial_prompt"
SHORT_NAMES = {MAMBASERVE: "mambaserve", "pocketsphinx": "pocketsphinx", "whisper-tiny.en": "Whisper tiny.en"}


@dataclass(frozen=True)
class SetInfo:
    name: str
    where: str  # "corpus" or "eval": which folder option it is found under
    description: str
    reserved: bool = False


SETS = {
    s.name: s
    for s in (
        SetInfo("test_espeak", "corpus", "espeak-ng voices, unseen sentences, held-out settings"),
        SetInfo("test_piper", "corpus", "the piper joe voice (a training voice), held-out settings"),
        SetInfo("test_diphone", "corpus", "training MBROLA voices + Pico en-US, held-out settings"),
        SetInfo("heldout_voices", "corpus", "voices never trained on (MBROLA mb-us3, Pico en-GB)"),
        SetInfo("test_hotwords", "corpus", "sentences with invented names; PROMPT = the names + distractors"),
        SetInfo("eval_cmu", "eval", "CMU voices (flite, festival) on Debian package descriptions", True),
        SetInfo("eval_human", "eval", "real human recordings (pytest-audioeval, alsa-utils)", True),
    )
}
# The goals (benchmarks, not tests): (WER, CER) upper bounds; None = reported only.
GOALS: dict[str, tuple[float | None, float | None]] = {
    "test_espeak": (0.08, 0.03),
    "test_piper": (0.10, 0.04),
    "heldout_voices": (0.15, 0.06),
    "eval_cmu": (0.15, 0.06),
    "eval_human": (None, 0.30),
}
PROMPT_GOALS = {"name_recall": 0.85, "name_recall_without_prompt": 0.05, "distractor_insertion_rate": 0.05}
DEMO_GOAL_WORD_ERRORS = 1


class MambaServe:
    """The checkpoint's default decoding in process, batched, one thread."""

    name = MAMBASERVE

    def __init__(self, checkpoint: str | Path, batch_size: int = 16, decode_step: str | None = None) -> None:
        from mambaserve.model.recognizer import Recognizer

        self.checkpoint = str(checkpoint)
        self.recognizer = Recognizer(checkpoint, decode_step=decode_step)
        self.batch_size = batch_size
        self.method = self.recognizer.config.decoding.method
        self.label = f"mambaserve (`{self.method}`)"

    def run(
        self, audio: Sequence[np.ndarray], prompts: Sequence[str | None] | None = None
    ) -> tuple[list[str], float]:
        """(hypotheses in input order, wall seconds inside ``transcribe``). Batches are cut from the
        clips sorted by length (less padding); the results go back to the input order."""
        prompts = list(prompts) if prompts is not None else [None] * len(audio)
        order = sorted(range(len(audio)), key=lambda i: len(audio[i]))
        hyps: list[str] = [""] * len(audio)
        wall = 0.0
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            t0 = time.perf_counter()
            out = self.recognizer.transcribe([audio[i] for i in idx], [prompts[i] for i in idx], method=None)
            wall += time.perf_counter() - t0
            for i, h in zip(idx, out):
                hyps[i] = h
        return hyps, wall

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "method": self.method, "checkpoint": self.checkpoint}


# ---- the machine ----------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _proc_times() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(d.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def busy_processes(seconds: float = 1.0, top: int = 4) -> list[dict[str, Any]]:
    """Other processes' CPU use over the next `seconds` (command names only), busiest first."""
    before = _proc_times()
    time.sleep(seconds)
    after = _proc_times()
    me = os.getpid()
    rows = [
        {"process": name, "cpu_percent": round(100 * (t - before[pid][1]) / seconds)}
        for pid, (name, t) in after.items()
        if pid != me and pid in before and t - before[pid][1] > 0.05 * seconds
    ]
    return sorted(rows, key=lambda r: -r["cpu_percent"])[:top]


def machine_info() -> dict[str, Any]:
    versions = {}
    for dist in ("torch", "pocketsphinx", "faster-whisper", "ctranslate2", "jiwer"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---- the run --------------------------------------------------------------------------------------
def resolve_set(spec: str, corpus: Path, eval_dir: Path) -> tuple[str, Path, SetInfo | None]:
    """(name, manifest path, known set or None) of a ``--sets`` entry: a name or a .jsonl path."""
    if spec in SETS:
        info = SETS[spec]
        return spec, (corpus if info.where == "corpus" else eval_dir) / f"{spec}.jsonl", info
    path = Path(spec)
    return path.stem, path, SETS.get(path.stem)


def _row(
    system: str, label: str, refs: list[str], hyps: list[str], wall: float, seconds: float, **extra: Any
) -> dict[str, Any]:
    return {
        "system": system,
        "label": label,
        "n": len(refs),
        **score(refs, hyps)._asdict(),
        "rtfx": seconds / wall if wall else 0.0,
        "wall_seconds": round(wall, 3),
        **extra,
    }


def evaluate_set(
    name: str,
    path: Path,
    info: SetInfo | None,
    systems: dict[str, Any],
    limit: int | None,
    whisper_prompt: bool,
    hyps_out: list[dict[str, Any]] | None,
    progress: bool = True,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": name,
        "path": str(path),
        "description": info.description if info else "",
        "reserved": bool(info and info.reserved),
        "goal": GOALS.get(name),
    }
    if not path.is_file():
        return {**record, "missing": True, "rows": []}
    items, report = load_manifest(path)
    items = items[:limit] if limit else items
    record.update(missing=False, skipped=report.n_skipped, limited=bool(limit))
    if not items:
        return {**record, "n": 0, "rows": [], "error": f"no usable items ({report.summary()})"}
    audio = [load_audio(it["audio"]) for it in items]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    refs = [it["text"] for it in items]
    prompts = [it.get("prompt") or None for it in items]
    prompted = any(prompts)
    hotwords = [it.get("hotwords") or [] for it in items]
    distractors = [item_distractors(it) for it in items]
    names = prompted and (any(hotwords) or any(distractors))
    record.update(n=len(items), audio_seconds=round(seconds, 2), prompted=prompted)
    rows: list[dict[str, Any]] = []

    def add(system: str, label: str, hyps: list[str], wall: float, prompt: bool, extra: bool = False) -> None:
        more: dict[str, Any] = {"prompt": prompt, "extra": extra}
        if names:
            more.update(prompt_metrics(refs, hyps, hotwords, distractors))
        rows.append(_row(system, label, refs, hyps, wall, seconds, **more))
        if hyps_out is not None:
            hyps_out.extend(
                {
                    "set": name,
                    "id": it["id"],
                    "system": system,
                    "prompt": it.get("prompt") if prompt else None,
                    "ref": it["text"],
                    "hyp": h,
                }
                for it, h in zip(items, hyps)
            )

    for key, system in systems.items():
        if isinstance(system, str):  # unavailable: the reason
            rows.append({"system": key, "label": key, "unavailable": system})
            continue
        if progress:
            print(f"  {name}: {key} on {len(items)} clips", file=sys.stderr, flush=True)
        if isinstance(system, MambaServe):
            hyps, wall = system.run(audio, prompts)
            add(key, system.label + (", PROMPT given" if prompted else ""), hyps, wall, prompted)
            if prompted:
                hyps, wall = system.run(audio, None)
                add(key, system.label + ", no PROMPT", hyps, wall, False)
        else:
            hyps, wall = run_peer(system, audio, None, progress)
            add(key, system.label + (", no prompt" if prompted else ""), hyps, wall, False)
            if prompted and whisper_prompt and isinstance(system, WhisperTinyEn):
                hyps, wall = run_peer(system, audio, prompts, progress)
                label = system.label + " + PROMPT as initial_prompt (extra row, not the peer's score)"
                add(WHISPER_PROMPT, label, hyps, wall, True, extra=True)
    record["rows"] = rows
    return record


def _relative(path: Path) -> str:
    """`path` relative to the working directory when it is under it (the tables name repo paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def evaluate_demo(samples: Path, systems: dict[str, Any]) -> dict[str, Any]:
    """The demo clips one by one: reference, every system's transcript and word errors."""
    record: dict[str, Any] = {"path": _relative(samples), "goal_word_errors": DEMO_GOAL_WORD_ERRORS}
    if not samples.is_file():
        return {**record, "missing": True, "clips": []}
    items, _ = load_manifest(samples)
    audio = [load_audio(it["audio"]) for it in items]
    clips = [{"id": it["id"], "reference": it["text"], "prompt": it.get("prompt") or None} for it in items]
    for key, system in systems.items():
        if isinstance(system, str):
            continue
        if isinstance(system, MambaServe):
            hyps, _ = system.run(audio, [c["prompt"] for c in clips])
        else:
            hyps, _ = run_peer(system, audio)
        for clip, hyp in zip(clips, hyps):
            clip.setdefault("systems", {})[key] = {
                "hyp": hyp,
                "word_errors": word_errors(clip["reference"], hyp),
            }
    ok = [c for c in clips if c.get("systems", {}).get(MAMBASERVE, {}).get("word_errors", 99) <= 1]
    return {**record, "missing": False, "clips": clips, "mambaserve_clips_met": len(ok)}


def run_accuracy(
    checkpoint: str,
    sets: Sequence[str],
    corpus: Path,
    eval_dir: Path,
    systems: Sequence[str] = SYSTEMS,
    limit: int | None = None,
    batch_size: int = 16,
    samples: Path | None = SAMPLES_DIR / "samples.jsonl",
    whisper_prompt: bool = True,
    hyps_out: list[dict[str, Any]] | None = None,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Every set × every system; the result dict `render_markdown` renders (and accuracy.json holds)."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "load_average_start": _load(),
        "busy_processes_start": busy_processes(),
        "limit": limit,
        "batch_size": batch_size,
        "threads": 1,
    }
    loaded: dict[str, Any] = {}
    for key in systems:
        if key == MAMBASERVE:
            loaded[key] = MambaServe(checkpoint, batch_size)
            loaded[key].recognizer.transcribe([np.zeros(SAMPLE_RATE, np.float32)], [None], method=None)
        else:
            try:
                peer: Peer = make_peer(key)
            except PeerUnavailable as e:
                loaded[key] = f"unavailable: {e}"
                continue
            warm_up(peer)
            loaded[key] = peer
    result["systems"] = {
        k: ({"name": k, "unavailable": v} if isinstance(v, str) else v.describe()) for k, v in loaded.items()
    }
    if MAMBASERVE in loaded:
        result["checkpoint"] = checkpoint_info(checkpoint, loaded[MAMBASERVE])
    result["sets"] = []
    for spec in sets:
        name, path, info = resolve_set(spec, corpus, eval_dir)
        if progress:
            print(f"{name}: {path}", file=sys.stderr, flush=True)
        result["sets"].append(
            evaluate_set(name, path, info, loaded, limit, whisper_prompt, hyps_out, progress)
        )
    if samples is not None:
        result["demo"] = evaluate_demo(Path(samples), loaded)
    result["load_average_end"] = _load()
    result["busy_processes_end"] = busy_processes()
    result["wall_minutes"] = round((time.perf_counter() - started) / 60, 1)
    return result


def checkpoint_info(checkpoint: str | Path, system: MambaServe) -> dict[str, Any]:
    weights = Path(checkpoint) / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else None
    decoding = system.recognizer.config.decoding
    return {
        "path": str(checkpoint),
        "weights_sha256": digest,
        "method": system.method,
        "decoding": dataclasses.asdict(decoding),
    }


# ---- rendering ------------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def _rtfx(x: float | None) -> str:
    return "–" if not x else f"{x:.1f}"


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def _goal_text(goal: Sequence[float | None] | None) -> str:
    if not goal:
        return "–"
    wer, cer = goal
    return " / ".join(f"{k} ≤ {_pct(v, 0)}" for k, v in (("WER", wer), ("CER", cer)) if v is not None)


def _met(row: dict[str, Any], goal: Sequence[float | None] | None) -> str:
    if not goal or "wer" not in row:
        return ""
    ok = all(v is None or row[k] <= v for k, v in zip(("wer", "cer"), goal))
    return " (goal met)" if ok else " (goal not met)"


def _main_row(record: dict[str, Any], system: str) -> dict[str, Any] | None:
    """The row a summary shows for `system`: mambaserve with its prompts; a peer's own score."""
    for row in record.get("rows", []):
        if row["system"] == system and not row.get("extra"):
            return row
    return None


def _processes(rows: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{r['process']} {r['cpu_percent']} %" for r in rows) or "none above 5 % of a core"


def render_markdown(result: dict[str, Any]) -> str:
    """ACCURACY.md from a `run_accuracy` result."""
    m = result.get("machine", {})
    systems = list(result.get("systems", {}))
    labels = {k: SHORT_NAMES.get(k, k) for k in systems}
    load = lambda xs: " / ".join(f"{x:.2f}" for x in xs) if xs else "?"  # noqa: E731
    lines = [
        "# Accuracy side by side",
        "",
        f"Made by `{result.get('command', '')}` on {result.get('date', '?')}"
        + (f" in {result['wall_minutes']} min" if result.get("wall_minutes") is not None else "")
        + ".",
        "",
        f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB; "
        f"{m.get('platform', '?')}; Python {m.get('python', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)
        + ".",
        f"- What else was running: load average (1 / 5 / 15 min) {load(result.get('load_average_start'))} at "
        f"the start, {load(result.get('load_average_end'))} at the end; busiest other processes at the "
        f"start: {_processes(result.get('busy_processes_start', []))}; at the end: "
        f"{_processes(result.get('busy_processes_end', []))}.",
    ]
    ck = result.get("checkpoint")
    if ck:
        lines.append(
            f"- mambaserve: checkpoint `{ck['path']}` (model.safetensors sha256 {ck.get('weights_sha256')}), "
            f"its default decoding `{ck['method']}` through `Recognizer.transcribe(..., method=None)`, "
            f"{result.get('batch_size')} clips per call."
        )
    for k in systems:
        if result["systems"][k].get("unavailable"):
            lines.append(f"- {k}: {result['systems'][k]['unavailable']}")
    if result.get("limit"):
        lines.append(
            f"- **`--limit {result['limit']}`: only the first {result['limit']} items of each set.**"
        )
    lines += [
        "",
        "Every system runs on the CPU with one thread, on the same clips. WER and CER are corpus rates",
        "after the project's text normalisation (`mambaserve.model.scoring.score`). RTFx = seconds of audio",
        "÷ wall seconds spent transcribing (model loading, a warm-up call and reading audio excluded);",
        "mambaserve decodes batches of clips, the peers one clip at a time. Peers get no prompt. Whisper",
        "tiny.en saw 680 000 hours of real speech: it is the reference ceiling, not a like-for-like peer.",
        "The eval_* sets are reserved for evaluation: reported, never used to train, tune or select.",
        "",
        "## Summary (WER / CER)",
        "",
        "| set | n | " + " | ".join(labels[k] for k in systems) + " | goal (mambaserve) |",
        "|---|---|" + "---|" * len(systems) + "---|",
    ]
    for rec in result.get("sets", []):
        if rec.get("missing"):
            cells = ["missing"] * len(systems)
            n = "–"
        else:
            cells = []
            for k in systems:
                row = _main_row(rec, k)
                if row is None or "wer" not in row:
                    cells.append("unavailable" if row and row.get("unavailable") else "–")
                else:
                    cells.append(f"{_pct(row['wer'])} / {_pct(row['cer'])}")
            n = str(rec.get("n", 0))
        goal = _goal_text(rec.get("goal"))
        mrow = _main_row(rec, MAMBASERVE)
        if goal != "–" and mrow and "wer" in mrow:
            goal += _met(mrow, rec.get("goal"))
        if rec.get("prompted") and mrow and "name_recall" in mrow:
            without = next((r for r in rec["rows"] if r["system"] == MAMBASERVE and not r.get("prompt")), {})
            goal = (
                f"names: recall {_pct(mrow.get('name_recall'))} with PROMPT (≥ 85 %), "
                f"{_pct(without.get('name_recall'))} without (≤ 5 %); distractors "
                f"{_pct(mrow.get('distractor_insertion_rate'))} (≤ 5 %)"
            )
        lines.append(
            f"| {rec['name']}{' (reserved)' if rec.get('reserved') else ''} | {n} | "
            + " | ".join(cells)
            + f" | {goal} |"
        )
    for rec in result.get("sets", []):
        lines += ["", f"## {rec['name']}", ""]
        desc = rec.get("description")
        lines.append(
            (f"{desc}. " if desc else "")
            + ("Reserved for evaluation. " if rec.get("reserved") else "")
            + f"`{rec['path']}`"
            + (f", {rec['n']} clips, {rec['audio_seconds'] / 60:.1f} min of audio" if rec.get("n") else "")
            + (f" ({rec['skipped']} bad items skipped)" if rec.get("skipped") else "")
            + "."
        )
        lines.append("")
        if rec.get("missing"):
            lines.append(f"**Missing**: `{rec['path']}` does not exist; this set was not evaluated.")
            continue
        if rec.get("error"):
            lines.append(f"**Not evaluated**: {rec['error']}.")
            continue
        prompt_cols = any("name_recall" in r for r in rec["rows"])
        head = "| system | WER | CER | RTFx | n |"
        rule = "|---|---|---|---|---|"
        if prompt_cols:
            head += " name recall | distractor insertions |"
            rule += "---|---|"
        lines += [head, rule]
        for row in rec["rows"]:
            if row.get("unavailable"):
                lines.append(
                    f"| {row['label']} | {row['unavailable']} | | | |" + (" | |" if prompt_cols else "")
                )
                continue
            line = f"| {_cell(row['label'])} | {_pct(row['wer'])} | {_pct(row['cer'])} | {_rtfx(row['rtfx'])} | {row['n']} |"
            if prompt_cols:
                line += (
                    f" {_pct(row.get('name_recall'))} ({row.get('names_recognised', 0)} / {row.get('names', 0)}) |"
                    f" {_pct(row.get('distractor_insertion_rate'))} ({row.get('distractors_inserted', 0)} / "
                    f"{row.get('distractors_offered', 0)}) |"
                )
            lines.append(line)
        if rec.get("goal"):
            lines += ["", f"Goal for mambaserve: {_goal_text(rec['goal'])}."]
        if prompt_cols:
            with_p = next((r for r in rec["rows"] if r["system"] == MAMBASERVE and r.get("prompt")), None)
            without = next(
                (r for r in rec["rows"] if r["system"] == MAMBASERVE and not r.get("prompt")), None
            )
            lines += [
                "",
                "Name recall: the true names' occurrences in the references that the transcript gets right at "
                "their place; distractor insertions: the (clip, distractor name in the prompt) pairs whose "
                "name appears in the transcript. PROMPT goals: recall ≥ 85 % with the prompt, ≤ 5 % without, "
                "distractor insertions ≤ 5 %.",
            ]
            if with_p and without:
                checks = [
                    ("recall with PROMPT", with_p.get("name_recall"), PROMPT_GOALS["name_recall"], True),
                    (
                        "recall without",
                        without.get("name_recall"),
                        PROMPT_GOALS["name_recall_without_prompt"],
                        False,
                    ),
                    (
                        "distractor insertions",
                        with_p.get("distractor_insertion_rate"),
                        PROMPT_GOALS["distractor_insertion_rate"],
                        False,
                    ),
                ]
                lines.append(
                    "mambaserve: "
                    + "; ".join(
                        f"{what} {_pct(v)} ({'met' if v is not None and (v >= g if hi else v <= g) else 'not met'})"
                        for what, v, g, hi in checks
                    )
                    + "."
                )
    demo = result.get("demo")
    if demo:
        lines += ["", "## Demo clips (`make demo`)", ""]
        if demo.get("missing"):
            lines.append(f"**Missing**: `{demo['path']}` does not exist.")
        else:
            peers = [k for k in systems if k != MAMBASERVE and not result["systems"][k].get("unavailable")]
            lines += [
                f"`{demo['path']}`; mambaserve gets each clip's prompt. Goal: every clip right but for at most "
                f"{demo['goal_word_errors']} word: **{demo.get('mambaserve_clips_met', 0)} / "
                f"{len(demo['clips'])} clips met**.",
                "",
                "| clip | reference | mambaserve | word errors | "
                + " | ".join(f"{labels[k]} word errors" for k in peers)
                + " |",
                "|---|---|---|---|" + "---|" * len(peers),
            ]
            for c in demo["clips"]:
                s = c.get("systems", {})
                ms = s.get(MAMBASERVE, {})
                ref = c["reference"] + (f" (PROMPT: {c['prompt']})" if c.get("prompt") else "")
                lines.append(
                    f"| {c['id']} | {_cell(ref)} | {_cell(ms.get('hyp', '–'))} | {ms.get('word_errors', '–')} | "
                    + " | ".join(str(s.get(k, {}).get("word_errors", "–")) for k in peers)
                    + " |"
                )
    lines += ["", "Raw results: `accuracy.json` beside this file.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="set names (SETS) or .jsonl paths")
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="folder of the test_* sets")
    parser.add_argument("--eval-dir", type=Path, default=Path("data/eval"), help="folder of the eval_* sets")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each set")
    parser.add_argument("--batch-size", type=int, default=16, help="mambaserve clips per call")
    parser.add_argument("--samples", type=Path, default=SAMPLES_DIR / "samples.jsonl")
    parser.add_argument("--no-demo", action="store_true", help="leave out the demo clips")
    parser.add_argument(
        "--no-whisper-prompt", action="store_true", help="no extra Whisper initial_prompt row"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ACCURACY.md"))
    parser.add_argument("--json", type=Path, default=None, help="default: accuracy.json beside --out")
    parser.add_argument("--hyps", type=Path, default=None, help="also write every hypothesis (JSONL)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python -m mambaserve.training.accuracy " + " ".join(shlex.quote(a) for a in argv)
    hyps: list[dict[str, Any]] | None = [] if args.hyps else None
    result = run_accuracy(
        args.checkpoint,
        args.sets,
        args.corpus,
        args.eval_dir,
        args.systems,
        args.limit,
        args.batch_size,
        None if args.no_demo else args.samples,
        not args.no_whisper_prompt,
        hyps,
        command,
        progress=not args.quiet,
    )
    json_path = args.json or args.out.with_name("accuracy.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(result))
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    if hyps is not None:
        args.hyps.parent.mkdir(parents=True, exist_ok=True)
        args.hyps.write_text("".join(json.dumps(h, ensure_ascii=False) + "\n" for h in hyps))
    summary: dict[str, Any] = {}
    for rec in result["sets"]:
        summary[rec["name"]] = "missing" if rec.get("missing") else {}
        for k in args.systems:
            row = _main_row(rec, k)
            if row and "wer" in row:
                summary[rec["name"]][k] = {"wer": round(row["wer"], 4), "cer": round(row["cer"], 4)}
    print(f"wrote {args.out} and {json_path}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "json": str(json_path), "sets": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
