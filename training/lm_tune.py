"""Choose the ctc_lm search settings on dev, then report every test set with them: one table.

The CTC log-probabilities of each manifest are computed once (the encoder is the slow part) and every
setting of the sweep re-runs only the compiled search, so a grid of dozens of settings costs minutes.
Settings are chosen on `dev` alone (its prompted items for the hotword bonus); the test sets are
scored once, with the chosen settings, and never used to choose.

    python -m mambaserve.training.lm_tune --checkpoint DIR --corpus data/corpus [--write]

`--write` stores the chosen settings in DIR/config.json, and makes ctc_lm the default decoding method
if its dev WER is no worse than the checkpoint's default method's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from mambaserve.model.ctc import ctc_greedy
from mambaserve.model.lexicon_search import parse_hotwords
from mambaserve.model.recognizer import CTC_LM, Recognizer
from mambaserve.model.scoring import score
from tqdm import tqdm

from .evaluate import item_distractors, prompt_metrics
from .manifest import read_manifest

TEST_SETS = ("test_espeak", "test_piper", "test_diphone", "heldout_voices", "test_hotwords")
GRID = {"lm_weight": (0.5, 1.0, 1.5, 2.0, 3.0), "word_score": (-1.0, 0.0, 1.0, 2.0, 3.0)}
HOT_GRID = {"hotword_lookahead": (0.0, 3.0, 6.0, 10.0, 15.0)}


def ctc_outputs(rec: Recognizer, items: list[dict[str, Any]], batch: int = 16) -> list[np.ndarray]:
    """Each item's CTC log-probabilities `[T', vocab]` (float32)."""
    out: list[np.ndarray] = []
    for i in tqdm(range(0, len(items), batch), desc="encoder", leave=False):
        clips = [sf.read(it["audio"], dtype="float32")[0] for it in items[i : i + batch]]
        with torch.no_grad():
            enc = rec.encode(*rec.features(clips))
        lp = enc.ctc_logprobs.float().cpu().numpy()
        out += [lp[j, : int(n)] for j, n in enumerate(enc.ctc_lengths.tolist())]
    return out


def run(
    rec: Recognizer, logprobs: list[np.ndarray], items: list[dict[str, Any]], prompts: bool, **cfg: Any
) -> dict[str, Any]:
    """WER/CER (+ prompt metrics when `prompts`) of ctc_lm with settings `cfg` on cached log-probs."""
    search = rec.lexicon_search
    search.configure(rec.lexicon_config(**cfg))
    hot = [parse_hotwords(it.get("prompt") or "") if prompts else [] for it in items]
    t0 = time.perf_counter()
    hyps = search.decode_batch(logprobs, hot)
    wall = time.perf_counter() - t0
    refs = [it["text"] for it in items]
    s = score(refs, hyps)
    result = {"wer": s.wer, "cer": s.cer, "search_ms_per_item": 1000 * wall / max(1, len(items))}
    if any(it.get("hotwords") for it in items):
        result["prompt"] = prompt_metrics(
            refs, hyps, [it.get("hotwords") or [] for it in items], [item_distractors(it) for it in items]
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--write", action="store_true", help="store the chosen settings in config.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rec = Recognizer(args.checkpoint)
    if CTC_LM not in rec.methods:
        raise SystemExit(
            f"{args.checkpoint} has no lm.arpa.gz + lexicon.txt: python -m mambaserve.training.ngram"
        )
    dev = read_manifest(args.corpus / "dev.jsonl")
    dev_lp = ctc_outputs(rec, dev)
    plain = [it for it in dev if not it.get("hotwords")]
    plain_lp = [lp for lp, it in zip(dev_lp, dev) if not it.get("hotwords")]
    rows = []
    for lw, ws in itertools.product(GRID["lm_weight"], GRID["word_score"]):
        r = run(rec, plain_lp, plain, False, lm_weight=lw, word_score=ws)
        rows.append({"lm_weight": lw, "word_score": ws, **r})
        print(
            f"dev lm_weight {lw:4.1f} word_score {ws:4.1f}: WER {r['wer']:.3f} CER {r['cer']:.3f}", flush=True
        )
    best = min(rows, key=lambda r: (r["wer"], r["cer"]))
    chosen = {"lm_weight": best["lm_weight"], "word_score": best["word_score"]}
    hot_items = [it for it in dev if it.get("hotwords")]
    hot_lp = [lp for lp, it in zip(dev_lp, dev) if it.get("hotwords")]
    hot_rows = []
    for la in HOT_GRID["hotword_lookahead"]:
        r = run(rec, hot_lp, hot_items, True, **chosen, hotword_lookahead=la)
        p = r["prompt"]
        hot_rows.append({"hotword_lookahead": la, **r})
        print(
            f"dev hotwords lookahead {la:4.1f}: recall {p['name_recall']:.3f} "
            f"distractors {p['distractor_insertion_rate']:.3f} WER {r['wer']:.3f}",
            flush=True,
        )
    # the most recall whose distractor insertions stay within 5 %
    ok = [r for r in hot_rows if (r["prompt"]["distractor_insertion_rate"] or 0) <= 0.05] or hot_rows
    chosen["hotword_lookahead"] = max(ok, key=lambda r: r["prompt"]["name_recall"] or 0)["hotword_lookahead"]
    print(f"chosen on dev: {chosen}")

    report: dict[str, Any] = {"chosen": chosen, "dev_grid": rows, "dev_hotword_grid": hot_rows, "test": {}}
    for name in TEST_SETS:
        path = args.corpus / f"{name}.jsonl"
        if not path.exists():
            continue
        items = read_manifest(path)
        lp = ctc_outputs(rec, items)
        greedy = score(
            [it["text"] for it in items],
            [
                rec.tokenizer.decode(ctc_greedy(torch.from_numpy(x)[None], [len(x)], rec.config.blank_id)[0])
                for x in lp
            ],
        )
        res = {"ctc_greedy": {"wer": greedy.wer, "cer": greedy.cer}}
        res["ctc_lm"] = run(rec, lp, items, False, **chosen)
        if any(it.get("hotwords") for it in items):
            res["ctc_lm_prompt"] = run(rec, lp, items, True, **chosen)
        report["test"][name] = res
        print(f"{name}: {json.dumps(res)}", flush=True)
    out = args.corpus / "lm_tune.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    if args.write:
        cfg_path = args.checkpoint / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["decoding"].update(chosen)
        default = cfg["decoding"]["method"]
        if default != CTC_LM:  # ctc_lm becomes the default only if it beats it on dev
            clips = [sf.read(it["audio"], dtype="float32")[0] for it in plain]
            hyps = [h for i in range(0, len(clips), 16) for h in rec.transcribe(clips[i : i + 16])]
            base = score([it["text"] for it in plain], hyps)
            print(f"dev, checkpoint default ({default}): WER {base.wer:.3f}; ctc_lm: {best['wer']:.3f}")
            if best["wer"] <= base.wer:
                cfg["decoding"]["method"] = CTC_LM
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"wrote the chosen settings into {cfg_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
