"""In-process recognition: the reference pipeline that served transcripts are compared against.

Every python-backend model that needs the network loads it as a Recognizer
(``mambaserve.serving.backends.common.load_recognizer``); the ``decoder`` model adapts Triton requests to
``Recognizer.decode_ids``; ``transcribe`` runs the whole pipeline (features, PyTorch encoder, decoder)
in this process.

Decode steps: eager PyTorch (``decoder.step``) by default -- the reference, independent of any
exported graph. ``decode_step=`` takes a ``decoder_step.onnx`` (or any step callable) to decode the
way CPU serving does (the ``decoder`` model passes the file the build wrote beside it), e.g. to
reproduce a served transcript bit for bit rather than up to float noise in the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from mambaserve.contract.spec import MAX_PROMPT_BYTES
from mambaserve.model.checkpoint import Checkpoint, load_checkpoint
from mambaserve.model.lexicon_search import (
    LexiconSearch,
    LexiconSearchConfig,
    has_lexicon_lm,
    parse_hotwords,
)
from mambaserve.model.network import EncoderOutput
from mambaserve.model.search import DecodeStep, beam_search, greedy_search, max_decode_lengths
from torch import Tensor

__all__ = ["EncoderOutput", "Recognizer"]

METHODS = ("greedy", "beam")
CTC_LM = "ctc_lm"  # CTC beam search with the checkpoint's lexicon + n-gram LM and PROMPT hotwords


class Recognizer:
    def __init__(
        self,
        checkpoint: Checkpoint | str | Path,
        device: str | torch.device = "cpu",
        decode_step: str | Path | DecodeStep | None = None,
        step_threads: int = 1,
    ) -> None:
        """``decode_step``: None (eager ``decoder.step``), a ``decoder_step.onnx`` path (run by ONNX
        Runtime with ``step_threads`` threads; CPU only) or a step callable."""
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, device)
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.tokenizer = checkpoint.tokenizer
        self.config = checkpoint.config
        self.device = torch.device(device)
        f = self.config.features
        self.frame_seconds = f.hop_length * self.config.encoder.subsampling / f.sample_rate
        self.step: DecodeStep = self.model.decoder.step
        if isinstance(decode_step, (str, Path)):
            if self.device.type != "cpu":
                raise ValueError(
                    f"decode_step={str(decode_step)!r} runs on the CPU; this Recognizer is on {self.device}"
                )
            from mambaserve.model.onnx_step import OnnxDecodeStep  # onnxruntime: only when asked for

            self.step = OnnxDecodeStep(decode_step, threads=step_threads)
        elif decode_step is not None:
            self.step = decode_step
        self._lexicon_search: LexiconSearch | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        """The decoding methods this checkpoint supports (``ctc_lm`` needs its lm.arpa.gz + lexicon.txt)."""
        return METHODS + ((CTC_LM,) if has_lexicon_lm(self.checkpoint.path) else ())

    def lexicon_config(self, **overrides) -> LexiconSearchConfig:
        """The checkpoint's ctc_lm settings (decoding section), with `overrides`."""
        d = self.config.decoding
        kw = dict(
            beam_size=d.lm_beam_size,
            lm_weight=d.lm_weight,
            word_score=d.word_score,
            hotword_lookahead=d.hotword_lookahead,
        )
        return LexiconSearchConfig(**{**kw, **overrides})

    @property
    def lexicon_search(self) -> LexiconSearch:
        """The compiled lexicon + LM search over this checkpoint's CTC head (built on first use)."""
        if self._lexicon_search is None:
            sp = self.tokenizer
            word_start = sp.sp.piece_to_id("\u2581")
            self._lexicon_search = LexiconSearch(
                self.checkpoint.path,
                [sp.sp.id_to_piece(i) for i in range(sp.vocab_size)],
                lambda word: sp.encode(word),
                blank_id=self.config.blank_id,
                word_start_id=word_start,
                config=self.lexicon_config(),
            )
        return self._lexicon_search

    @property
    def compiled_step(self) -> DecodeStep | None:
        """The decode step when it is not the eager ``decoder.step`` (what ``DecoderPool(step=)`` takes)."""
        return None if self.step == self.model.decoder.step else self.step

    def validate_prompt(self, prompt: str | bytes | None) -> list[int]:
        """Token ids of a prompt; ValueError naming the limit when it is not usable."""
        if prompt is None:
            return []
        if isinstance(prompt, bytes):
            if len(prompt) > MAX_PROMPT_BYTES:
                raise ValueError(f"PROMPT is {len(prompt)} bytes; the limit is {MAX_PROMPT_BYTES} bytes")
            try:
                prompt = prompt.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"PROMPT is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
            raise ValueError(f"PROMPT is longer than {MAX_PROMPT_BYTES} bytes of UTF-8")
        return self.tokenizer.encode(prompt)

    @torch.no_grad()
    def features(self, audio: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([len(a) for a in audio], dtype=torch.long)
        batch = torch.zeros(len(audio), int(lengths.max()) if len(audio) else 0)
        for i, a in enumerate(audio):
            batch[i, : len(a)] = torch.as_tensor(a, dtype=torch.float32)
        feats, feat_lengths = self.model.features(batch.to(self.device), lengths.to(self.device))
        return feats, feat_lengths

    @torch.no_grad()
    def encode(self, feats: Tensor, feat_lengths: Tensor) -> EncoderOutput:
        enc, _ = self.model.encode(feats.to(self.device), feat_lengths.to(self.device))
        return enc

    @torch.no_grad()
    def decode_ids(
        self,
        enc: EncoderOutput,
        prompts: Sequence[str | bytes | None] | None = None,
        method: str | None = None,
        beam_size: int | None = None,
        ctc_weight: float | None = None,
    ) -> list[list[int]]:
        d = self.config.decoding
        method = method or d.method
        if method not in self.methods:
            raise ValueError(f"decoding method must be one of {self.methods}, got {method!r}")
        if method == CTC_LM:  # the search writes words; as tokens, the tokenizer's spelling of them
            return [self.tokenizer.encode(text) for text in self.decode_ctc_lm(enc, prompts)]
        batch = enc.prefix.shape[0]
        prompt_ids = [self.validate_prompt(p) for p in (prompts or [None] * batch)]
        max_lengths = max_decode_lengths(
            enc.ctc_lengths, self.frame_seconds, d.max_tokens_per_second, d.min_tokens
        )
        decoder = self.model.decoder
        if method == "greedy":
            return greedy_search(decoder, enc, prompt_ids, max_lengths, self.config.eos_id, step=self.step)
        return beam_search(
            decoder,
            enc,
            prompt_ids,
            max_lengths,
            self.config.eos_id,
            self.config.blank_id,
            beam_size=beam_size or d.beam_size,
            ctc_weight=d.ctc_weight if ctc_weight is None else ctc_weight,
            length_penalty=d.length_penalty,
            step=self.step,
        )

    def decode_ctc_lm(
        self, enc: EncoderOutput, prompts: Sequence[str | bytes | None] | None = None
    ) -> list[str]:
        """Transcripts from the CTC head alone, searched with the lexicon, the LM and the hotwords."""
        batch = enc.ctc_logprobs.shape[0]
        hotwords = []
        for p in prompts or [None] * batch:
            self.validate_prompt(p)
            hotwords.append(parse_hotwords(p.decode("utf-8") if isinstance(p, bytes) else p or ""))
        logprobs = enc.ctc_logprobs.float().cpu().numpy()
        lengths = enc.ctc_lengths.cpu().tolist()
        return self.lexicon_search.decode_batch([logprobs[i, : lengths[i]] for i in range(batch)], hotwords)

    def decode(
        self, enc: EncoderOutput, prompts: Sequence[str | bytes | None] | None = None, **kwargs
    ) -> list[str]:
        if (kwargs.get("method") or self.config.decoding.method) == CTC_LM:
            return self.decode_ctc_lm(enc, prompts)
        return [self.tokenizer.decode(ids) for ids in self.decode_ids(enc, prompts, **kwargs)]

    def transcribe(
        self, audio: Sequence[np.ndarray], prompts: Sequence[str | bytes | None] | None = None, **kwargs
    ) -> list[str]:
        feats, feat_lengths = self.features(audio)
        return self.decode(self.encode(feats, feat_lengths), prompts, **kwargs)
