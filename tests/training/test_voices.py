"""Voice families: held-out rules, the reserved (evaluation-only) voices and texts, and that every
voice is installed and speaks (set-up: `make system-deps` / training/setup_voices.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from mambaserve.training import corpus, reserved, synth, voices
from mambaserve.training.text_corpus import sentence_splits


def test_every_voice_is_installed() -> None:
    missing = voices.missing_voices()
    assert not missing, f"missing voices {missing}: run `make system-deps` (training/setup_voices.py)"


@pytest.mark.parametrize("fam", voices.FAMILIES)
def test_every_family_speaks(fam: str) -> None:
    voice = voices.sample_voice(random.Random(fam), fam, heldout=False)
    audio = voices.render(voice, "the quick brown fox jumps over the lazy dog")
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    assert 1.0 < len(audio) / synth.SAMPLE_RATE < 6.0, voice.name
    assert 0.01 < float(np.abs(audio).max()) <= 1.0
    assert voice.name.split(":")[0] == fam == voices.family(voice)


@pytest.mark.parametrize("voice", [*voices.MBROLA_TRAIN, *voices.MBROLA_UNSEEN])
def test_every_mbrola_voice_speaks(voice: str) -> None:
    audio = voices.render(voices.MbrolaVoice(voice, 170, 50), "good morning to you")
    assert 0.4 < len(audio) / synth.SAMPLE_RATE < 4.0 and np.isfinite(audio).all()


def test_pico_en_gb_and_markup() -> None:
    slow = voices.render(voices.PicoVoice("en-GB", 80, 100), "good morning to you all")
    fast = voices.render(voices.PicoVoice("en-GB", 120, 100), "good morning to you all")
    assert len(slow) > 1.2 * len(fast)  # the speed markup is honoured


def test_held_out_rules_of_the_new_families() -> None:
    assert not set(voices.PICO_TRAIN_LEVELS) & set(voices.PICO_HELDOUT_LEVELS)
    assert not set(voices.MBROLA_TRAIN) & set(voices.MBROLA_UNSEEN)
    assert not set(voices.PICO_TRAIN) & set(voices.PICO_UNSEEN)
    rng = random.Random(0)
    for _ in range(300):
        for fam in voices.FAMILIES:
            train = voices.sample_voice(rng, fam, heldout=False)
            held = voices.sample_voice(rng, fam, heldout=True)
            assert not train.heldout and not voices.is_unseen(train), train.name
            assert held.heldout and not voices.is_unseen(held), held.name
        for fam in ("mbrola", "pico"):
            unseen = voices.sample_voice(rng, fam, heldout=True, unseen=True)
            assert unseen.heldout and voices.is_unseen(unseen)
    with pytest.raises(ValueError, match="no unseen voice"):
        voices.sample_voice(rng, "espeak", heldout=True, unseen=True)
    with pytest.raises(ValueError, match="must be one of"):
        voices.MbrolaVoice("mb-xx9", 150, 50)


# ---- reserved for evaluation ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "flite:kal",
        "flite:kal16",
        "flite:awb",
        "flite:rms",
        "flite:slt",
        "festival:kal_diphone",
        "festival:cmu_us_slt_arctic_hts",
        "mbrola:slt",
        "espeak:en+slt:s150:p50",
    ],
)
def test_reserved_voices_are_refused(name: str) -> None:
    assert reserved.is_reserved_voice(name)
    with pytest.raises(reserved.ReservedVoiceError, match="reserved for evaluation"):
        reserved.check_training_voice(name)


def test_training_voices_are_not_reserved() -> None:
    rng = random.Random(1)
    for _ in range(200):
        for fam in voices.FAMILIES:
            assert not reserved.is_reserved_voice(voices.sample_voice(rng, fam, heldout=False).name)


def test_plan_refuses_a_reserved_voice(monkeypatch: pytest.MonkeyPatch) -> None:
    class Kal:
        name = "flite:kal"
        heldout = True
        unseen = False

    real = corpus.sample_voice
    monkeypatch.setattr(
        corpus,
        "sample_voice",
        lambda rng, fam, heldout, unseen=False: Kal() if fam == "pico" else real(rng, fam, heldout, unseen),
    )
    with pytest.raises(reserved.ReservedVoiceError):
        corpus.plan_corpus(
            n_train=50,
            n_dev=5,
            n_test=2,
            n_piper_test=1,
            n_hotword_test=2,
            n_test_diphone=2,
            n_heldout_voices=2,
        )


def test_reserved_sentences_are_dropped() -> None:
    res = frozenset({"a tool to convert images to text", "hello world"})
    kept, dropped = reserved.drop_reserved_sentences(
        [
            "hello world",
            "we wrote a tool to convert images to text for fun",
            "a tool to convert images",
            "good day",
        ],
        res,
    )
    assert kept == ["a tool to convert images", "good day"] and dropped == 2


def test_training_text_avoids_debian_descriptions_and_human_transcripts() -> None:
    res = reserved.reserved_sentences()
    assert len(res) > 10_000, "apt lists with package descriptions are needed (make system-deps)"
    s = sentence_splits(0)
    assert not set(s.train) & res and not set(s.dev) & res and not set(s.test) & res
    assert s.stats["prose_fortunes"] > 1000 and s.stats["prose_stdlib"] > 1000
    for t in reserved.HUMAN_TRANSCRIPTS:
        assert t in res
    # a known short description: never a training sentence
    assert "multi lingual software speech synthesizer" in res
