"""`decoder` model: encoder outputs (+ optional PROMPT) -> TRANSCRIPT, via `Recognizer.decode`.

With decoding method ``ctc_lm`` (the checkpoint's lm.arpa.gz + lexicon.txt) the batch's CTC log-probs go
through the compiled lexicon + LM search with the PROMPT's hotwords, and the Mamba decoder is not run.

On a CPU instance every generated token runs the compiled decode step (``decoder_step.onnx`` beside
this model, ONNX Runtime; parameter ``decode_step: torch`` switches back to eager PyTorch); on a GPU
instance the PyTorch step with the Triton kernels.

Requests arrive as a ragged batch (each has its own prefix/CTC length); they are padded into one
EncoderOutput and decoded together. Prompts are checked per request first, so a bad prompt fails only
its own request; if the batched decode itself fails, each request is retried alone so that one
request cannot take the others down with it.
"""

from __future__ import annotations

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from mambaserve.contract import spec
from mambaserve.model.network import EncoderOutput
from mambaserve.model.recognizer import CTC_LM
from mambaserve.serving.backends.common import (
    decode_prompts,
    error_response,
    load_recognizer,
    pad_stack,
    parameter,
)
from mambaserve.serving.metrics import DECODER_REJECTION_REASONS, Metrics

_INPUTS = (spec.PREFIX, spec.PREFIX_LENGTHS, spec.CTC_LOGPROBS, spec.CTC_LENGTHS)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.name = args["model_name"]
        self.recognizer = load_recognizer(args, log=pb_utils.Logger.log_info)
        self.device = self.recognizer.device
        self.method = parameter(args, "decoding_method") or None
        self.metrics = Metrics()
        self.metrics.declare(self.name, tokens=True, reasons=DECODER_REJECTION_REASONS)

    # ------------------------------------------------------------------------------------------
    def _read(self, request) -> tuple[dict[str, np.ndarray], list[str | None]]:
        arrays = {}
        for t in _INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise ValueError(f"input '{t.name}' is missing")
            arrays[t.name] = tensor.as_numpy()
        n = arrays[spec.PREFIX.name].shape[0]
        for t in _INPUTS:
            if arrays[t.name].shape[0] != n:
                raise ValueError(f"input '{t.name}' has batch {arrays[t.name].shape[0]}, PREFIX has {n}")
        for data, lengths in ((spec.PREFIX, spec.PREFIX_LENGTHS), (spec.CTC_LOGPROBS, spec.CTC_LENGTHS)):
            longest = int(arrays[lengths.name].max()) if n else 0
            if longest > arrays[data.name].shape[1]:
                raise ValueError(f"{lengths.name} ({longest}) exceeds the length of {data.name}")
        prompt = pb_utils.get_input_tensor_by_name(request, spec.PROMPT.name)
        prompts = decode_prompts(None if prompt is None else prompt.as_numpy(), n)
        for i, text in enumerate(prompts):
            if text is not None:
                try:
                    self.recognizer.validate_prompt(text)
                except ValueError as e:
                    raise ValueError(f"input '{spec.PROMPT.name}' (row {i}): {e}") from None
        return arrays, prompts

    def _decode(self, items: list[tuple[dict[str, np.ndarray], list[str | None]]]) -> list[list[str]]:
        def stacked(name: str) -> torch.Tensor:
            return torch.from_numpy(pad_stack([a[name] for a, _ in items])).to(self.device)

        def lengths(name: str) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([a[name].reshape(-1) for a, _ in items])).to(self.device)

        enc = EncoderOutput(
            prefix=stacked(spec.PREFIX.name),
            prefix_lengths=lengths(spec.PREFIX_LENGTHS.name),
            ctc_logprobs=stacked(spec.CTC_LOGPROBS.name),
            ctc_lengths=lengths(spec.CTC_LENGTHS.name),
        )
        prompts = [p for _, ps in items for p in ps]
        if (self.method or self.recognizer.config.decoding.method) == CTC_LM:
            # the whole batch through the compiled lexicon + LM search; the Mamba decoder is not run
            texts = self.recognizer.decode_ctc_lm(enc, prompts)
            self.metrics.tokens(self.name, sum(len(self.recognizer.tokenizer.encode(t)) for t in texts))
        else:
            with torch.inference_mode():
                ids = self.recognizer.decode_ids(enc, prompts=prompts, method=self.method)
            texts = [self.recognizer.tokenizer.decode(row) for row in ids]
            self.metrics.tokens(self.name, sum(len(row) for row in ids))
        out, offset = [], 0
        for _, ps in items:
            out.append(list(texts[offset : offset + len(ps)]))
            offset += len(ps)
        return out

    @staticmethod
    def _response(texts: list[str]):
        data = np.array([[t.encode("utf-8")] for t in texts], dtype=object).reshape(len(texts), 1)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(spec.TRANSCRIPT.name, data)])

    def execute(self, requests):
        responses: list = [None] * len(requests)
        items, index = [], []
        for i, request in enumerate(requests):
            try:
                items.append(self._read(request))
                index.append(i)
            except ValueError as e:
                responses[i] = error_response(e, pb_utils=pb_utils)
                self.metrics.rejected(
                    self.name, "prompt" if f"'{spec.PROMPT.name}'" in str(e) else "invalid_input"
                )
        if not items:
            return responses
        try:
            for i, texts in zip(index, self._decode(items)):
                responses[i] = self._response(texts)
        except Exception:  # isolate the failing request(s): decode one by one
            for i, item in zip(index, items):
                try:
                    responses[i] = self._response(self._decode([item])[0])
                except Exception as e:  # this request's own failure, reported to it alone
                    responses[i] = error_response(
                        f"decoding failed: {type(e).__name__}: {e}", pb_utils=pb_utils
                    )
                    self.metrics.rejected(self.name, "decode_error")
        return responses
