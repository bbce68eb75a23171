"""Evaluate a checkpoint on a manifest: WER/CER (jiwer, normalised text) of each decoding method.

    python -m mambaserve.training.evaluate --checkpoint checkpoints/default --manifest data/corpus/test_espeak.jsonl

The last line printed is one JSON object: ``n``, ``method``, ``wer``, ``cer`` and ``rtfx`` of the
checkpoint's default decoding method, plus a block per method (the methods the Recognizer and the
checkpoint's config list, and ``ctc_greedy`` from the CTC head alone), each with ``wer``, ``cer``,
``rtfx``. On a manifest with prompts and hotwords (test_hotwords) each prompt-taking method's block
also has the PROMPT metrics (`prompt_metrics`): ``name_recall`` with the prompt,
``name_recall_without_prompt``, ``distractor_insertion_rate`` (and ``..._without_prompt``), the
counts behind them in ``prompt_counts``, and the rare-word error rates; the default method's are
copied to the top level.

The side-by-side comparison with pocketsphinx and Whisper on every test set is `accuracy.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import jiwer
import torch
from mambaserve.model import recognizer as recognizer_module
from mambaserve.model.ctc import ctc_greedy
from mambaserve.model.recognizer import Recognizer
from mambaserve.model.scoring import score
from mambaserve.model.text_norm import normalize_text
from mambaserve.training.dataset import load_audio
from mambaserve.training.hotwords import parse_prompt, rare_word_counts, rare_word_error_rate
from mambaserve.training.manifest import load_manifest
from tqdm import tqdm

__all__ = [
    "CTC_GREEDY",
    "PROMPT_KEYS",
    "decoding_methods",
    "evaluate",
    "item_distractors",
    "main",
    "prompt_metrics",
    "transcribe_manifest",
    "word_errors",
]

CTC_GREEDY = "ctc_greedy"  # best path of the CTC head alone, computed here when the Recognizer lacks it
# Copied from the default method's block to the top level of the result.
PROMPT_KEYS = (
    "name_recall",
    "name_recall_without_prompt",
    "distractor_insertion_rate",
    "distractor_insertion_rate_without_prompt",
)


def decoding_methods(recognizer: Any) -> tuple[str, ...]:
    """Every decoding method to evaluate: those the checkpoint's config and the Recognizer list, the
    config's default, and ``ctc_greedy``."""
    listed: list[str] = []
    for source in (
        getattr(recognizer.config.decoding, "methods", None),
        getattr(recognizer, "methods", None),
        getattr(recognizer_module, "METHODS", None),
    ):
        if source and not callable(source) and not isinstance(source, str):
            listed += [str(m) for m in source]
    listed += [recognizer.config.decoding.method, CTC_GREEDY]
    return tuple(dict.fromkeys(listed))


def transcribe_manifest(
    recognizer: Any,
    items: Sequence[dict[str, Any]],
    method: str | None,
    use_prompts: bool,
    batch_size: int,
    progress: bool = True,
    ctc_weight: float | None = None,
    audio: Sequence[Any] | None = None,
) -> tuple[list[str], float]:
    """Hypotheses for every item and the wall time spent (features + encoder + decoding).

    ``method=None`` is the checkpoint's default. `audio`: the items' samples, already loaded (else
    read here, outside the timed part)."""
    hyps: list[str] = []
    wall = 0.0
    own_ctc_greedy = method == CTC_GREEDY and CTC_GREEDY not in _listed(recognizer)
    kwargs = {} if ctc_weight is None else {"ctc_weight": ctc_weight}
    for start in tqdm(
        range(0, len(items), batch_size), desc=method or "default", disable=not progress, leave=False
    ):
        batch = items[start : start + batch_size]
        clips = list(audio[start : start + batch_size]) if audio is not None else None
        clips = clips or [load_audio(it["audio"]) for it in batch]
        prompts = [(it.get("prompt") or None) if use_prompts else None for it in batch]
        t0 = time.perf_counter()
        if own_ctc_greedy:
            feats, lengths = recognizer.features(clips)
            enc = recognizer.encode(feats, lengths)
            hyps += [
                recognizer.tokenizer.decode(ids) for ids in ctc_greedy(enc.ctc_logprobs, enc.ctc_lengths)
            ]
        else:
            hyps += recognizer.transcribe(clips, prompts, method=method, **kwargs)
        wall += time.perf_counter() - t0
    return hyps, wall


def _listed(recognizer: Any) -> tuple[str, ...]:
    """Methods the Recognizer itself decodes (the config's and its own lists, not evaluate's)."""
    return decoding_methods(recognizer)[:-1]


def item_distractors(item: dict[str, Any]) -> list[str]:
    """The item's distractor names: its ``distractors`` field, else the prompt's names that are not
    among its ``hotwords``."""
    if item.get("distractors") is not None:
        return list(item["distractors"])
    true = {normalize_text(h) for h in item.get("hotwords") or []}
    return [w for w in parse_prompt(item.get("prompt") or "") if w not in true]


def _count(words: list[str], phrase: tuple[str, ...]) -> int:
    k = len(phrase)
    return sum(tuple(words[i : i + k]) == phrase for i in range(len(words) - k + 1))


