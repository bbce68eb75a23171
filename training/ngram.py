"""A word n-gram language model in ARPA form, trained only on the training sentences.

Why our own writer: KenLM's `lmplz` ships in no package here (the `kenlm` wheel only queries), and
the decoder (flashlight-text with KenLM, `mambaserve.model.lexicon_search`) reads ARPA. This is
interpolated Kneser-Ney with one absolute discount per order (D = n1 / (n1 + 2 n2)), written in
backoff form: a seen n-gram carries its interpolated probability and a context carries its
interpolation weight as the backoff, which is exactly the interpolated model.

The unigram level is interpolated with a uniform distribution over a lexicon that may be wider than
the training text (the decoder's word list), so every word the decoder can spell has a probability.
Placeholder words (`hotword_slots`) get a fixed unigram probability: the decoder maps a request's
PROMPT hotwords onto them, which is how a hotword earns its bonus in compiled code.

    python -m mambaserve.training.ngram --out checkpoints/default [--order 3]
"""

from __future__ import annotations

import argparse
import gzip
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from mambaserve.model.lexicon_search import LEXICON_FILE, LM_FILE, UNK_WORD, hotword_slot

BOS, EOS, UNK = "<s>", "</s>", UNK_WORD


def _discount(counts: Counter) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0:
        return 0.5
    return max(0.05, min(0.95, n1 / (n1 + 2 * n2))) if n2 else 0.5


def build_arpa(
    sentences: Iterable[str],
    order: int = 3,
    lexicon: Iterable[str] = (),
    hotword_slots: int = 0,
    hotword_logprob: float = -4.0,
) -> str:
    """ARPA text of an interpolated Kneser-Ney model of `order` over whitespace-split `sentences`.

    `lexicon`: extra words that get only the uniform share of unigram mass. `hotword_slots`: that many
    placeholder words with log10 probability `hotword_logprob` each (taken out of the other unigrams).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    raw: list[Counter] = [Counter() for _ in range(order + 1)]  # raw[k][ngram tuple of length k]
    for sentence in sentences:
        words = [BOS, *sentence.split(), EOS]
        for k in range(1, order + 1):
            for i in range(len(words) - k + 1):
                raw[k][tuple(words[i : i + k])] += 1
    if not raw[1]:
        raise ValueError("build_arpa: no sentences")
    # Kneser-Ney: lower orders count distinct left extensions, except n-grams starting with <s>.
    counts: list[Counter] = [Counter() for _ in range(order + 1)]
    counts[order] = raw[order]
    for k in range(1, order):
        left = Counter(ng[1:] for ng in raw[k + 1])
        for ng, c in raw[k].items():
            counts[k][ng] = c if ng[0] == BOS else left.get(ng, 0)
        # an n-gram only ever seen after <s> at the start (no left extension) keeps its raw count
        for ng in raw[k]:
            if counts[k][ng] == 0:
                counts[k][ng] = raw[k][ng]
    vocab = {w for (w,) in counts[1]} | set(lexicon) | {UNK}
    vocab.discard(BOS)
    slots = [hotword_slot(i) for i in range(hotword_slots)]
    vocab -= set(slots)

    prob: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    gamma: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    # unigrams: discounted counts + uniform share over the whole vocabulary
    uni = {ng: c for ng, c in counts[1].items() if ng[0] != BOS}
    d1 = _discount(Counter(uni))
    total = sum(uni.values())
    uniform_mass = d1 * len(uni) / total
    slot_mass = hotword_slots * 10**hotword_logprob
    if slot_mass >= 0.5:
        raise ValueError("hotword slots would take half of the unigram mass: lower hotword_logprob")
    scale = 1.0 - slot_mass
    for w in vocab:
        p = max(uni.get((w,), 0) - d1, 0) / total + uniform_mass / len(vocab)
        prob[1][(w,)] = p * scale
    for s in slots:
        prob[1][(s,)] = 10**hotword_logprob
    # higher orders, interpolated with the order below
    for k in range(2, order + 1):
        d = _discount(counts[k])
        ctx_total: dict[tuple, int] = defaultdict(int)
        ctx_types: dict[tuple, int] = defaultdict(int)
        for ng, c in counts[k].items():
            ctx_total[ng[:-1]] += c
            ctx_types[ng[:-1]] += 1
        for ctx, tot in ctx_total.items():
            gamma[k - 1][ctx] = d * ctx_types[ctx] / tot
        for ng, c in counts[k].items():
            lower = _lower_prob(prob, gamma, ng[1:])
            prob[k][ng] = max(c - d, 0) / ctx_total[ng[:-1]] + gamma[k - 1][ng[:-1]] * lower
    return _arpa_text(prob, gamma, order)


def _lower_prob(prob: list[dict], gamma: list[dict], ng: tuple) -> float:
    """p(ng[-1] | ng[:-1]) in backoff form over the orders already computed."""
    k = len(ng)
    if ng in prob[k]:
        return prob[k][ng]
    if k == 1:
        return prob[1][(UNK,)]
    return gamma[k - 1].get(ng[:-1], 1.0) * _lower_prob(prob, gamma, ng[1:])


def _arpa_text(prob: list[dict], gamma: list[dict], order: int) -> str:
    lines = ["", "\\data\\"]
    n1 = len(prob[1]) + 1  # + <s>
    lines.append(f"ngram 1={n1}")
    lines += [f"ngram {k}={len(prob[k])}" for k in range(2, order + 1)]

    def bow(ng: tuple, k: int) -> str:
        if k < order and ng in gamma[k]:
            return f"\t{math.log10(max(gamma[k][ng], 1e-99)):.6f}"
        return ""

    for k in range(1, order + 1):
        lines += ["", f"\\{k}-grams:"]
        if k == 1:
            lines.append(f"-99\t{BOS}{bow((BOS,), 1)}")
        for ng in sorted(prob[k]):
            lines.append(f"{math.log10(max(prob[k][ng], 1e-99)):.6f}\t{' '.join(ng)}{bow(ng, k)}")
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def lexicon_words(sentences: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The decoder's word list: every training word plus `extra` (e.g. a general English word list)."""
    words = {w for s in sentences for w in s.split()} | {w for w in extra if w}
    return sorted(words)


