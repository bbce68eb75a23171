"""Subword tokenizer (sentencepiece unigram), trained offline in seconds and saved with the model.

Id 0 doubles as padding and the CTC blank, so the CTC head and the decoder share one vocabulary.
Text is normalised (``normalize_text``) before training and encoding, so the tokenizer never sees
characters the model cannot output.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from mambaserve.model.text_norm import normalize_text

PAD_ID = 0  # also the CTC blank
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3


class Tokenizer:
    """Thin wrapper that pins the special ids the model relies on."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (
            PAD_ID,
            UNK_ID,
            BOS_ID,
            EOS_ID,
        ):
            raise ValueError("tokenizer special ids must be pad=0, unk=1, bos=2, eos=3")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    blank_id = PAD_ID
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(normalize_text(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) > EOS_ID])

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_proto)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(Path(path).read_bytes())


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256, seed_words: Iterable[str] = ()) -> Tokenizer:
    """Train on normalised texts. Every letter is kept as a piece, so any word can be spelled."""
    sentences = [t for t in (normalize_text(x) for x in texts) if t]
    sentences.extend(normalize_text(w) for w in seed_words)
    sentences.append(" ".join("abcdefghijklmnopqrstuvwxyz'"))  # every letter is a piece
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        num_threads=2,
        minloglevel=2,
    )
    return Tokenizer(model.getvalue())
