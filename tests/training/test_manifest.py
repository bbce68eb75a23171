"""Manifests, validation of bad data, the LibriSpeech reader, the Dataset and collate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from mambaserve.training.dataset import ManifestDataset, collate_audio, load_audio
from mambaserve.training.librispeech import main as librispeech_main
from mambaserve.training.librispeech import scan_librispeech
from mambaserve.training.manifest import load_manifest, read_manifest, validate_items, write_manifest

SR = 16_000


def _tone(seconds: float, sr: int = SR, freq: float = 220.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype=subtype)
    return path


@pytest.fixture
def mixed_manifest(tmp_path: Path) -> Path:
    """Three good items and one of each kind of bad one, plus a malformed line."""
    d = tmp_path / "corpus"
    good = [
        {"id": "good-1", "audio": "audio/g1.wav", "text": "hello there", "duration": 1.0},
        {
            "id": "good-2",
            "audio": "audio/g2.wav",
            "text": "a float wav",
            "duration": 0.5,
            "prompt": "zorbeth",
        },
        {"id": "good-3", "audio": str(d / "audio/g3.wav"), "text": "absolute path", "duration": 0.25},
    ]
    _write_wav(d / "audio/g1.wav", _tone(1.0))
    _write_wav(d / "audio/g2.wav", _tone(0.5), subtype="FLOAT")
    _write_wav(d / "audio/g3.wav", _tone(0.25))
    (d / "audio/garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00not really a wav file at all")
    _write_wav(d / "audio/empty.wav", np.zeros(0, dtype=np.float32))
    _write_wav(d / "audio/8k.wav", _tone(1.0, sr=8000), sr=8000)
    _write_wav(d / "audio/notext.wav", _tone(0.5))
    _write_wav(d / "audio/short.wav", _tone(0.5))
    bad = [
        {"id": "unreadable", "audio": "audio/garbage.wav", "text": "x y", "duration": 1.0},
        {"id": "empty-audio", "audio": "audio/empty.wav", "text": "x y", "duration": 0.0},
        {"id": "eight-k", "audio": "audio/8k.wav", "text": "x y", "duration": 1.0},
        {"id": "no-text", "audio": "audio/notext.wav", "text": "  ", "duration": 0.5},
        {"id": "missing", "audio": "audio/nope.wav", "text": "x y", "duration": 1.0},
        {"id": "wrong-duration", "audio": "audio/short.wav", "text": "x y", "duration": 3.0},
        {"id": "no-duration", "audio": "audio/short.wav", "text": "x y"},
    ]
    lines = (
        [json.dumps(it) for it in good[:2]]
        + [json.dumps(it) for it in bad]
        + ["{not json", json.dumps(good[2])]
    )
    path = d / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_bad_items_are_counted_by_reason_and_skipped(
    mixed_manifest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        good, report = load_manifest(mixed_manifest)
    assert [it["id"] for it in good] == ["good-1", "good-2", "good-3"]
    assert report.total == 11 and report.kept == 3 and report.n_skipped == 8
    assert dict(report.skipped) == {
        "unreadable audio": 1,
        "empty audio": 1,
        "wrong sample rate": 1,
        "empty text": 1,
        "missing audio": 1,
        "duration mismatch": 1,
        "missing field": 1,
        "malformed line": 1,
    }
    summary = report.summary()
    assert summary.startswith("skipped 8 of 11 items: ")
    assert "1 unreadable audio" in summary and "1 wrong sample rate" in summary and "1 empty text" in summary
    assert any(summary in rec.getMessage() for rec in caplog.records), "the summary must be logged"
    # Relative paths resolve against the manifest's folder.
    assert all(Path(it["audio"]).is_absolute() and Path(it["audio"]).is_file() for it in good)


def test_validate_items_all_good_logs_info(mixed_manifest: Path, caplog: pytest.LogCaptureFixture) -> None:
    items, _ = load_manifest(mixed_manifest)
    with caplog.at_level(logging.INFO):
        good, report = validate_items(items, source="again")
    assert len(good) == 3 and report.summary() == "all 3 items ok"
    assert any("again: all 3 items ok" in r.getMessage() for r in caplog.records)


def test_read_manifest_is_strict_and_write_is_relative(mixed_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="malformed line at line 10"):
        read_manifest(mixed_manifest)
    good, _ = load_manifest(mixed_manifest)
    out = mixed_manifest.parent / "rewritten.jsonl"
    assert write_manifest(out, good) == 3
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio"] for r in raw] == ["audio/g1.wav", "audio/g2.wav", "audio/g3.wav"]
    assert raw[1]["prompt"] == "zorbeth"
    back = read_manifest(out)
    assert [b["audio"] for b in back] == [g["audio"] for g in good]
    # Audio outside the manifest's folder is kept absolute.
    elsewhere = tmp_path / "elsewhere" / "m.jsonl"
    write_manifest(elsewhere, good[:1])
    assert json.loads(elsewhere.read_text())["audio"] == str(Path(good[0]["audio"]).resolve())
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['duration'\]"):
        write_manifest(out, [{"id": "x", "audio": "a.wav", "text": "t"}])


def test_dataset_and_collate(mixed_manifest: Path) -> None:
    ds = ManifestDataset(mixed_manifest)
    assert len(ds) == 3 and ds.report is not None and ds.report.n_skipped == 8
    assert ds.durations == pytest.approx([1.0, 0.5, 0.25])
    first, second = ds[0], ds[1]
    assert first["audio"].dtype == torch.float32 and first["audio"].dim() == 1
    assert first["audio"].shape[0] == SR
    # The float WAV is read correctly (not as zeros: the soundfile int16 pitfall).
    assert float(second["audio"].abs().max()) == pytest.approx(0.5, abs=1e-3)
    assert float(first["audio"].abs().max()) == pytest.approx(0.5, abs=1e-3)
    assert first["prompt"] == "" and second["prompt"] == "zorbeth" and first["hotwords"] == []
    batch = collate_audio([ds[2], ds[0], ds[1]])
    assert batch["audio"].shape == (3, SR) and batch["audio"].dtype == torch.float32
    assert batch["audio_lengths"].dtype == torch.int64
    assert batch["audio_lengths"].tolist() == [SR // 4, SR, SR // 2]
    assert torch.all(batch["audio"][0, SR // 4 :] == 0) and torch.all(batch["audio"][2, SR // 2 :] == 0)
    assert torch.equal(batch["audio"][1], ds[0]["audio"])
    assert batch["ids"] == ["good-3", "good-1", "good-2"]
    assert batch["texts"] == ["absolute path", "hello there", "a float wav"]
    assert batch["prompts"] == ["", "", "zorbeth"]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_audio)
    assert [b["audio"].shape[0] for b in loader] == [2, 1]
    with pytest.raises(ValueError, match="empty batch"):
        collate_audio([])


def test_load_audio_downmixes_and_rejects_other_rates(tmp_path: Path) -> None:
    stereo = np.stack([_tone(0.1, amp=0.2), _tone(0.1, amp=0.4)], axis=1)
    path = _write_wav(tmp_path / "stereo.wav", stereo)
    mono = load_audio(path)
    assert mono.shape == (SR // 10,) and mono.dtype == np.float32
    assert float(np.abs(mono).max()) == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(ValueError, match="8000 Hz, need 16000 Hz"):
        load_audio(_write_wav(tmp_path / "8k.wav", _tone(0.1, sr=8000), sr=8000))


def _librispeech_fixture(root: Path) -> Path:
    """Two chapters of two speakers in `test-clean`, one utterance with a missing FLAC."""
    split = root / "LibriSpeech" / "test-clean"
    chapters = {
        ("1089", "134686"): {"0000": "HE HOPED THERE WOULD BE STEW FOR DINNER", "0001": "STUFF IT INTO YOU"},
        ("121", "127105"): {"0000": "IT WAS THE 2ND TIME HE'D SEEN IT", "0001": "MISSING AUDIO HERE"},
    }
    for (spk, chap), utts in chapters.items():
        folder = split / spk / chap
        folder.mkdir(parents=True)
        lines = []
        for k, (utt, text) in enumerate(utts.items()):
            uid = f"{spk}-{chap}-{utt}"
            lines.append(f"{uid} {text}")
            if text != "MISSING AUDIO HERE":
                sf.write(
                    str(folder / f"{uid}.flac"), _tone(0.5 + 0.25 * k), SR, format="FLAC", subtype="PCM_16"
                )
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    # Another split that a --splits filter must leave out.
    other = root / "LibriSpeech" / "dev-clean" / "84" / "121123"
    other.mkdir(parents=True)
    sf.write(str(other / "84-121123-0000.flac"), _tone(0.5), SR, format="FLAC", subtype="PCM_16")
    (other / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n")
    return root / "LibriSpeech"


def test_librispeech_reader(tmp_path: Path) -> None:
    root = _librispeech_fixture(tmp_path)
    items, report = scan_librispeech(root, splits=["test-clean"])
    assert [it["id"] for it in items] == ["1089-134686-0000", "1089-134686-0001", "121-127105-0000"]
    assert items[0]["text"] == "he hoped there would be stew for dinner"
    assert items[2]["text"] == "it was the second time he'd seen it"
    assert [it["duration"] for it in items] == pytest.approx([0.5, 0.75, 0.5])
    assert report.total == 4 and dict(report.skipped) == {"missing audio": 1}
    all_items, _ = scan_librispeech(root)
    assert len(all_items) == 4  # dev-clean too
    only_split, _ = scan_librispeech(root / "test-clean")
    assert len(only_split) == 3


def test_librispeech_cli_writes_a_loadable_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _librispeech_fixture(tmp_path)
    out = tmp_path / "ls.jsonl"
    assert librispeech_main([str(root), "--out", str(out), "--splits", "test-clean"]) == 0
    assert "wrote 3 utterances" in capsys.readouterr().out
    good, report = load_manifest(out)
    assert len(good) == 3 and report.n_skipped == 0
    ds = ManifestDataset(good)
    assert ds[1]["audio"].shape[0] == int(0.75 * SR)
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    assert librispeech_main([str(empty), "--out", str(tmp_path / "none.jsonl")]) == 1
    assert not (tmp_path / "none.jsonl").exists()
