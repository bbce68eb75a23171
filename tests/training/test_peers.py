"""training/peers.py: the real pocketsphinx and the real Whisper tiny.en each transcribe one clip with
a known sentence reasonably (a loose CER bound, not an exact string), through the one interface."""

from __future__ import annotations

import json

import helpers
import pytest
from mambaserve.training import baselines
from mambaserve.training.dataset import load_audio
from mambaserve.training.manifest import load_manifest
from mambaserve.training.peers import PEERS, Pocketsphinx, WhisperTinyEn, evaluate_peer, make_peer

SAMPLES = helpers.ROOT / "clients" / "samples" / "samples.jsonl"
CLIP = "sample-05-piper"  # piper joe: "converts a number to a string using scientific notation"


@pytest.fixture(scope="module")
def clip() -> list[dict]:
    items, _ = load_manifest(SAMPLES)
    return [it for it in items if it["id"] == CLIP]


@pytest.mark.parametrize(
    ("name", "max_cer"),
    [(Pocketsphinx.name, 0.35), (WhisperTinyEn.name, 0.15)],
)
def test_peer_transcribes_a_known_sentence(name: str, max_cer: float, clip: list[dict]) -> None:
    peer = make_peer(name)
    result = evaluate_peer(peer, clip)
    assert result["system"] == name and result["n"] == 1
    assert result["cer"] <= max_cer, result["hyps"]
    assert result["rtfx"] > 0 and result["audio_seconds"] == pytest.approx(clip[0]["duration"], abs=0.01)
    assert result["hyps"][0] == result["hyps"][0].lower().strip()  # normalised text
    if name == WhisperTinyEn.name:  # seeded: the same clip gives the same transcript again
        assert peer.transcribe(load_audio(clip[0]["audio"])) == result["hyps"][0]


def test_unknown_peer() -> None:
    assert set(PEERS) == {"pocketsphinx", "whisper-tiny.en"}
    with pytest.raises(ValueError, match="unknown peer"):
        make_peer("nope")


def test_baselines_cli_keeps_its_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    """make_default reads the last line of `python -m mambaserve.training.baselines`."""
    assert baselines.main(["--manifest", str(SAMPLES), "--limit", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["system"] == "pocketsphinx" and result["n"] == 1
    assert {"manifest", "wer", "cer", "rtfx"} <= set(result)
