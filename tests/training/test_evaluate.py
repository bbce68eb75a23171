"""training/evaluate.py: the CLI's JSON contract (last line, the default method's WER/CER), the
PROMPT metrics on hand-made examples whose answers are known, word errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from mambaserve.model.recognizer import Recognizer
from mambaserve.model.scoring import score
from mambaserve.training.dataset import load_audio
from mambaserve.training.evaluate import (
    CTC_GREEDY,
    PROMPT_KEYS,
    decoding_methods,
    evaluate,
    item_distractors,
    prompt_metrics,
    word_errors,
)
from mambaserve.training.manifest import load_manifest, write_manifest

SAMPLES = helpers.ROOT / "clients" / "samples" / "samples.jsonl"


def test_prompt_metrics_hand_example() -> None:
    refs = [
        "Zorbeth met zorbeth at noon.",  # the name said twice: two occurrences
        "Ask phaelor about it",
        "the plan is ready",  # a prompt of distractors only
    ]
    hyps = [
        "ZORBETH met sorbet at noon, Kalmira!",  # 1 of 2 names; distractor kalmira inserted
        "ask Phaelor, about it; kwyxila kwyxila",  # name right despite case and comma; one
        # distractor (said twice) of the two offered
        "the plan is ready",
    ]
    hotwords = [["Zorbeth"], ["phaelor"], []]
    distractors = [["Kalmira"], ["kwyxila", "Tixpre", "tixpre"], ["mozdomor"]]  # tixpre: offered once
    m = prompt_metrics(refs, hyps, hotwords, distractors)
    assert (m["names"], m["names_recognised"]) == (3, 2)
    assert m["name_recall"] == pytest.approx(2 / 3)
    assert (m["distractors_offered"], m["distractors_inserted"], m["distractor_insertions"]) == (4, 2, 3)
    assert m["distractor_insertion_rate"] == pytest.approx(2 / 4)


def test_prompt_metrics_alignment_and_empty_cases() -> None:
    # A near miss is a miss; the name counts only where the alignment matches it exactly.
    m = prompt_metrics(["tell zorbeth now"], ["tell zorbet now"], [["zorbeth"]], [[]])
    assert (m["names"], m["names_recognised"], m["name_recall"]) == (1, 0, 0.0)
    assert m["distractor_insertion_rate"] is None  # nothing offered: no rate, not 0
    m = prompt_metrics(["plain text"], [""], [[]], [["kalmira"]])
    assert m["name_recall"] is None and m["distractor_insertion_rate"] == 0.0
    # A distractor that is really said (in the reference) is not an insertion when transcribed.
    m = prompt_metrics(["kalmira said so"], ["kalmira said so"], [[]], [["kalmira"]])
    assert m["distractors_inserted"] == 0
    with pytest.raises(ValueError):
        prompt_metrics(["a"], ["a", "b"], [[]], [[]])


def test_item_distractors_from_field_or_prompt() -> None:
    assert item_distractors({"prompt": "a, b", "hotwords": ["a"], "distractors": ["b"]}) == ["b"]
    assert item_distractors({"prompt": "Zorbeth, Kalmira, phaelor", "hotwords": ["zorbeth"]}) == [
        "kalmira",
        "phaelor",
    ]
    assert item_distractors({"text": "no prompt"}) == []


def test_word_errors() -> None:
    assert word_errors("We will meet at the airport.", "we will meet at the airport") == 0
    assert word_errors("we will meet at the airport", "we meet at an airport today") == 3
    assert word_errors("hello world", "") == 2
    assert word_errors("", "uh") == 1


def _hotword_manifest(tmp_path: Path) -> Path:
    """The prompted sample clip (its distractors recorded, as test_hotwords items have) and a plain one."""
    by_id = {it["id"]: it for it in load_manifest(SAMPLES)[0]}
    prompted = {**by_id["sample-03-espeak-prompt"], "distractors": ["bakviora", "bamymus"]}
    path = tmp_path / "hot.jsonl"
    write_manifest(path, [prompted, by_id["sample-02-espeak"]])
    return path


def test_evaluate_cli_json_contract(checkpoint_dir: Path, tmp_path: Path) -> None:
    manifest = _hotword_manifest(tmp_path)
    cmd = [sys.executable, "-m", "mambaserve.training.evaluate", "--checkpoint", str(checkpoint_dir)]
    cmd += ["--manifest", str(manifest), "--threads", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line is one JSON object
    recognizer = Recognizer(checkpoint_dir)
    default = recognizer.config.decoding.method
    methods = decoding_methods(recognizer)
    assert default in methods and CTC_GREEDY in methods
    assert result["n"] == 2 and result["method"] == default
    for method in methods:
        block = result[method]
        assert block["cer"] >= 0 and block["wer"] >= 0 and block["rtfx"] > 0
    assert (result["wer"], result["cer"], result["rtfx"]) == tuple(
        result[default][k] for k in ("wer", "cer", "rtfx")
    )
    # PROMPT metrics: in every prompt-taking method's block and, for the default, at the top level.
    for key in PROMPT_KEYS:
        assert key in result and result[key] == result[default][key]
    counts = result[default]["prompt_counts"]
    assert counts["with_prompt"]["names"] == 1 and counts["with_prompt"]["distractors_offered"] == 2
    assert "name_recall" not in result[CTC_GREEDY]  # the CTC head takes no prompt
    assert "rare_word_error_rate_without_prompt" in result[default]

    # The default block is the checkpoint's default decoding: Recognizer.transcribe(method=None).
    items, _ = load_manifest(manifest)
    hyps = recognizer.transcribe(
        [load_audio(it["audio"]) for it in items], [it.get("prompt") for it in items], method=None
    )
    assert score([it["text"] for it in items], hyps)._asdict() == {
        "wer": result["wer"],
        "cer": result["cer"],
    }


def test_evaluate_one_method_and_unknown_method(checkpoint_dir: Path, tmp_path: Path) -> None:
    manifest = _hotword_manifest(tmp_path)
    result = evaluate(str(checkpoint_dir), str(manifest), ["default"], limit=1, threads=1, progress=False)
    default = result["method"]
    assert set(result) >= {"n", "wer", "cer", default} and CTC_GREEDY not in result
    with pytest.raises(ValueError, match="unknown decoding method"):
        evaluate(str(checkpoint_dir), str(manifest), ["no_such_method"], progress=False)
