"""The shipped demo clips: valid, small, held out of training, and reproducible by the script."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import soundfile as sf
from mambaserve.training.hotwords import hotword_pools, parse_prompt
from mambaserve.training.manifest import load_manifest
from mambaserve.training.samples import DEFAULT_OUT, make_samples
from mambaserve.training.text_corpus import sentence_splits

SAMPLES = helpers.ROOT / "clients" / "samples"


def test_shipped_samples_are_valid_and_held_out() -> None:
    assert DEFAULT_OUT == SAMPLES
    items, report = load_manifest(SAMPLES / "samples.jsonl", tolerance_s=0.002)
    assert report.n_skipped == 0 and len(items) == 5
    total_bytes = 0
    for it in items:
        info = sf.info(it["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        total_bytes += Path(it["audio"]).stat().st_size
    assert total_bytes < 1_000_000
    engines = [it["voice"].split(":")[0] for it in items]
    assert engines.count("espeak") == 3 and engines.count("piper") == 2
    train = set(sentence_splits(0).train)
    assert not {it["text"] for it in items} & train
    prompted = [it for it in items if it.get("prompt")]
    assert len(prompted) == 1
    assert (
        set(prompted[0]["hotwords"]) <= set(parse_prompt(prompted[0]["prompt"])) <= set(hotword_pools(0).test)
    )


def test_samples_regenerate_identically(tmp_path: Path) -> None:
    fresh = make_samples(tmp_path)
    shipped = [json.loads(line) for line in (SAMPLES / "samples.jsonl").read_text().splitlines()]
    assert [(f["id"], f["text"], f["voice"], f.get("prompt")) for f in fresh] == [
        (s["id"], s["text"], s["voice"], s.get("prompt")) for s in shipped
    ]
    for f, s in zip(fresh, shipped):
        new, old = Path(f["audio"]), SAMPLES / s["audio"]
        if f["voice"].startswith("espeak:"):
            assert new.read_bytes() == old.read_bytes(), f["id"]
        else:  # piper runs float ONNX kernels that may differ by CPU; its noise is off, so lengths agree
            assert abs(f["duration"] - s["duration"]) < 0.05 * s["duration"], f["id"]
