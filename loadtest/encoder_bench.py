"""The encoder graph's variants side by side: FP32 vs INT8 weights, speed on one thread and accuracy.

For each held-out manifest the same clips go through both ONNX encoders (one ONNX Runtime thread, the
served setting) and the checkpoint's ctc_lm search; the table gives ms of encoder per audio second,
WER and CER, and how many transcripts INT8 changed. What `build --int8` trades, on real clips.

    python -m mambaserve.loadtest.encoder_bench --repository model_repository \
        --manifest data/corpus/test_espeak.jsonl --manifest data/corpus/test_piper.jsonl --limit 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf
import torch
from mambaserve.build.export.encoder import quantize_int8
from mambaserve.contract import spec
from mambaserve.model.recognizer import Recognizer
from mambaserve.model.scoring import score
from tqdm import tqdm


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _items(manifest: Path, limit: int | None) -> list[dict]:
    items = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for it in items:
        audio = Path(it["audio"])
        it["audio"] = str(audio if audio.is_absolute() else manifest.parent / audio)
    return items[:limit] if limit else items


def bench(repository: Path, manifests: Sequence[Path], limit: int | None) -> list[dict]:
    """One row per (manifest, variant): ms per audio second, WER, CER, changed transcripts."""
    torch.set_num_threads(1)
    checkpoint = repository / spec.DECODER / "1" / "checkpoint"
    rec = Recognizer(repository / spec.STREAMING_ENCODER / "1" / "checkpoint")  # features
    search = Recognizer(checkpoint).lexicon_search
    tmp = Path(tempfile.mkdtemp(prefix="encoder-bench-"))
    try:
        fp32 = repository / spec.ENCODER / "1" / "model.onnx"
        int8 = tmp / "model.onnx"
        shutil.copyfile(fp32, int8)
        quantize_int8(int8, rec.config.features.n_mels)
        variants = {"fp32": _session(fp32), "int8": _session(int8)}
        rows = []
        for manifest in manifests:
            items = _items(manifest, limit)
            texts: dict[str, list[str]] = {k: [] for k in variants}
            seconds = {k: 0.0 for k in variants}
            audio_s = 0.0
            for it in tqdm(items, desc=manifest.stem, leave=False):
                audio = sf.read(it["audio"], dtype="float32")[0]
                audio_s += len(audio) / spec.SAMPLE_RATE
                feats, lengths = rec.features([audio])
                inputs = {"FEATURES": feats.numpy(), "FEATURE_LENGTHS": lengths.numpy().reshape(-1, 1)}
                for name, session in variants.items():
                    t0 = time.perf_counter()
                    out = session.run(None, inputs)
                    seconds[name] += time.perf_counter() - t0
                    n = int(out[3].reshape(-1)[0])
                    texts[name].append(search.decode(out[2][0, :n]))
            refs = [it["text"] for it in items]
            for name in variants:
                s = score(refs, texts[name])
                rows.append(
                    {
                        "set": manifest.stem,
                        "items": len(items),
                        "variant": name,
                        "ms_per_audio_s": round(1000 * seconds[name] / audio_s, 2),
                        "wer": round(s.wer, 4),
                        "cer": round(s.cer, 4),
                        "changed": sum(a != b for a, b in zip(texts["fp32"], texts[name])),
                    }
                )
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--manifest", type=Path, action="append", required=True)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    rows = bench(args.repository, args.manifest, args.limit)
    print("| set | items | encoder | ms per audio s (1 thread) | WER | CER | transcripts changed vs FP32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['set']} | {r['items']} | {r['variant']} | {r['ms_per_audio_s']} | {100 * r['wer']:.1f} % "
            f"| {100 * r['cer']:.1f} % | {r['changed']} |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