def general_words(n: int = 40_000) -> list[str]:
    """The n most frequent English words (wordfreq), normalised like transcripts; none reserved."""
    from mambaserve.model.text_norm import normalize_text
    from wordfreq import top_n_list

    out = []
    for w in top_n_list("en", n):
        norm = normalize_text(w)
        if norm and " " not in norm:
            out.append(norm)
    return sorted(set(out))


def write_lm(
    out: Path, sentences: Sequence[str], order: int = 3, n_general: int = 40_000, hotword_slots: int = 16
) -> dict:
    """Write lm.arpa.gz and lexicon.txt for the decoder into `out` (a checkpoint folder)."""
    words = lexicon_words(sentences, general_words(n_general) if n_general else ())
    arpa = build_arpa(sentences, order=order, lexicon=words, hotword_slots=hotword_slots)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LM_FILE, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(arpa.encode())  # mtime=0: the same text gives the same bytes
    (out / LEXICON_FILE).write_text("\n".join(words) + "\n")
    return {
        "order": order,
        "sentences": len(sentences),
        "lexicon": len(words),
        "hotword_slots": hotword_slots,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from mambaserve.training.text_corpus import sentence_splits

    parser = argparse.ArgumentParser(description="Word n-gram LM (ARPA) + lexicon from the training text.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write lm.arpa.gz into")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--general-words", type=int, default=40_000, help="wordfreq words in the lexicon")
    parser.add_argument("--hotword-slots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="sentence split seed (as the corpus)")
    args = parser.parse_args(argv)
    train = list(sentence_splits(args.seed).train)
    info = write_lm(args.out, train, args.order, args.general_words, args.hotword_slots)
    print(info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
