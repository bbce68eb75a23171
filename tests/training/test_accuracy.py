"""training/accuracy.py: ACCURACY.md rendered from a small result dict, and one short end-to-end run
(mambaserve only, two clips, a missing set reported as missing)."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest
from mambaserve.training.accuracy import SETS, main, render_markdown, resolve_set
from mambaserve.training.manifest import load_manifest, write_manifest

SAMPLES = helpers.ROOT / "clients" / "samples" / "samples.jsonl"


def _row(system: str, label: str, wer: float, cer: float, **kw) -> dict:
    return {"system": system, "label": label, "n": 2, "wer": wer, "cer": cer, "rtfx": 12.34, **kw}


RESULT = {
    "command": "python -m mambaserve.training.accuracy --checkpoint ck --limit 2",
    "date": "2030-01-02 03:04 UTC",
    "wall_minutes": 1.5,
    "machine": {
        "cpu": "Test CPU",
        "cores": 2,
        "memory_gib": 8.0,
        "platform": "Linux",
        "python": "3.11",
        "versions": {"torch": "2.13.0"},
    },
    "load_average_start": [2.5, 2.0, 1.5],
    "load_average_end": [3.0, 2.0, 1.5],
    "busy_processes_start": [{"process": "trainer", "cpu_percent": 97}],
    "busy_processes_end": [],
    "limit": 2,
    "batch_size": 16,
    "systems": {
        "mambaserve": {"name": "mambaserve", "label": "mambaserve (`ctc_beam`)"},
        "pocketsphinx": {"name": "pocketsphinx", "label": "pocketsphinx 5.1.1 (en-us)"},
        "whisper-tiny.en": {"name": "whisper-tiny.en", "unavailable": "unavailable: not installed"},
    },
    "checkpoint": {"path": "ck", "weights_sha256": "abc123", "method": "ctc_beam"},
    "sets": [
        {
            "name": "test_espeak",
            "path": "d/test_espeak.jsonl",
            "description": "espeak voices",
            "n": 2,
            "audio_seconds": 6.0,
            "goal": [0.08, 0.03],
            "missing": False,
            "rows": [
                _row("mambaserve", "mambaserve (`ctc_beam`)", 0.05, 0.02, prompt=False),
                _row("pocketsphinx", "pocketsphinx 5.1.1 (en-us)", 0.9, 0.6, prompt=False),
                {"system": "whisper-tiny.en", "label": "whisper-tiny.en", "unavailable": "unavailable"},
            ],
        },
        {
            "name": "test_hotwords",
            "path": "d/test_hotwords.jsonl",
            "description": "names",
            "n": 2,
            "audio_seconds": 6.0,
            "goal": None,
            "missing": False,
            "prompted": True,
            "rows": [
                _row(
                    "mambaserve",
                    "mambaserve (`ctc_beam`), PROMPT given",
                    0.1,
                    0.05,
                    prompt=True,
                    name_recall=0.9,
                    names=10,
                    names_recognised=9,
                    distractor_insertion_rate=0.25,
                    distractors_offered=4,
                    distractors_inserted=1,
                ),
                _row(
                    "mambaserve",
                    "mambaserve (`ctc_beam`), no PROMPT",
                    0.2,
                    0.1,
                    prompt=False,
                    name_recall=0.0,
                    names=10,
                    names_recognised=0,
                    distractor_insertion_rate=0.0,
                    distractors_offered=4,
                    distractors_inserted=0,
                ),
                _row(
                    "whisper-tiny.en+initial_prompt",
                    "Whisper + PROMPT as initial_prompt (extra row)",
                    0.3,
                    0.2,
                    prompt=True,
                    extra=True,
                    name_recall=0.5,
                    names=10,
                    names_recognised=5,
                ),
            ],
        },
        {
            "name": "eval_human",
            "path": "e/eval_human.jsonl",
            "description": "",
            "reserved": True,
            "goal": [None, 0.3],
            "missing": True,
            "rows": [],
        },
    ],
    "demo": {
        "path": "clients/samples/samples.jsonl",
        "goal_word_errors": 1,
        "missing": False,
        "mambaserve_clips_met": 1,
        "clips": [
            {
                "id": "c1",
                "reference": "hello world",
                "prompt": "zorbeth, kalmira",
                "systems": {
                    "mambaserve": {"hyp": "hello word", "word_errors": 1},
                    "pocketsphinx": {"hyp": "yellow", "word_errors": 2},
                },
            },
            {
                "id": "c2",
                "reference": "a | b",
                "prompt": None,
                "systems": {"mambaserve": {"hyp": "x", "word_errors": 2}},
            },
        ],
    },
}


def test_render_markdown() -> None:
    md = render_markdown(RESULT)
    lines = md.splitlines()
    assert RESULT["command"] in md and "2030-01-02 03:04 UTC" in md
    assert "2.50 / 2.00 / 1.50" in md and "trainer 97 %" in md and "Test CPU, 2 cores" in md
    assert "`--limit 2`" in md and "unavailable: not installed" in md
    # The summary: one row per set, WER / CER per system, the goal and whether it is met.
    assert "| test_espeak | 2 | 5.0 % / 2.0 % | 90.0 % / 60.0 % | unavailable |" in md
    assert "(goal met)" in next(ln for ln in lines if ln.startswith("| test_espeak |"))
    assert "| eval_human (reserved) | – | missing | missing | missing |" in md
    assert "**Missing**: `e/eval_human.jsonl` does not exist" in md
    hot = next(ln for ln in lines if ln.startswith("| test_hotwords |"))
    assert "5.0 %" in hot and "recall 90.0 % with PROMPT" in hot and "0.0 % without" in hot
    # The per-set table: system, WER, CER, RTFx, n (+ the PROMPT columns on a prompted set).
    assert "| mambaserve (`ctc_beam`) | 5.0 % | 2.0 % | 12.3 | 2 |" in md
    assert (
        "| mambaserve (`ctc_beam`), PROMPT given | 10.0 % | 5.0 % | 12.3 | 2 | 90.0 % (9 / 10) | 25.0 % (1 / 4) |"
        in md
    )
    assert "Whisper + PROMPT as initial_prompt (extra row)" in md
    assert (
        "recall with PROMPT 90.0 % (met); recall without 0.0 % (met); distractor insertions 25.0 % (not met)"
        in md
    )
    # The demo clips, one by one; '|' in a transcript does not break the table.
    assert "**1 / 2 clips met**" in md
    assert "| c1 | hello world (PROMPT: zorbeth, kalmira) | hello word | 1 | 2 |" in md
    assert "| c2 | a \\| b | x | 2 | – |" in md


def test_resolve_set(tmp_path: Path) -> None:
    assert resolve_set("test_piper", Path("c"), Path("e"))[1] == Path("c/test_piper.jsonl")
    assert resolve_set("eval_cmu", Path("c"), Path("e"))[1] == Path("e/eval_cmu.jsonl")
    name, path, info = resolve_set(str(tmp_path / "test_espeak.jsonl"), Path("c"), Path("e"))
    assert (name, path, info) == ("test_espeak", tmp_path / "test_espeak.jsonl", SETS["test_espeak"])
    assert resolve_set("x/other.jsonl", Path("c"), Path("e"))[::2] == ("other", None)


def test_accuracy_end_to_end(
    checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items, _ = load_manifest(SAMPLES)
    write_manifest(tmp_path / "mine.jsonl", items[:3])
    write_manifest(tmp_path / "demo.jsonl", items[2:3])
    out = tmp_path / "bench" / "ACCURACY.md"
    args = [
        "--checkpoint",
        str(checkpoint_dir),
        "--systems",
        "mambaserve",
        "--limit",
        "2",
        "--sets",
        str(tmp_path / "mine.jsonl"),
        str(tmp_path / "absent.jsonl"),
        "--samples",
        str(tmp_path / "demo.jsonl"),
        "--out",
        str(out),
        "--hyps",
        str(tmp_path / "h.jsonl"),
        "--quiet",
    ]
    assert main(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["sets"]["absent"] == "missing" and set(last["sets"]["mine"]) == {"mambaserve"}
    result = json.loads((out.parent / "accuracy.json").read_text())
    mine, absent = result["sets"]
    assert absent["missing"] and not mine["missing"] and mine["n"] == 2
    row = mine["rows"][0]
    assert row["system"] == "mambaserve" and row["n"] == 2 and row["rtfx"] > 0
    assert result["command"].startswith("python -m mambaserve.training.accuracy --checkpoint")
    assert len(result["load_average_start"]) == 3 and result["checkpoint"]["method"]
    assert len(result["demo"]["clips"]) == 1 and result["demo"]["clips"][0]["prompt"]
    md = out.read_text()
    assert "## mine" in md and "## absent" in md and "**Missing**" in md and "## Demo clips" in md
    hyps = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [h["id"] for h in hyps] == [it["id"] for it in items[:2]]
