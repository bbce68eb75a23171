"""CTC beam search over a word lexicon with an n-gram LM and PROMPT hotwords, in compiled code.

flashlight-text's `LexiconDecoder` (C++) searches the CTC log-probabilities with KenLM scoring each
completed word; the lexicon is a trie of the tokenizer's own spellings, so the search can only write
words it knows, and the trie's smeared LM scores act as look-ahead for partial words.

Hotwords (a request's PROMPT, comma-separated names) need no Python in the search: the LM
(`mambaserve.training.ngram`) carries placeholder words `<hot0>`, `<hot1>`, ... with a fixed unigram
probability; a request's i-th hotword is spelled into a trie under the label of `<hot{i}>`, with a
boosted look-ahead score, so every prefix of a listed word gains (contextual biasing) and a finished
one scores like a plausible word. Tries are built once per distinct hotword list and cached.

Files, in the checkpoint folder: `lm.arpa.gz` and `lexicon.txt` (one word a line).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LM_FILE = "lm.arpa.gz"  # KenLM reads gzip; a third of the plain size
LEXICON_FILE = "lexicon.txt"
UNK_WORD = "<unk>"


def hotword_slot(i: int) -> str:
    """The LM word that stands for the i-th hotword of a request."""
    return f"<hot{i}>"


def parse_hotwords(prompt: str) -> list[str]:
    """The hotwords of a PROMPT: comma-separated words or names, normalised like transcripts."""
    from mambaserve.model.text_norm import normalize_text

    return [w for w in (normalize_text(p) for p in prompt.split(",")) if w]


def has_lexicon_lm(checkpoint_dir: Path) -> bool:
    """True when the checkpoint ships the LM and lexicon this search needs."""
    return (Path(checkpoint_dir) / LM_FILE).is_file() and (Path(checkpoint_dir) / LEXICON_FILE).is_file()


@dataclass
class LexiconSearchConfig:
    """Search settings (chosen on a dev set; see training/README.md)."""

    beam_size: int = 32
    beam_size_token: int = 12
    beam_threshold: float = 20.0
    lm_weight: float = 1.0
    word_score: float = 0.0
    hotword_lookahead: float = 6.0  # added to a hotword's trie score: the prefix boost
    max_hotwords: int = 16
    trie_cache: int = 32


class LexiconSearch:
    """Word-level CTC decoding of `[T, vocab]` log-probabilities (natural log) into text.

    `pieces`: the tokenizer's piece strings by id (the CTC head's vocabulary); `spell(word)`: the
    tokenizer's piece ids for a word as it is written in a transcript (with its word-start piece).
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        pieces: Sequence[str],
        spell,
        blank_id: int,
        word_start_id: int,
        config: LexiconSearchConfig | None = None,
    ) -> None:
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        self.config = cfg = config or LexiconSearchConfig()
        checkpoint_dir = Path(checkpoint_dir)
        self._spell = spell
        self._n_tokens = len(pieces)
        self._blank = blank_id
        self._sil = word_start_id
        self.words = [w for w in (checkpoint_dir / LEXICON_FILE).read_text().split("\n") if w]
        self._dict = Dictionary()
        for w in (*self.words, UNK_WORD, *(hotword_slot(i) for i in range(cfg.max_hotwords))):
            self._dict.add_entry(w)
        self._unk = self._dict.get_index(UNK_WORD)
        self._lm = KenLM(str(checkpoint_dir / LM_FILE), self._dict)
        start = self._lm.start(False)
        # unigram scores of every lexicon word and its spellings: computed once, reused by every trie
        self._entries: list[tuple[list[list[int]], int, float]] = []
        for w in self.words:
            idx = self._dict.get_index(w)
            self._entries.append((self._spellings(w), idx, self._lm.score(start, idx)[1]))
        self._slot_scores = [
            self._lm.score(start, self._dict.get_index(hotword_slot(i)))[1] for i in range(cfg.max_hotwords)
        ]
        self._tries: OrderedDict[tuple[str, ...], object] = OrderedDict()
        self._lock = threading.Lock()
        self.configure(cfg)

    def configure(self, config: LexiconSearchConfig) -> None:
        """New search settings without reloading the LM (a sweep on dev changes only these)."""
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoderOptions

        if config.max_hotwords > self.config.max_hotwords:
            raise ValueError(f"max_hotwords is fixed at {self.config.max_hotwords} by the loaded LM")
        if config.hotword_lookahead != self.config.hotword_lookahead:
            with self._lock:
                self._tries.clear()
        self.config = config
        self._options = LexiconDecoderOptions(
            beam_size=config.beam_size,
            beam_size_token=config.beam_size_token,
            beam_threshold=config.beam_threshold,
            lm_weight=config.lm_weight,
            word_score=config.word_score,
            unk_score=float("-inf"),
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )

    def _spellings(self, word: str) -> list[list[int]]:
        """The tokenizer's spelling, plus one piece per character where that differs (the model may
        emit either)."""
        first = list(self._spell(word))
        out = [first]
        chars = [self._sil]
        for ch in word:
            ids = [i for i in self._spell(ch) if i != self._sil]
            if len(ids) != 1:
                return out
            chars.append(ids[0])
        if chars != first:
            out.append(chars)
        return out

    def _trie(self, hotwords: tuple[str, ...]):
        from flashlight.lib.text.decoder import SmearingMode, Trie

        with self._lock:
            trie = self._tries.get(hotwords)
            if trie is not None:
                self._tries.move_to_end(hotwords)
                return trie
        trie = Trie(self._n_tokens, self._sil)
        for spellings, idx, score in self._entries:
            for s in spellings:
                trie.insert(s, idx, score)
        for i, word in enumerate(hotwords):
            slot = self._dict.get_index(hotword_slot(i))
            for s in self._spellings(word):
                trie.insert(s, slot, self._slot_scores[i] + self.config.hotword_lookahead)
        trie.smear(SmearingMode.MAX)
        with self._lock:
            self._tries[hotwords] = trie
            while len(self._tries) > self.config.trie_cache:
                self._tries.popitem(last=False)
        return trie

    def decode(self, logprobs: np.ndarray, hotwords: Sequence[str] = ()) -> str:
        """The best word sequence for one utterance's `[T, vocab]` CTC log-probabilities."""
        from flashlight.lib.text.decoder import LexiconDecoder

        hot = tuple(dict.fromkeys(w for w in hotwords if w))[: self.config.max_hotwords]
        emissions = np.ascontiguousarray(logprobs, dtype=np.float32)
        frames, vocab = emissions.shape
        if vocab != self._n_tokens:
            raise ValueError(f"log-probs have {vocab} classes, the tokenizer {self._n_tokens}")
        if frames == 0:
            return ""
        decoder = LexiconDecoder(
            self._options, self._trie(hot), self._lm, self._sil, self._blank, self._unk, [], False
        )
        best = decoder.decode(emissions.ctypes.data, frames, vocab)[0]
        out = []
        for idx in best.words:
            if idx < 0:
                continue
            word = self._dict.get_entry(idx)
            if word.startswith("<hot") and word.endswith(">"):
                word = hot[int(word[4:-1])]
            elif word == UNK_WORD:
                continue
            out.append(word)
        return " ".join(out)

    def decode_batch(
        self, logprobs: Sequence[np.ndarray], hotwords: Sequence[Sequence[str]] | None = None
    ) -> list[str]:
        """`decode` for each utterance of a batch (each with its own hotwords)."""
        hotwords = hotwords or [()] * len(logprobs)
        return [self.decode(lp, hw) for lp, hw in zip(logprobs, hotwords)]
