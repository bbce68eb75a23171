"""Evaluation-only sets: their voices speak, their texts come from package descriptions, and the
training data code refuses both (reserved.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mambaserve.training import evalsets, reserved

PACKAGES = """Package: foo
Version: 1.0
Description: tool to convert pictures into plain text files
Description-md5: 0
Package: bar
Description: library for the bar protocol
 Bar is a small protocol for sending short messages between two programs.
 It is used by many chat clients.
 .
 This package contains the shared library.
Package: baz
Description: baz baz baz
"""


def test_description_parsing_and_cmu_texts(tmp_path: Path) -> None:
    (tmp_path / "x_main_binary-amd64_Packages").write_text(PACKAGES)
    descs = reserved.debian_descriptions(str(tmp_path))
    assert descs[0] == "tool to convert pictures into plain text files"
    assert descs[1].startswith("library for the bar protocol\n\nBar is a small protocol")
    sentences = list(reserved.description_sentences(descs))
    assert (
        "It is used by many chat clients." in sentences
        and "This package contains the shared library." in sentences
    )
    texts = evalsets.cmu_texts(10, lists_dir=str(tmp_path))
    assert "tool to convert pictures into plain text files" in texts
    assert "bar is a small protocol for sending short messages between two programs" in texts
    assert not any("baz" in t for t in texts)  # repeated words: not a sentence
    assert "this package contains the shared library" not in texts  # only the first sentences
    res = reserved.reserved_sentences(str(tmp_path))
    assert set(texts) <= res
    kept, dropped = reserved.drop_reserved_sentences(["it is used by many chat clients", "good morning"], res)
    assert kept == ["good morning"] and dropped == 1


@pytest.mark.parametrize("engine,voice", evalsets.CMU_VOICES)
def test_cmu_voices_speak_and_are_reserved(engine: str, voice: str) -> None:
    audio = evalsets.synth_cmu(engine, voice, "a library for reading and writing files")
    assert np.isfinite(audio).all() and 1.0 < len(audio) / 16_000 < 6.0
    assert reserved.is_reserved_voice(f"{engine}:{voice}")


def test_human_recordings_on_this_machine(tmp_path: Path) -> None:
    found = evalsets.human_sources(tmp_path, wheels=False)
    assert len(found) == 8, "Debian alsa-utils ships the eight channel announcements"
    res = reserved.reserved_sentences()
    for _, text, data in found:
        assert text.lower() in res and evalsets._to_16k(data).size > 16_000


def test_training_refuses_evaluation_items() -> None:
    res = frozenset({"library for the bar protocol"})
    ok = [{"id": "a", "text": "good morning", "voice": "mbrola:mb-us1:s150:p50", "family": "mbrola"}]
    assert reserved.check_training_items(ok, res) == 1
    for bad in (
        {"id": "b", "text": "good day", "voice": "flite:slt", "family": "cmu"},
        {"id": "c", "text": "good day", "voice": "human:alsa-utils:Front_Left", "family": "human"},
        {"id": "d", "text": "library for the bar protocol", "voice": "espeak:en:s150:p50"},
    ):
        with pytest.raises(reserved.ReservedVoiceError, match="reserved for evaluation"):
            reserved.check_training_items([*ok, bad], res)
