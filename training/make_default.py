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
TEST_SETS = ("test_espeak", "test_piper", "test_hotwords")


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
        "cores, on synthetic speech only. It is the checkpoint `make demo` serves; it is a reference for",
        "the pipeline, not a general-purpose recogniser: expect it to fail on real microphones and accents.",
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
        "Synthesised offline (`mambaserve.training.corpus`): natural English sentences mined from the",
        "Python standard library's docstrings (filtered to common words) plus sentences carrying invented",
        "rare words for prompt biasing; voices from espeak-ng (8 English voices × variants, varied speed and",
        "pitch) and the neural piper voice `en_US-joe-medium`. Held-out sets use sentences, voice settings",
        "and rare words never seen in training.",
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
        f"`beam`: beam search (size {dec['beam_size']}) over the decoder with joint CTC prefix scores (weight",
        f"{dec['ctc_weight']}); `greedy`: the decoder alone; `ctc_greedy`: the encoder's CTC head alone (it ignores",
        f"the prompt). The served default (`config.json` → `decoding`) is `{dec['method']}`.",
        "",
        "| set | system | WER | CER | rare-word error (with prompt / without) |",
        "|---|---|---|---|---|",
    ]
    for name, res in report["results"].items():
        for method in ("greedy", "beam", "ctc_greedy"):
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
    lines += [
        "",
        "Targets of the project (benchmarks, not tests): espeak CER ≤ 5 % and WER ≤ 15 %; piper CER ≤ 10 %.",
        "Numbers above are what the recorded run reached, produced by",
        "`python -m mambaserve.training.evaluate --checkpoint checkpoints/default --manifest data/corpus/<set>.jsonl`.",
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
        report["results"][name] = evaluate(str(out), str(corpus / f"{name}.jsonl"), progress=True)
        print(name, json.dumps({m: report["results"][name][m] for m in ("greedy", "beam", "ctc_greedy")}))
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
        data = build_corpus(corpus)
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
        results[name] = evaluate(str(final), str(corpus / f"{name}.jsonl"), progress=True)
        print(name, json.dumps({m: results[name][m] for m in ("greedy", "beam", "ctc_lm", "ctc_greedy")}))
    timings["evaluation"] = time.perf_counter() - t0

    t0 = _stage("pocketsphinx baseline")
    baseline = {}
    for name in ("test_espeak", "test_piper"):
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
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(final, out)
    card = write_model_card(out, report)
    print(f"\ncheckpoint: {out}\nmodel card: {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
