"""Synthesis and corpus generation with the real espeak-ng, sox and piper (tiny sizes)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mambaserve.training import synth
from mambaserve.training.corpus import (
    SPLITS,
    TEST_SPLITS,
    TRAIN_MIX,
    build_corpus,
    demo_sentences,
    family_counts,
    plan_corpus,
)
from mambaserve.training.hotwords import hotword_pools, parse_prompt
from mambaserve.training.manifest import load_manifest
from mambaserve.training.text_corpus import sentence_splits
from mambaserve.training.voices import is_unseen


def test_voice_split_rules() -> None:
    pairs = [(v, x) for v in synth.ESPEAK_VOICES for x in synth.ESPEAK_VARIANTS]
    held = [p for p in pairs if synth.is_heldout_pair(*p)]
    assert 0.15 < len(held) / len(pairs) < 0.25
    for v in synth.ESPEAK_VOICES:  # every voice and variant is still trained on, in other pairs
        assert {synth.is_heldout_pair(v, x) for x in synth.ESPEAK_VARIANTS} == {True, False}
    for x in synth.ESPEAK_VARIANTS:
        assert {synth.is_heldout_pair(v, x) for v in synth.ESPEAK_VOICES} == {True, False}
    assert not set(synth.TRAIN_SPEEDS) & set(synth.HELDOUT_SPEEDS)
    assert not set(synth.TRAIN_PITCHES) & set(synth.HELDOUT_PITCHES)
    for key in synth.PIPER_TRAIN:
        assert not set(synth.PIPER_TRAIN[key]) & set(synth.PIPER_HELDOUT[key])
    rng = random.Random(0)
    for _ in range(200):
        assert synth.sample_espeak_voice(rng, heldout=True).heldout
        assert not synth.sample_espeak_voice(rng, heldout=False).heldout
        assert synth.sample_piper_setting(rng, heldout=True).heldout
        assert not synth.sample_piper_setting(rng, heldout=False).heldout
    with pytest.raises(ValueError, match="variant must be one of"):
        synth.EspeakVoice("en", "m9", 150, 50)


def test_default_plan_keeps_held_out_data_out_of_training() -> None:
    """The full default-size plan (no audio): texts, words, rare words and voices of test never in train."""
    plans = plan_corpus()
    counts = {s: len(plans[s]) for s in SPLITS}
    assert counts == {
        "train": 30_000,
        "dev": 300,
        "test_espeak": 300,
        "test_piper": 200,
        "test_hotwords": 200,
        "test_diphone": 200,
        "heldout_voices": 300,
    }
    train = plans["train"]
    fams = Counter(j.engine for j in train)
    assert fams == {f: round(30_000 * w) for f, w in TRAIN_MIX.items()}
    assert (fams["mbrola"] + fams["piper"]) / len(train) > 0.55  # diphone + neural: most of train
    assert 0.25 < sum(bool(j.prompt) for j in train) / len(train) < 0.35
    assert 0.75 < sum(bool(j.effects) for j in train) / len(train) < 0.85
    assert not any(j.effects for s in SPLITS[1:] for j in plans[s])  # evaluation audio is clean
    assert not any(is_unseen(j.voice) for j in train)
    assert all(is_unseen(j.voice) for j in plans["heldout_voices"])
    assert {j.voice.name.split(":")[1] for j in plans["heldout_voices"]} == {"mb-us3", "en-GB"}
    train_texts = {j.text for j in train}
    train_words = {w for t in train_texts for w in t.split()}
    train_voices = {j.voice.name for j in train}
    heldout_words = sentence_splits(0).heldout_words
    for split in TEST_SPLITS:
        assert not {j.text for j in plans[split]} & train_texts
        assert not {j.voice.name for j in plans[split]} & train_voices
    assert not {j.voice.name for j in plans["dev"]} & train_voices
    assert not set(demo_sentences()) & train_texts
    test_words = {w for s in ("test_espeak", "test_piper") for j in plans[s] for w in j.text.split()}
    assert len((test_words - train_words) & heldout_words) >= 20  # open vocabulary
    pools = hotword_pools(0)
    for j in plans["test_hotwords"]:
        assert j.hotwords and set(j.hotwords) <= set(pools.test) and set(j.hotwords) <= set(j.text.split())
        assert set(j.hotwords) < set(parse_prompt(j.prompt)) <= set(pools.test)
        assert 1 <= len(j.distractors) <= 2 and not set(j.distractors) & set(j.text.split())
        assert not set(j.hotwords) & train_words
    train_prompt_words = {w for j in train for w in parse_prompt(j.prompt)}
    assert train_prompt_words <= set(pools.train) and not train_prompt_words & set(pools.test)
    assert plan_corpus()["dev"][5].text == plans["dev"][5].text  # deterministic
    assert plan_corpus()["train"][7].effects == plans["train"][7].effects


def test_family_counts() -> None:
    assert family_counts(10, {"espeak": 0.5, "piper": 0.5}) == {"espeak": 5, "piper": 5}
    assert family_counts(7, {"espeak": 0.3, "mbrola": 0.7}, {"piper": 2}) == {
        "espeak": 2,
        "mbrola": 3,
        "piper": 2,
    }
    assert sum(family_counts(101, TRAIN_MIX).values()) == 101
    with pytest.raises(ValueError, match="exceed"):
        family_counts(3, TRAIN_MIX, {"piper": 4})


def test_espeak_is_deterministic_16k_pcm(tmp_path: Path) -> None:
    voice = synth.EspeakVoice("en-gb-x-rp", "whisper", 150, 40)
    d1 = synth.synth_espeak("the quick brown fox", voice, tmp_path / "a.wav")
    synth.synth_espeak("the quick brown fox", voice, tmp_path / "b.wav")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert d1 == pytest.approx(info.frames / 16000) and 0.5 < d1 < 5
    with pytest.raises(ValueError, match="text is empty"):
        synth.synth_espeak("  ", voice, tmp_path / "c.wav")


def test_tiny_corpus_writes_valid_manifests_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    sizes = dict(
        n_train=12,
        n_dev=3,
        n_test=3,
        n_piper_test=1,
        n_hotword_test=3,
        n_test_diphone=2,
        n_heldout_voices=2,
        effects_fraction=0.8,
    )
    summary = build_corpus(out, seed=0, workers=2, progress=False, **sizes)
    assert summary["failed"] == {}
    assert {s: summary["splits"][s]["items"] for s in SPLITS} == {
        "train": 12,
        "dev": 3,
        "test_espeak": 3,
        "test_piper": 1,
        "test_hotwords": 3,
        "test_diphone": 2,
        "heldout_voices": 2,
    }
    assert set(summary["splits"]["train"]["families"]) == set(TRAIN_MIX)
    assert summary["splits"]["train"]["effects"] >= 6 and summary["effects"]
    assert 0 < summary["train_neural_diphone_share"] < 1
    assert json.loads((out / "summary.json").read_text())["total_items"] == 26

    loaded = {}
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        raw = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(
            not Path(r["audio"]).is_absolute() and r["audio"].startswith(f"audio/{split}/") for r in raw
        )
        items, report = load_manifest(path, tolerance_s=0.002)  # durations must match the files closely
        assert report.n_skipped == 0 and len(items) == len(raw)
        for it, r in zip(items, raw):
            audio, sr = sf.read(it["audio"], dtype="float32")
            assert sr == 16000 and audio.ndim == 1
            assert it["duration"] == pytest.approx(len(audio) / sr, abs=1e-3)
            assert 0.05 < float(np.abs(audio).max()) < 0.99, it["voice"]  # audible, never clipped
            assert it["text"] and it["voice"].split(":")[0] == r["family"] in {
                "espeak",
                "mbrola",
                "pico",
                "piper",
            }
            assert bool(r.get("effects")) <= (split == "train")
            if r.get("prompt"):
                assert set(r["distractors"]) | set(r.get("hotwords", [])) == set(parse_prompt(r["prompt"]))
        loaded[split] = raw

    train_texts = {it["text"] for it in loaded["train"]}
    train_voices = {it["voice"] for it in loaded["train"]}
    for split in TEST_SPLITS:
        assert not {it["text"] for it in loaded[split]} & train_texts
        assert not {it["voice"] for it in loaded[split]} & train_voices
    for it in loaded["test_hotwords"]:
        assert it["prompt"] and set(it["hotwords"]) <= set(parse_prompt(it["prompt"]))
        assert it["distractors"] and not set(it["distractors"]) & set(it["text"].split())

    # Resume: a second run synthesises nothing and writes the same manifests.
    before = {s: (out / f"{s}.jsonl").read_text() for s in SPLITS}
    again = build_corpus(out, seed=0, workers=1, progress=False, **sizes)
    assert again["synthesised"] == 0 and again["failed"] == {}
    assert {s: (out / f"{s}.jsonl").read_text() for s in SPLITS} == before
