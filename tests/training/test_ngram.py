"""The ARPA writer: a proper distribution in every context, and KenLM reads back what we wrote."""

from __future__ import annotations

import gzip
import math

import pytest
from mambaserve.model.lexicon_search import hotword_slot
from mambaserve.training.ngram import build_arpa, write_lm

SENTENCES = (
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "the cat ate the fish",
    "on the mat the cat sat",
)


def parse_arpa(text: str) -> tuple[list[dict], list[dict]]:
    probs: list[dict] = [{} for _ in range(5)]
    bows: list[dict] = [{} for _ in range(5)]
    order = 0
    for line in text.split("\n"):
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1])
            continue
        if order and line.strip() and not line.startswith("\\"):
            fields = line.split("\t")
            ngram = tuple(fields[1].split())
            probs[order][ngram] = 10 ** float(fields[0])
            if len(fields) > 2:
                bows[order][ngram] = 10 ** float(fields[2])
    return probs, bows


def prob(probs: list[dict], bows: list[dict], history: tuple, word: str) -> float:
    ngram = (*history, word)
    if ngram in probs[len(ngram)]:
        return probs[len(ngram)][ngram]
    return bows[len(history)].get(history, 1.0) * prob(probs, bows, history[1:], word)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_is_a_distribution(order: int) -> None:
    arpa = build_arpa(SENTENCES, order=order, lexicon=["zebra", "cat"], hotword_slots=2, hotword_logprob=-3)
    probs, bows = parse_arpa(arpa)
    vocab = [w for (w,) in probs[1] if w != "<s>"]
    assert {"zebra", "<unk>", "</s>", hotword_slot(0), hotword_slot(1)} <= set(vocab)
    histories = [(), ("the",), ("<s>",), ("zebra",), ("<s>", "the"), ("the", "cat"), ("sat", "on", "the")]
    for h in histories:
        h = h[-(order - 1) :] if order > 1 else ()
        assert math.isclose(sum(prob(probs, bows, h, w) for w in vocab), 1.0, rel_tol=1e-5), h
    # a word only in the lexicon still has a probability; a hotword slot has exactly the one asked for
    assert prob(probs, bows, (), "zebra") > 0
    assert math.isclose(probs[1][(hotword_slot(1),)], 1e-3, rel_tol=1e-5)
    # seen continuations beat unseen ones
    if order >= 2:
        assert prob(probs, bows, ("the",), "cat") > prob(probs, bows, ("the",), "a")


def test_kenlm_reads_back_our_probabilities(tmp_path) -> None:
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    arpa = build_arpa(SENTENCES, order=3)
    (tmp_path / "lm.arpa").write_text(arpa)
    probs, bows = parse_arpa(arpa)
    words = Dictionary()
    for w in ("the", "cat", "sat", "fish", "<unk>"):
        words.add_entry(w)
    lm = KenLM(str(tmp_path / "lm.arpa"), words)
    state = lm.start(False)
    history: tuple = ("<s>",)
    for w in ("the", "cat", "sat", "fish"):
        state, score = lm.score(state, words.get_index(w))
        assert math.isclose(score, math.log10(prob(probs, bows, history[-2:], w)), abs_tol=1e-4), w
        history = (*history, w)


def test_write_lm_writes_the_decoder_files(tmp_path) -> None:
    info = write_lm(tmp_path, list(SENTENCES), order=2, n_general=0, hotword_slots=3)
    assert info["lexicon"] == len({w for s in SENTENCES for w in s.split()})
    assert gzip.decompress((tmp_path / "lm.arpa.gz").read_bytes()).decode().count(hotword_slot(2)) == 1
    assert "mat" in (tmp_path / "lexicon.txt").read_text().split()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="order"):
        build_arpa(SENTENCES, order=0)
    with pytest.raises(ValueError, match="no sentences"):
        build_arpa([], order=2)
    with pytest.raises(ValueError, match="hotword"):
        build_arpa(SENTENCES, hotword_slots=10, hotword_logprob=-0.5)
