"""Reproduce the default checkpoint end to end (``make train``): data, training, evaluation, model card.

    python -m mambaserve.training.make_default --out checkpoints/default

Stages (each timed and reported in the model card): synthesise the corpus (skipped when
``data/corpus/summary.json`` already describes the same plan), train with
``training/configs/default.yaml``, evaluate the averaged checkpoint on the held-out espeak, piper and
hotword sets, run pocketsphinx on the same espeak and piper sets for comparison, then copy the
checkpoint and its ``MODEL_CARD.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

CONFIG = Path(str(resources.files("mambaserve.training") / "configs" / "default.yaml"))
TEST_SETS = ("test_espeak", "test_piper", "test_diphone", "heldout_voices", "test_hotwords")
BASELINE_SETS = ("test_espeak", "test_piper", "heldout_voices")
METHODS = ("ctc_lm", "ctc_greedy", "beam", "greedy")
"""Evaluated on every test set: the served default (ctc_lm) and what it is compared with."""


def _stage(name: str) -> float:
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def _pocketsphinx(manifest: Path, limit: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mambaserve.training.baselines", "--manifest", str(manifest)]
    if limit:
        cmd += ["--limit", str(limit)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def write_model_card(out: Path, report: dict[str, Any]) -> Path:
    """MODEL_CARD.md: data, parameters, training time, and held-out WER/CER beside pocketsphinx."""
    params = report["parameters"]
    dec = report["config"]["model"]["decoding"]
    lines = [
        "# mambaserve default checkpoint",
        "",
        "A small speech Mamba model (audio + optional text prompt → text) trained from scratch on 2 CPU",
        "cores, on synthetic speech only (many synthetic voices with speaker and channel augmentation). It is",
        "the checkpoint `make demo` serves; it is a reference for the pipeline, not a general-purpose",
        "recogniser: expect it to fail on real microphones and accents (benchmarks/ACCURACY.md measures it",
        "beside pocketsphinx and Whisper tiny.en, real human speech included).",
        "",
        "## Reproduce",
        "",
        "```bash",
        "make train   # python -m mambaserve.training.make_default --out checkpoints/default",
        "```",
        "",
        f"Recorded run: {report['date']} on {report['machine']}; commit `{report['commit']}`.",
        "",
        "| stage | minutes |",
        "|---|---|",
        *[f"| {k} | {v / 60:.1f} |" for k, v in report["timings"].items()],
        "",
        "## Data",
        "",
        "Synthesised offline (`mambaserve.training.corpus`, details in training/README.md): English sentences",
        "from the standard library's docstrings, Debian's fortunes and packaged prose (common words only), plus",
        "template sentences and invented names for prompts; voices from espeak-ng (8 English voices × 17",
        "variants), MBROLA diphone voices through espeak-ng (us1, us2, en1 and 16 accented), SVOX Pico en-US",
        "and the neural piper voice `en_US-joe-medium`, 80 % of training items with speaker / channel effects",
        "(formant warp, pitch, tempo, reverb, band limits, codecs, noise). Test sets use sentences, voice",
        "settings and names never seen in training; `heldout_voices` uses two voices never trained on",
        "(MBROLA us3, Pico en-GB). The CMU voices and Debian's package descriptions are reserved for",
        "evaluation and never used here.",
        "",
        "| split | items | hours |",
        "|---|---|---|",
        *[f"| {k} | {v['items']} | {v['hours']:.2f} |" for k, v in report["data"]["splits"].items()],
        "",
        "## Model",
        "",
        f"{params['total'] / 1e6:.2f} M parameters: log-mel (80 bins, 25/10 ms) → causal Mamba encoder",
        f"({params['encoder'] / 1e6:.2f} M; 4× frame stacking, CTC head) → stride-2 bridge → Mamba decoder",
        f"({params['decoder'] / 1e6:.2f} M) over `[audio prefix][prompt][BOS]`. Config: `config.json`.",
        "",
        "## Results on held-out sets",
        "",
        "`ctc_lm`: CTC beam search (flashlight-text) with the word lexicon, the trigram LM of the training",
        f"text (weight {dec.get('lm_weight')}) and PROMPT hotword biasing; `beam`: beam search (size",
        f"{dec['beam_size']}) over the Mamba decoder with joint CTC prefix scores (weight {dec['ctc_weight']});",
        "`greedy`: the decoder alone; `ctc_greedy`: the encoder's CTC head alone (it ignores the prompt).",
        f"The served default (`config.json` → `decoding`) is `{dec['method']}`. Items per set: the number",
        "in brackets (the first N of each manifest).",
        "",
        "| set | system | WER | CER | rare-word error (with prompt / without) |",
        "|---|---|---|---|---|",
    ]
    for name, res in report["results"].items():
        for method in METHODS:
            if method not in res:
                continue
            b = res[method]
            rare = ""
            if "rare_word_error_rate" in b:
                rare = _pct(b["rare_word_error_rate"])
                if "rare_word_error_rate_without_prompt" in b:
                    rare += f" / {_pct(b['rare_word_error_rate_without_prompt'])}"
            lines.append(
                f"| {name} ({res['n']}) | mambaserve {method} | {_pct(b['wer'])} | {_pct(b['cer'])} | {rare} |"
            )
        if name in report["pocketsphinx"]:
            p = report["pocketsphinx"][name]
            lines.append(
                f"| {name} ({p['n']}) | pocketsphinx en-us | {_pct(p['wer'])} | {_pct(p['cer'])} | |"
            )
    hot = report["results"].get("test_hotwords", {}).get(dec["method"], {})
    if "name_recall" in hot:
        lines += [
            "",
            f"PROMPT on test_hotwords ({dec['method']}): name recall {_pct(hot['name_recall'])} with the prompt,",
            f"{_pct(hot.get('name_recall_without_prompt'))} without; distractor names inserted in",
            f"{_pct(hot.get('distractor_insertion_rate'))} of (clip, distractor) pairs.",
        ]
    lines += [
        "",
        "Goals (issue 10; benchmarks, not tests): espeak WER ≤ 8 % / CER ≤ 3 %, piper ≤ 10 / 4 %, voices never",
        "trained on ≤ 15 / 6 %, human speech CER ≤ 30 %, name recall ≥ 85 % with the prompt.",
        "Numbers above are what the recorded run reached, produced by",
        "`python -m mambaserve.training.evaluate --checkpoint checkpoints/default --manifest data/corpus/<set>.jsonl",
        "--limit N`.",
        "",
    ]
    if report.get("notes"):
        lines += ["## Notes on this run", "", *[f"- {n}" for n in report["notes"]], ""]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return path


def _reevaluate(out: Path, corpus: Path) -> int:
    """Evaluate ``out`` as it is now and refresh the results of its report and card (the rest is kept)."""
    from mambaserve.training.evaluate import evaluate

    report = json.loads((out / "training_report.json").read_text())
    report["config"]["model"]["decoding"] = json.loads((out / "config.json").read_text())["decoding"]
    t0 = time.perf_counter()
    for name in TEST_SETS:
        report["results"][name] = evaluate(
            str(out), str(corpus / f"{name}.jsonl"), methods=METHODS, progress=True
        )
        print(name, json.dumps({m: report["results"][name][m] for m in METHODS}))
    report["timings"]["evaluation"] = time.perf_counter() - t0
    print(f"model card: {write_model_card(out, report)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="checkpoints/default")
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--run", default="runs/default")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="training config override"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run's newest training checkpoint")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-run the evaluation of --out (e.g. after editing its decoding block) and rewrite its card",
    )
    parser.add_argument("--baseline-limit", type=int, default=None, help="items per set for pocketsphinx")
    parser.add_argument("--eval-limit", type=int, default=None, help="items per test set for mambaserve")
    parser.add_argument(
        "--n-train", type=int, default=30_000, help="training utterances when the corpus is made here"
    )
    parser.add_argument(
        "--eval-methods",
        nargs="+",
        default=list(METHODS),
        help="decoding methods evaluated on every test set (default: %(default)s; beam and greedy are slow)",
    )
    args = parser.parse_args(argv)

    import platform

    import torch
    from mambaserve.training.corpus import build_corpus
    from mambaserve.training.evaluate import evaluate
    from mambaserve.training.train import Trainer, load_config

    corpus, run, out = Path(args.corpus), Path(args.run), Path(args.out)
    if args.evaluate_only:
        return _reevaluate(out, corpus)
    timings: dict[str, float] = {}

    t0 = _stage("data")
    summary_path = corpus / "summary.json"
    if summary_path.exists() and all((corpus / f"{s}.jsonl").exists() for s in ("train", "dev", *TEST_SETS)):
        print(f"reusing {corpus} (delete it to regenerate)")
        data = json.loads(summary_path.read_text())
        timings["data synthesis (corpus reused)"] = time.perf_counter() - t0
    else:
        data = build_corpus(corpus, n_train=args.n_train)
        timings["data synthesis"] = time.perf_counter() - t0

    t0 = _stage("training")
    overrides = [
        f"train_manifest={corpus / 'train.jsonl'}",
        f"dev_manifest={corpus / 'dev.jsonl'}",
        f"out_dir={run}",
        *args.set,
    ]
    trainer = Trainer(load_config(args.config, overrides), resume=args.resume)
    final = trainer.fit()
    timings["training"] = trainer.schedule.elapsed  # counts earlier sessions of a resumed run too

    t0 = _stage("language model and search settings")
    from mambaserve.training.lm_tune import main as lm_tune
    from mambaserve.training.ngram import write_lm
    from mambaserve.training.text_corpus import sentence_splits

    print(write_lm(Path(final), list(sentence_splits().train)))
    lm_tune(["--checkpoint", str(final), "--corpus", str(corpus), "--write"])
    timings["language model and search settings"] = time.perf_counter() - t0

    t0 = _stage("evaluation")
    results = {}
    for name in TEST_SETS:
        results[name] = evaluate(
            str(final),
            str(corpus / f"{name}.jsonl"),
            methods=args.eval_methods,
            limit=args.eval_limit,
            progress=True,
        )
        print(name, json.dumps({m: results[name][m] for m in args.eval_methods}))
    timings["evaluation"] = time.perf_counter() - t0

    t0 = _stage("pocketsphinx baseline")
    baseline = {}
    for name in BASELINE_SETS:
        baseline[name] = _pocketsphinx(corpus / f"{name}.jsonl", args.baseline_limit)
        print(name, baseline[name])
    timings["pocketsphinx baseline"] = time.perf_counter() - t0

    model = trainer.model
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "timings": timings,
        "data": {"splits": data["splits"]},
        "parameters": {
            "total": sum(p.numel() for p in model.parameters()),
            "encoder": sum(p.numel() for p in model.encoder.parameters()),
            "decoder": sum(p.numel() for p in model.decoder.parameters()),
        },
        "results": results,
        "pocketsphinx": baseline,
        "config": trainer.config.to_dict(),
    }
    # lm_tune --write chose the served decoding: the card describes that, not the training config's.
    report["config"]["model"]["decoding"] = json.loads((Path(final) / "config.json").read_text())["decoding"]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(final, out)
    card = write_model_card(out, report)
    print(f"\ncheckpoint: {out}\nmodel card: {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