def prompt_metrics(
    refs: Sequence[str],
    hyps: Sequence[str],
    hotwords_per_item: Sequence[Sequence[str]],
    distractors_per_item: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """Name recall and distractor insertions, on normalised text (case and punctuation do not count).

    * ``name_recall``: of the true names' occurrences in the references (a name said twice counts
      twice), the fraction that the hypothesis gets right at its place in the WER alignment
      (`hotwords.rare_word_counts`).
    * ``distractor_insertion_rate``: of the (item, distractor) pairs offered in prompts, the fraction
      whose distractor name the hypothesis contains (more often than the reference does: normally
      it is not said at all). ``distractor_insertions`` counts the inserted occurrences.

    Rates are None where there is nothing to count."""
    if not len(refs) == len(hyps) == len(hotwords_per_item) == len(distractors_per_item):
        raise ValueError("prompt_metrics: refs, hyps, hotwords and distractors must have the same length")
    missed, names = rare_word_counts(refs, hyps, hotwords_per_item)
    offered = inserted_pairs = insertions = 0
    for ref, hyp, distractors in zip(refs, hyps, distractors_per_item):
        ref_words, hyp_words = normalize_text(ref).split(), normalize_text(hyp).split()
        for phrase in dict.fromkeys(tuple(normalize_text(d).split()) for d in distractors):
            if not phrase:
                continue
            offered += 1
            extra = max(0, _count(hyp_words, phrase) - _count(ref_words, phrase))
            insertions += extra
            inserted_pairs += extra > 0
    return {
        "names": names,
        "names_recognised": names - missed,
        "name_recall": (names - missed) / names if names else None,
        "distractors_offered": offered,
        "distractors_inserted": inserted_pairs,
        "distractor_insertions": insertions,
        "distractor_insertion_rate": inserted_pairs / offered if offered else None,
    }


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions + deletions + insertions between the normalised texts."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref or not hyp:
        return len(ref.split()) + len(hyp.split())
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions


def evaluate(
    checkpoint: str,
    manifest: str,
    methods: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    threads: int = 0,
    progress: bool = True,
    ctc_weight: float | None = None,
) -> dict[str, Any]:
    """The result object the CLI prints (module docstring). `methods`: None = `decoding_methods`;
    "default" names the checkpoint's default method."""
    if threads:
        torch.set_num_threads(threads)
    recognizer = Recognizer(checkpoint)
    available = decoding_methods(recognizer)
    default = recognizer.config.decoding.method
    methods = tuple(default if m == "default" else m for m in methods) if methods else available
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise ValueError(f"evaluate: unknown decoding method(s) {unknown}; this checkpoint has {available}")
    items, _ = load_manifest(manifest)
    items = items[:limit] if limit else items
    if not items:
        raise ValueError(f"evaluate: {manifest} has no usable items")
    audio = [load_audio(it["audio"]) for it in items]
    refs = [it["text"] for it in items]
    audio_seconds = sum(float(it["duration"]) for it in items)
    has_prompts = any(it.get("prompt") for it in items)
    hotwords = [it.get("hotwords") or [] for it in items]
    distractors = [item_distractors(it) for it in items]
    result: dict[str, Any] = {"n": len(items), "manifest": manifest, "audio_seconds": round(audio_seconds, 2)}
    for method in methods:
        hyps, wall = transcribe_manifest(
            recognizer, items, method, True, batch_size, progress, ctc_weight, audio
        )
        block: dict[str, Any] = score(refs, hyps)._asdict()
        block["rtfx"] = audio_seconds / wall if wall else 0.0
        if any(hotwords):
            block["rare_word_error_rate"] = rare_word_error_rate(refs, hyps, hotwords)
        takes_prompt = method != CTC_GREEDY or CTC_GREEDY in _listed(recognizer)
        if has_prompts and takes_prompt and (any(hotwords) or any(distractors)):
            no_prompt, _ = transcribe_manifest(
                recognizer, items, method, False, batch_size, progress, ctc_weight, audio
            )
            with_p = prompt_metrics(refs, hyps, hotwords, distractors)
            without_p = prompt_metrics(refs, no_prompt, hotwords, distractors)
            block["without_prompt"] = score(refs, no_prompt)._asdict()
            if any(hotwords):
                block["rare_word_error_rate_without_prompt"] = rare_word_error_rate(refs, no_prompt, hotwords)
            block.update(
                name_recall=with_p["name_recall"],
                name_recall_without_prompt=without_p["name_recall"],
                distractor_insertion_rate=with_p["distractor_insertion_rate"],
                distractor_insertion_rate_without_prompt=without_p["distractor_insertion_rate"],
                prompt_counts={"with_prompt": with_p, "without_prompt": without_p},
            )
        result[method] = block
    chosen_method = default if default in result else methods[0]
    chosen = result[chosen_method]
    result.update(method=chosen_method, wer=chosen["wer"], cer=chosen["cer"], rtfx=chosen["rtfx"])
    result.update({k: chosen[k] for k in PROMPT_KEYS if k in chosen})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument(
        "--method",
        default="all",
        help="a decoding method the checkpoint has, 'default' (the checkpoint's), or 'all' (default)",
    )
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--ctc-weight", type=float, help="joint CTC weight for beam search (default: checkpoint's)"
    )
    args = parser.parse_args(argv)
    methods = None if args.method == "all" else (args.method,)
    try:
        result = evaluate(
            args.checkpoint,
            args.manifest,
            methods,
            args.limit,
            args.batch_size,
            args.threads,
            ctc_weight=args.ctc_weight,
        )
    except ValueError as e:
        parser.error(str(e))
    for method in [k for k, v in result.items() if isinstance(v, dict) and "rtfx" in v]:
        block = result[method]
        line = f"{method:>11}: WER {100 * block['wer']:.2f}%  CER {100 * block['cer']:.2f}%  RTFx {block['rtfx']:.1f}"
        if block.get("name_recall") is not None or "name_recall_without_prompt" in block:
            line += "  names " + "  ".join(
                f"{k.replace('_', ' ')} {'–' if block.get(k) is None else f'{100 * block[k]:.1f}%'}"
                for k in PROMPT_KEYS
            )
        print(line)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
