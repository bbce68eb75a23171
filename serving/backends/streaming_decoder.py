"""`streaming_decoder` model (step 2 of `asr_streaming`): feeds each chunk's prefix vectors into the
sequence's decoder state as audio arrives; at END it feeds ``[prompt][BOS]`` and decodes the final
transcript from that state, with the offline decoder's method and budget.

Every other chunk answers the encoder's CTC partial transcript (IS_FINAL false). The decoder state
of each sequence is a row of this instance's state pool (``mambaserve.serving.state.StatePool`` over
``streaming_engine.DecoderPool``); decoding steps those rows in place (CPU instances: with the
compiled decode step, ``decoder_step.onnx``). The pool is larger than the encoder's
(``max_sequences`` x 2 by default): a sequence that already ended in the encoder may still wait in
this model's queue, and must not make a new sequence look like a full pool here.
"""

from __future__ import annotations

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from mambaserve.contract import spec
from mambaserve.model.lexicon_search import parse_hotwords
from mambaserve.model.recognizer import CTC_LM
from mambaserve.model.tokenizer import BOS_ID
from mambaserve.serving.backends.common import decode_prompts, error_response, load_recognizer, parameter
from mambaserve.serving.metrics import INTERNAL, STATEFUL_REJECTION_REASONS, Metrics
from mambaserve.serving.state import PerSlot, SequenceError, StatePool
from mambaserve.serving.streaming_engine import BEAM, GREEDY, DecoderPool, Sampling, max_decode_length

