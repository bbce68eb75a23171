"""The demo's sample clips: five short held-out utterances with reference text, shipped in the repo.

    python -m mambaserve.training.samples [--out clients/samples]

Three espeak voices and two piper clips, all with held-out voice settings and test sentences (one
contains a word never seen in training; one carries a prompt with held-out rare words). Piper uses
noise scales of 0, and sox runs without dither, so a rerun writes identical files.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .hotwords import make_prompt
from .manifest import write_manifest
from .synth import EspeakVoice, PiperSetting, piper_synth, synth_espeak

__all__ = ["DEFAULT_OUT", "main", "make_samples"]

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "clients" / "samples"

# Every setting here is held out of training (checked in `make_samples`).
_ESPEAK = (
    EspeakVoice("en-us", "f5", 150, 50),
    EspeakVoice("en-gb-scotland", "klatt", 170, 40),
    EspeakVoice("en-gb", "m5", 150, 50),
)
_PIPER = (PiperSetting(1.05, 0.0, 0.0, 0.75), PiperSetting(0.95, 0.0, 0.0, 0.65))


# Test-pool sentences (seed 0), written out so that the clips do not change when the stdlib (and
# so the mined pool) changes; the first has a word held out of training ("intact").
_SENTENCES = (
    "a failed reload should leave the original module intact",
    "we will meet at the airport on sunday",
    "query and change the horizontal position of the view",
    "converts a number to a string using scientific notation",
)
# Invented words from the held-out hotword pool: never in any training text or prompt.
_RARE = ("aemouzix", "bakviora", "bamymus")


def make_samples(out_dir: str | Path = DEFAULT_OUT) -> list[dict[str, Any]]:
    """Write the clips and `samples.jsonl` into `out_dir`; returns the manifest items."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for v in (*_ESPEAK, *_PIPER):
        if not v.heldout:
            raise RuntimeError(f"make_samples: {v.name} is a training voice setting")
    sentences, rare = _SENTENCES, _RARE
    hot_text = f"please send the report to {rare[0]} before friday"
    prompt = make_prompt(random.Random("samples"), [rare[0]], rare[1:], (2, 2))
    specs = [
        ("sample-01-espeak", sentences[0], _ESPEAK[0], "", []),
        ("sample-02-espeak", sentences[1], _ESPEAK[1], "", []),
        ("sample-03-espeak-prompt", hot_text, _ESPEAK[2], prompt, [rare[0]]),
        ("sample-04-piper", sentences[2], _PIPER[0], "", []),
        ("sample-05-piper", sentences[3], _PIPER[1], "", []),
    ]
    items = []
    for item_id, text, voice, prompt_text, hotwords in specs:
        path = out_dir / f"{item_id}.wav"
        if isinstance(voice, EspeakVoice):
            duration = synth_espeak(text, voice, path)
        else:
            duration = piper_synth().synth(text, voice, path)
        item: dict[str, Any] = {"id": item_id, "audio": str(path), "text": text, "duration": duration}
        if prompt_text:
            item["prompt"] = prompt_text
            item["hotwords"] = hotwords
        item["voice"] = voice.name
        items.append(item)
    write_manifest(out_dir / "samples.jsonl", items)
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the demo sample clips.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    items = make_samples(args.out)
    total = sum((args.out / f"{it['id']}.wav").stat().st_size for it in items)
    for it in items:
        print(
            f"{it['id']}: {it['duration']:.2f} s  {it['voice']}  {it['text']!r}"
            + (f"  prompt={it['prompt']!r}" if it.get("prompt") else "")
        )
    print(f"{len(items)} clips, {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
