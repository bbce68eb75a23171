"""WER and CER: the one scoring rule of every evaluation (training's dev scores, `make evaluate`, the
pocketsphinx baseline, `mambaserve-eval` through the server, the demo).

Corpus-level rates from jiwer on `normalize_text`-ed references and hypotheses (the rule training
targets follow): total word (character) errors over total reference words (characters). A reference
that normalises to nothing still counts: its hypothesis' words are insertions (jiwer's own rule), so
a recogniser that hallucinates speech into silence is charged for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jiwer
from mambaserve.model.text_norm import normalize_text

__all__ = ["Score", "score"]


class Score(NamedTuple):
    """Corpus WER and CER (fractions; ``wer, cer = score(...)`` unpacks them)."""

    wer: float
    cer: float


def score(references: Sequence[str], hypotheses: Sequence[str]) -> Score:
    """Corpus WER and CER after `normalize_text` on both sides.

    Raises ValueError unless there are as many hypotheses as references, at least one of each, and
    at least one reference with words (without reference words the rates are undefined).
    """
    if len(references) != len(hypotheses) or not references:
        raise ValueError(
            f"score needs equal, non-zero numbers of references and hypotheses, "
            f"got {len(references)} and {len(hypotheses)}"
        )
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    if not any(refs):
        raise ValueError(
            f"score: all {len(refs)} references are empty after normalisation (no words to score)"
        )
    return Score(float(jiwer.wer(refs, hyps)), float(jiwer.cer(refs, hyps)))