_INPUTS = (
    spec.PREFIX,
    spec.PREFIX_LENGTHS,
    spec.CTC_LOGPROBS,
    spec.CTC_LENGTHS,
    spec.PARTIAL,
    spec.ENCODER_FRAMES,
)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.name = args["model_name"]
        self.recognizer = load_recognizer(args, log=pb_utils.Logger.log_info)
        self.device = self.recognizer.device
        self.config = config = self.recognizer.config
        method = parameter(args, "decoding_method") or config.decoding.method
        d = config.decoding
        self.sampling = Sampling(
            method=BEAM if method == "beam" else GREEDY,
            beam_size=d.beam_size,
            ctc_weight=d.ctc_weight,
            length_penalty=d.length_penalty,
        )
        # ctc_lm: finals from the compiled lexicon + LM search over the sequence's CTC log-probs; the
        # Mamba decoder is then not fed at all (no per-token work, no stall for other streams)
        self.ctc_lm = method == CTC_LM
        self.keep_ctc = self.ctc_lm or (self.sampling.method == BEAM and d.ctc_weight > 0)
        self.metrics = Metrics()
        self.metrics.declare(self.name, tokens=True, reasons=(*STATEFUL_REJECTION_REASONS, INTERNAL))
        self.states = StatePool(
            args,
            model=self.name,
            metrics=self.metrics,
            what="sequence",
            capacity_parameter="max_sequences",
            default_capacity=2 * spec.STREAM_SLOTS,
            default_idle_s=spec.STREAM_IDLE_SECONDS,
        )
        capacity = self.states.capacity
        self.rows = DecoderPool(
            self.recognizer.model.decoder, capacity, self.device, step=self.recognizer.compiled_step
        )
        self.prompts = PerSlot(capacity, list)  # token ids of the PROMPT of the sequence's first chunk
        self.ctc = PerSlot(capacity, list)  # CTC log-probs of the chunks so far (ctc_lm, joint beam)
        self.hotwords = PerSlot(capacity, list)  # the PROMPT's hotwords (ctc_lm)
        self.states.bind(self.rows, self.prompts, self.ctc, self.hotwords)
        if self.ctc_lm:
            _ = self.recognizer.lexicon_search  # load the LM and build the lexicon trie now
        self._warm_up()
        self.states.serve()

    def finalize(self) -> None:
        self.states.close()

    def _warm_up(self) -> None:
        d = self.config.decoder.mamba.d_model
        self.rows.reset(0)
        self.rows.feed([0], [torch.zeros(8, d, device=self.device)])
        self._finish([0], [16], count=False)
        self.rows.reset(0)

    @staticmethod
    def _error(error: BaseException | str):
        """A refused request (its status code from the error) or, for a message, our own failure."""
        return error_response(error, pb_utils=pb_utils)

    def _read(self, request) -> dict:
        arrays = {}
        for t in _INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise ValueError(f"input '{t.name}' is missing")
            arrays[t.name] = tensor.as_numpy()
        for data, lengths in ((spec.PREFIX, spec.PREFIX_LENGTHS), (spec.CTC_LOGPROBS, spec.CTC_LENGTHS)):
            n = int(arrays[lengths.name].reshape(-1)[0])
            if not 0 <= n <= arrays[data.name].shape[1]:
                raise ValueError(f"{lengths.name} ({n}) is outside [0, {arrays[data.name].shape[1]}]")
        return arrays

    def execute(self, requests):
        responses: list = [None] * len(requests)
        accepted = []  # (request index, sequence, slot, arrays)
        for i, request in enumerate(requests):
            try:
                seq = self.states.sequence(request)
                arrays = self._read(request)
                prompt = pb_utils.get_input_tensor_by_name(request, spec.PROMPT.name)
                prompt_ids, hotwords = None, []
                if prompt is not None:
                    if not seq.start:
                        raise ValueError(
                            f"input '{spec.PROMPT.name}' is accepted on the first chunk of a sequence (START) only"
                        )
                    text = decode_prompts(prompt.as_numpy(), 1)[0]
                    try:
                        prompt_ids = self.recognizer.validate_prompt(text)
                    except ValueError as e:
                        raise ValueError(f"input '{spec.PROMPT.name}': {e}") from None
                    hotwords = parse_hotwords(text or "")
                slot, _ = self.states.admit(seq)
                if seq.start:
                    self.prompts[slot] = prompt_ids or []
                    self.hotwords[slot] = hotwords
                accepted.append((i, seq, slot, arrays))
            except SequenceError as e:
                responses[i] = self._error(e)
                self.states.refused(e)
            except ValueError as e:
                responses[i] = self._error(e)
                self.metrics.rejected(
                    self.name, "prompt" if f"'{spec.PROMPT.name}'" in str(e) else "invalid_input"
                )
        if not accepted:
            return responses

        texts: dict[int, str] = {}
        with self.states.lease([seq.key for _, seq, _, _ in accepted]):
            try:
                for positions in self.states.rounds([slot for _, _, slot, _ in accepted]):
                    rows = [accepted[p] for p in positions]
                    prefixes = []
                    for _, _, slot, a in rows:
                        n = int(a[spec.PREFIX_LENGTHS.name].reshape(-1)[0])
                        prefixes.append(torch.from_numpy(a[spec.PREFIX.name][0, :n].copy()).to(self.device))
                        if self.keep_ctc:
                            m = int(a[spec.CTC_LENGTHS.name].reshape(-1)[0])
                            self.ctc[slot].append(torch.from_numpy(a[spec.CTC_LOGPROBS.name][0, :m].copy()))
                    if not self.ctc_lm:
                        self.rows.feed([slot for _, _, slot, _ in rows], prefixes)
                    ending = [(p, r) for p, r in zip(positions, rows) if r[1].end]
                    if ending:
                        slots = [r[2] for _, r in ending]
                        frames = [int(r[3][spec.ENCODER_FRAMES.name].reshape(-1)[0]) for _, r in ending]
                        for (p, _), text in zip(ending, self._finish(slots, frames)):
                            texts[p] = text
            except Exception as e:  # the batch's state is unknown now: close its sequences, say why
                for i, seq, _, _ in accepted:
                    self.states.end(seq.key)
                    responses[i] = self._error(
                        f"streaming decoder failed, sequence {seq.key!r} closed: {type(e).__name__}: {e}"
                    )
                self.metrics.rejected(self.name, "decode_error", len(accepted))
                return responses

        for p, (i, seq, _, a) in enumerate(accepted):
            final = seq.end
            text = texts[p] if final else a[spec.PARTIAL.name].reshape(-1)[0]
            data = text if isinstance(text, bytes) else str(text).encode("utf-8")
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(spec.TRANSCRIPT.name, np.array([[data]], dtype=object)),
                    pb_utils.Tensor(spec.IS_FINAL.name, np.array([[final]], dtype=bool)),
                ]
            )
            if final:
                self.states.end(seq.key)
        return responses

    def _finish(self, slots: list[int], frames: list[int], count: bool = True) -> list[str]:
        """Feed [prompt][BOS] and decode, rows in place; the offline search's method and budget
        (ctc_lm: the lexicon + LM search over the sequence's CTC log-probs, as offline)."""
        config = self.config
        if self.ctc_lm:
            vocab = self.config.vocab_size
            logprobs = [
                torch.cat(self.ctc[s]).numpy() if self.ctc[s] else np.zeros((0, vocab), np.float32)
                for s in slots
            ]
            return self.recognizer.lexicon_search.decode_batch(logprobs, [self.hotwords[s] for s in slots])
        logits = self.rows.feed_tokens(slots, [[*self.prompts[s], BOS_ID] for s in slots])
        budgets = [max_decode_length(f, config) for f in frames]
        settings = [self.sampling] * len(slots)
        if self.sampling.method == BEAM:
            ctc = [torch.cat(self.ctc[s]) if self.ctc[s] else None for s in slots] if self.keep_ctc else None
            ids = self.rows.beam(slots, logits, settings, budgets, config.eos_id, config.blank_id, ctc)
        else:
            ids = self.rows.generate(slots, logits, settings, budgets, config.eos_id)
        if count:
            self.metrics.tokens(self.name, sum(len(r) for r in ids))
        return [self.recognizer.tokenizer.decode(r) for r in ids]
