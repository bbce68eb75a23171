"""Clips for the GPU check (``make gpu-check-clips``): espeak-ng audio, texts and the CPU path's transcripts.

Synthesis belongs to the training layer, so ``kernels/gpu_check.py --prepare-clips`` runs this module
rather than importing it; the file it writes is what the device run carries.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from mambaserve.contract.spec import SAMPLE_RATE
from mambaserve.kernels.gpu_check import (
    DEFAULT_CLIPS,
    REAL,
    ROOT,
    _now_iso,
    checkpoint_digest,
    env,
    error_rate,
    length_batches,
    project_parts,
)


def prepare_clips(path: Path, n_clips: int, max_words: int, batch_size: int, workers: int) -> None:
    import random
    import tempfile

    import numpy as np
    import soundfile as sf
    import torch
    from mambaserve.training.synth import sample_espeak_voice, synth_espeak_many
    from mambaserve.training.text_corpus import sentence_splits, stable_fraction

    parts = project_parts()
    t0 = time.perf_counter()
    pool = [s for s in sentence_splits().test if len(s.split()) <= max_words]
    pool.sort(key=lambda s: stable_fraction("gpu-check-clip", s))
    texts = pool[:n_clips]
    if len(texts) < n_clips:
        raise SystemExit(f"--prepare-clips: only {len(texts)} test sentences of <= {max_words} words")
    voices = [sample_espeak_voice(random.Random(f"gpu-check:{i}"), heldout=True) for i in range(n_clips)]
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(t, v, Path(tmp) / f"{i:04d}.wav") for i, (t, v) in enumerate(zip(texts, voices))]
        durations = synth_espeak_many(jobs, workers=workers)
        if any(x is None for x in durations):
            raise SystemExit("--prepare-clips: espeak-ng failed on some clips")
        audio16 = [sf.read(str(p), dtype="int16")[0] for _, _, p in jobs]
    print(
        f"synthesised {n_clips} clips ({sum(durations):.1f} s of audio) in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    ckpt_dir = ROOT / "checkpoints" / "default"
    with env(MAMBASERVE_KERNELS_BACKEND="torch"):
        rec = parts.Recognizer(ckpt_dir, device="cpu")
        cpu = [""] * n_clips
        t1 = time.perf_counter()
        for batch in length_batches([len(a) for a in audio16], batch_size):
            for i, text in zip(
                batch, rec.transcribe([audio16[i].astype(np.float32) / 32768.0 for i in batch])
            ):
                cpu[i] = text
        cpu_s = time.perf_counter() - t1
    seconds = sum(len(a) for a in audio16) / SAMPLE_RATE
    meta = {
        "made": _now_iso(),
        "checkpoint_digest": checkpoint_digest(ckpt_dir),
        "batch_size": batch_size,
        "torch": torch.__version__,
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "cpu_rtfx": round(seconds / cpu_s, 1),
        "voices": [v.name for v in voices],
        "recognizer": parts.where["Recognizer"],
        "cpu_wer_vs_text": round(error_rate(cpu, texts, True), 4),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0, *[len(a) for a in audio16]]).astype(np.int64)
    tmp_path = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp_path,
        audio=np.concatenate(audio16).astype(np.int16),
        offsets=offsets,
        texts=np.array(texts),
        cpu_transcripts=np.array(cpu),
        meta=np.array(json.dumps(meta)),
    )
    tmp_path.replace(path)
    print(f"CPU transcripts: RTFx {meta['cpu_rtfx']} ({cpu_s:.1f} s), WER vs text {meta['cpu_wer_vs_text']}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {n_clips} clips, {seconds:.1f} s of audio)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--n-clips", type=int, default=256)
    parser.add_argument("--max-words", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=REAL.rec_batch)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    prepare_clips(args.clips, args.n_clips, args.max_words, args.batch_size, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
