"""`streaming_encoder` model (step 1 of `asr_streaming`): one audio chunk per request -> log-mel ->
causal encoder -> CTC partial transcript + the chunk's new decoder prefix vectors.

Sequence-batched (strategy `oldest`): a batch holds chunks of different sequences, of different
lengths; each sequence's carried samples, frames and encoder state live in a slot of this instance's
state pool (``mambaserve.serving.state.StatePool`` over ``streaming_engine.EncoderStreams``), which
START claims, END frees and the idle reaper takes back. A full pool refuses only the new sequence.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from mambaserve.contract import spec
from mambaserve.serving.backends.common import error_response, load_recognizer, validate_chunk
from mambaserve.serving.metrics import INTERNAL, STATEFUL_REJECTION_REASONS, Metrics
from mambaserve.serving.state import PerSlot, SequenceError, StatePool
from mambaserve.serving.streaming_engine import EncoderStreams


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.name = args["model_name"]
        recognizer = load_recognizer(args)
        self.tokenizer = recognizer.tokenizer
        self.max_chunk = int(spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE)
        self.max_total = int(spec.MAX_STREAM_SECONDS * spec.SAMPLE_RATE)
        self.metrics = Metrics()
        self.metrics.declare(self.name, audio=True, reasons=(*STATEFUL_REJECTION_REASONS, INTERNAL))
        self.states = StatePool(
            args,
            model=self.name,
            metrics=self.metrics,
            what="sequence",
            capacity_parameter="max_sequences",
            default_capacity=spec.STREAM_SLOTS,
            default_idle_s=spec.STREAM_IDLE_SECONDS,
            per_owner_parameter="max_sequences_per_client",
            default_per_owner=spec.STREAM_SLOTS_PER_CLIENT,
            cap_unidentified=False,
        )
        self.engine = EncoderStreams(recognizer.model, self.states.capacity, recognizer.device)
        self.samples_total = PerSlot(self.states.capacity, int)
        self.states.bind(self.engine, self.samples_total)
        # Warm up the kernels on slot 0 (no sequence holds it yet), then clear it.
        self.engine.reset(0)
        self.engine.process([0], [np.zeros(spec.SAMPLE_RATE, np.float32)], [True])
        self.engine.reset(0)
        self.states.serve()

    def finalize(self) -> None:
        self.states.close()

    @staticmethod
    def _error(error: BaseException | str):
        """A refused request (its status code from the error) or, for a message, our own failure."""
        return error_response(error, pb_utils=pb_utils)

    def execute(self, requests):
        responses: list = [None] * len(requests)
        accepted = []  # (request index, sequence, slot, samples)
        for i, request in enumerate(requests):
            try:
                seq = self.states.sequence(request)
                tensor = pb_utils.get_input_tensor_by_name(request, spec.AUDIO.name)
                samples = validate_chunk(
                    None if tensor is None else tensor.as_numpy(), max_samples=self.max_chunk
                )
                slot, _ = self.states.admit(seq)
                if self.samples_total[slot] + samples.size > self.max_total:
                    raise ValueError(
                        f"sequence {seq.key!r} would exceed {spec.MAX_STREAM_SECONDS:g} s of audio, the limit of "
                        f"one utterance; end it and start another"
                    )
                self.samples_total[slot] += samples.size
                accepted.append((i, seq, slot, samples))
            except SequenceError as e:
                responses[i] = self._error(e)
                self.states.refused(e)
            except ValueError as e:
                responses[i] = self._error(e)
                self.metrics.rejected(self.name, "invalid_input")
        if not accepted:
            return responses

        with self.states.lease([seq.key for _, seq, _, _ in accepted]):
            try:
                results: list = [None] * len(accepted)
                for positions in self.states.rounds([slot for _, _, slot, _ in accepted]):
                    chunk = [accepted[p] for p in positions]
                    out = self.engine.process(
                        [slot for _, _, slot, _ in chunk],
                        [s for _, _, _, s in chunk],
                        [seq.end for _, seq, _, _ in chunk],
                    )
                    for p, r in zip(positions, out):
                        results[p] = r
            except Exception as e:  # the batch's state is unknown now: close its sequences, say why
                for i, seq, _, _ in accepted:
                    self.states.end(seq.key)
                    responses[i] = self._error(
                        f"streaming encoder failed, sequence {seq.key!r} closed: {type(e).__name__}: {e}"
                    )
                self.metrics.rejected(self.name, INTERNAL, len(accepted))
                return responses
        self.metrics.audio_seconds(self.name, sum(s.size for _, _, _, s in accepted) / spec.SAMPLE_RATE)

        for (i, seq, _, _), r in zip(accepted, results):
            responses[i] = pb_utils.InferenceResponse(output_tensors=self._outputs(r))
            if seq.end:
                self.states.end(seq.key)
        return responses

    def _outputs(self, r) -> list:
        def padded(t) -> np.ndarray:  # at least one row: a chunk may add none
            a = t.float().cpu().numpy()
            if a.shape[0] == 0:
                a = np.zeros((1, a.shape[1]), np.float32)
            return a[None]

        def scalar(v: int) -> np.ndarray:
            return np.array([[v]], dtype=np.int64)

        text = self.tokenizer.decode(r.ids).encode("utf-8")
        return [
            pb_utils.Tensor(spec.PREFIX.name, padded(r.prefix)),
            pb_utils.Tensor(spec.PREFIX_LENGTHS.name, scalar(r.prefix.shape[0])),
            pb_utils.Tensor(spec.CTC_LOGPROBS.name, padded(r.ctc_logprobs)),
            pb_utils.Tensor(spec.CTC_LENGTHS.name, scalar(r.ctc_logprobs.shape[0])),
            pb_utils.Tensor(spec.PARTIAL.name, np.array([[text]], dtype=object)),
            pb_utils.Tensor(spec.ENCODER_FRAMES.name, scalar(r.frames_total)),
        ]
