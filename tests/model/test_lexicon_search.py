"""The compiled lexicon + LM search: words from the lexicon, the LM's say, and PROMPT hotwords."""

from __future__ import annotations

import shutil

import helpers
import numpy as np
import pytest
from mambaserve.model.lexicon_search import LexiconSearch, LexiconSearchConfig, parse_hotwords
from mambaserve.model.scoring import score
from mambaserve.model.tokenizer import Tokenizer
from mambaserve.training.ngram import write_lm

SENTENCES = (
    "please call stella and ask her to bring these things",
    "the quick brown fox jumps over the lazy dog",
    "hello world",
    "the weather is nice today",
    "bring the book to the table",
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load(helpers.CHECKPOINT / "tokenizer.model")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    write_lm(out, list(SENTENCES), order=3, n_general=0, hotword_slots=4)
    return out


def search(tokenizer: Tokenizer, lm_dir, **cfg) -> LexiconSearch:
    sp = tokenizer.sp
    return LexiconSearch(
        lm_dir,
        [sp.id_to_piece(i) for i in range(tokenizer.vocab_size)],
        tokenizer.encode,
        blank_id=tokenizer.blank_id,
        word_start_id=sp.piece_to_id("\u2581"),
        config=LexiconSearchConfig(**cfg),
    )


def emissions(
    tokenizer: Tokenizer, text: str, confidence: float = 0.9, noise: dict | None = None
) -> np.ndarray:
    """CTC log-probs that spell `text`: two frames per token, a blank between; `noise` {position:
    token id} puts a competing token beside the true one at that token position."""
    ids = tokenizer.encode(text)
    v = tokenizer.vocab_size
    rows = []
    rest = (1 - confidence) / (v - 1)
    for k, t in enumerate(ids):
        for _ in range(2):
            p = np.full(v, rest)
            p[t] = confidence
            if noise and k in noise:
                p[t] = p[noise[k]] = confidence / 2
            rows.append(p)
        p = np.full(v, rest)
        p[tokenizer.blank_id] = confidence
        rows.append(p)
    return np.log(np.asarray(rows, dtype=np.float32))


def test_clear_audio_decodes_to_its_words(tokenizer, lm_dir) -> None:
    s = search(tokenizer, lm_dir)
    for text in SENTENCES:
        assert s.decode(emissions(tokenizer, text)) == text
    assert s.decode(np.zeros((0, tokenizer.vocab_size), np.float32)) == ""
    assert s.decode_batch([emissions(tokenizer, SENTENCES[2])] * 2) == [SENTENCES[2]] * 2


def test_the_search_only_writes_lexicon_words_and_the_lm_settles_ties(tokenizer, lm_dir) -> None:
    s = search(tokenizer, lm_dir, lm_weight=2.0)
    # "hello" spelled with an 'a' as likely as the 'e': only "hello" is a word
    ids = tokenizer.encode("hello world")
    e_pos = ids.index(tokenizer.sp.piece_to_id("e"))
    noisy = emissions(tokenizer, "hello world", noise={e_pos: tokenizer.sp.piece_to_id("a")})
    assert s.decode(noisy) == "hello world"
    # a word outside the lexicon is never written
    assert "zorbeth" not in s.decode(emissions(tokenizer, "bring zorbeth to the table")).split()


def test_a_prompt_hotword_is_recognised_and_a_distractor_is_not_inserted(tokenizer, lm_dir) -> None:
    s = search(tokenizer, lm_dir, hotword_lookahead=6.0)
    audio = emissions(tokenizer, "bring zorbeth to the table")
    assert "zorbeth" not in s.decode(audio)
    assert s.decode(audio, ["zorbeth", "kalmira"]) == "bring zorbeth to the table"
    assert "kalmira" not in s.decode(
        emissions(tokenizer, "bring the book to the table"), ["zorbeth", "kalmira"]
    )
    # hotwords are per call: the next call without them is as before
    assert "zorbeth" not in s.decode(audio)


def test_prompt_parsing_and_settings() -> None:
    assert parse_hotwords("Zorbeth,  kalmira ,, ") == ["zorbeth", "kalmira"]
    assert parse_hotwords("") == []


def test_recognizer_offers_ctc_lm_when_the_checkpoint_ships_an_lm(tmp_path, speech_clips) -> None:
    from mambaserve.model.recognizer import Recognizer

    ckpt = tmp_path / "ckpt"
    shutil.copytree(helpers.CHECKPOINT, ckpt, ignore=shutil.ignore_patterns("lm.arpa.gz", "lexicon.txt"))
    assert "ctc_lm" not in Recognizer(ckpt).methods
    write_lm(ckpt, [text for text, _ in speech_clips] + list(SENTENCES), order=3, n_general=0)
    rec = Recognizer(ckpt)
    assert "ctc_lm" in rec.methods
    audio = [a for _, a in speech_clips]
    hyps = rec.transcribe(audio, method="ctc_lm")
    words = {w for text, _ in speech_clips for w in text.split()} | {w for s in SENTENCES for w in s.split()}
    assert all(set(h.split()) <= words for h in hyps)
    # an LM that knows these sentences can only help the CTC head: never worse than the default search
    refs = [t for t, _ in speech_clips]
    assert score(refs, hyps).wer <= score(refs, rec.transcribe(audio)).wer
    with pytest.raises(ValueError, match="PROMPT"):
        rec.transcribe(audio[:1], prompts=[b"\xff\xfe"], method="ctc_lm")
