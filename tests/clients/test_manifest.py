"""Manifest parsing and WER/CER scoring of mambaserve-eval: no server needed."""

from __future__ import annotations

import json

import pytest
from mambaserve.clients.evaluate import read_manifest, score


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_relative_audio_paths_resolve_against_the_manifest_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    m = _write(
        tmp_path / "sub" / "m.jsonl",
        [
            {"id": "u1", "audio": "clips/a.wav", "text": "A", "duration": 1.5},
            "",
            {"id": "u2", "audio": "/abs/b.flac", "text": "B", "prompt": "P"},
            {"audio": "c.wav", "text": "C", "hint": "H"},
        ],
    )
    entries = read_manifest(m)
    assert [e.id for e in entries] == ["u1", "u2", "line4"]
    assert entries[0].audio == str(tmp_path / "sub" / "clips" / "a.wav")
    assert entries[1].audio == "/abs/b.flac"
    assert entries[0].duration == 1.5 and entries[1].duration is None
    assert [e.prompt for e in entries] == [None, "P", None]
    assert [e.prompt for e in read_manifest(m, prompt_field="hint")] == [None, None, "H"]
    assert [e.prompt for e in read_manifest(m, prompt_field=None)] == [None, None, None]
    assert [e.id for e in read_manifest(m, limit=2)] == ["u1", "u2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "m.jsonl:2: not valid JSON"),
        ('["a"]', "m.jsonl:2: expected a JSON object"),
        ('{"id": "x", "text": "t"}', "m.jsonl:2: field 'audio' must be a string"),
        ('{"id": "x", "audio": "a.wav", "text": 3}', "m.jsonl:2: field 'text' must be a string"),
        ('{"audio": "a.wav", "text": "t", "duration": "long"}', "field 'duration' must be a number"),
        ('{"audio": "a.wav", "text": "t", "prompt": 7}', "field 'prompt' must be a string or absent"),
    ],
)
def test_malformed_lines_name_line_and_field(tmp_path, line, message):
    m = _write(tmp_path / "m.jsonl", [{"audio": "ok.wav", "text": "fine"}, line])
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        read_manifest(m)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")


def test_score_is_corpus_level_on_normalised_text():
    # Normalisation removes case/punctuation and spells digits: these pairs are identical.
    assert score(["Hello, World!", "it costs 5 dollars"], ["hello world", "It costs five dollars."]) == (
        0.0,
        0.0,
    )
    # 1 substitution + 1 deletion over 3 + 2 reference words = 2/5; characters: "sat"->"sit" (1) and
    # "dog barks"->"dog" (6 deleted) over 11 + 9 reference characters = 7/20.
    wer, cer = score(["the cat sat", "dog barks"], ["the cat sit", "dog"])
    assert wer == pytest.approx(2 / 5)
    assert cer == pytest.approx(7 / 20)
    with pytest.raises(ValueError, match="equal, non-zero"):
        score(["a"], [])
