"""`decoder_session` model (decoupled): decoder sessions that keep their state and stream tokens.

A session is a correlation ID. Its first request (START) carries the AUDIO: it runs features,
encoder and bridge once and feeds the prefix into a decoder state, which is kept in a slot of the
session pool; CONTEXT text (any request) is appended to that kept history. Every request that
generates (MAX_TOKENS != 0) copies the kept state into a working row, feeds its own
``[PROMPT][BOS]`` there and decodes -- greedy, beam or sampled -- so a session tries new prompts and
settings without re-running the encoder or its history, and the cost per generated token is the
same whatever the history length (the state has a fixed size). CPU instances generate with the
compiled decode step (``decoder_step.onnx`` beside this model); GPU instances with the kernels.

Every generation answers with ONE response (the whole TRANSCRIPT and TOKEN_IDS, IS_FINAL, Triton's
final flag): tritonserver 2.51 segfaults when a decoupled model sends to a gRPC stream the client
cancelled, and a client that cancels mid-generation made any per-token streaming do that (measured:
a burst of beam tokens crashed it within 200 cancelled streams; tokens sent one per decode step,
each after checking ``is_cancelled()``, once in 1 800 to 5 500 cancelled greedy or sampled streams).
With one response, a client that walks away after an answer has nothing left in flight. The
``stream_tokens`` config parameter (``true``) brings back one response per greedy or sampled token
(TOKEN, TOKEN_ID, TRANSCRIPT and TOKEN_IDS so far, IS_FINAL false), each sent only after checking for
cancellation, for a tritonserver whose gRPC frontend survives cancelled streams; beam always answers
in one response.

Sessions have owners: START answers a new secret (SESSION_KEY, from ``secrets.token_urlsafe``) that
every later request of the session must carry, so the correlation ID alone lets nobody else read,
feed or end the session; a START on a live correlation ID is refused (never a mix). Each client
(the front proxy's forwarded ``x-client-id``) may hold ``max_sessions_per_client`` live sessions, and
a session starts on at least ``min_audio_seconds`` of audio, so one client cannot take every slot.

No sequence batcher (HTTP generate_stream could not name the session then): the session comes from
the correlation ID (gRPC sequence_id + START/END) or the request parameters ``sequence_id``,
``sequence_start``, ``sequence_end`` (HTTP generate). So this model enforces START, END and the idle
timeout itself (through its state pool, `mambaserve.serving.state.StatePool`); it must run as one
instance (a session lives in one process).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from mambaserve.contract import spec
from mambaserve.model.lexicon_search import parse_hotwords
from mambaserve.model.tokenizer import BOS_ID
from mambaserve.serving.backends.common import (
    RequestError,
    decode_prompts,
    load_recognizer,
    parameter,
    parse_sampling,
    triton_error,
    validate_audio,
)
from mambaserve.serving.metrics import (
    AUDIO_REJECTION_REASONS,
    INTERNAL,
    STATEFUL_REJECTION_REASONS,
    Metrics,
)
from mambaserve.serving.state import PerSlot, SequenceError, StatePool
from mambaserve.serving.streaming_engine import (
    BEAM,
    CTC_LM,
    DecoderPool,
    EncoderStreams,
    Sampling,
    max_decode_length,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
STATE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class _Item:
    sender: object
    seq: object
    slot: int = -1
    audio: np.ndarray | None = None
    prompt: list[int] = field(default_factory=list)
    hotwords: list[str] = field(default_factory=list)  # the PROMPT's, for ctc_lm
    context: list[int] = field(default_factory=list)
    sampling: object = None
    secret: str | None = None  # the SESSION_KEY the request carried
    key: str = ""  # the key answered to START ("" otherwise)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.name = args["model_name"]
        self.recognizer = load_recognizer(args, log=pb_utils.Logger.log_info)
        self.device = self.recognizer.device
        self.config = config = self.recognizer.config
        self.tokenizer = self.recognizer.tokenizer
        d = config.decoding
        method = parameter(args, "decoding_method") or d.method
        self.defaults = Sampling(
            method=method, beam_size=d.beam_size, ctc_weight=d.ctc_weight, length_penalty=d.length_penalty
        )
        batch = max(1, int(json.loads(args["model_config"]).get("max_batch_size", spec.MAX_BATCH_SIZE)))
        dtype = STATE_DTYPES[parameter(args, "state_dtype", "float32")]
        self.min_samples = config.features.win_length
        self.stream_tokens = parameter(args, "stream_tokens", "false").strip().lower() in ("1", "true", "yes")
        min_audio_s = float(parameter(args, "min_audio_seconds", str(spec.MIN_SESSION_AUDIO_SECONDS)))
        self.min_start_samples = max(self.min_samples, round(min_audio_s * spec.SAMPLE_RATE))
        self.metrics = Metrics()
        self.metrics.declare(
            self.name,
            audio=True,
            tokens=True,
            reasons=(*STATEFUL_REJECTION_REASONS, *AUDIO_REJECTION_REASONS, INTERNAL),
        )
        self.states = StatePool(
            args,
            model=self.name,
            metrics=self.metrics,
            what="session",
            capacity_parameter="max_sessions",
            default_capacity=spec.SESSION_SLOTS,
            default_idle_s=spec.SESSION_IDLE_SECONDS,
            per_owner_parameter="max_sessions_per_client",
            default_per_owner=spec.SESSION_SLOTS_PER_CLIENT,
            keys=True,
        )
        capacity = self.states.capacity
        model = self.recognizer.model
        self.encoder = EncoderStreams(model, batch, self.device)  # transient: a session's audio, once
        self.work = DecoderPool(
            model.decoder, batch, self.device, step=self.recognizer.compiled_step
        )  # a row per request
        # What a session keeps: the decoder state after its history (audio, then CONTEXT), its length,
        # the audio's encoder frames (the default budget) and -- only when the checkpoint's ctc_weight > 0,
        # for beam search's CTC prefix scores as offline `asr` uses them -- the audio's CTC log-probs
        # ([frames, vocab], a few KB). All reset at START and dropped when the session ends or is reaped.
        self.sessions = DecoderPool(model.decoder, capacity, self.device, dtype=dtype)
        self.history = PerSlot(capacity, int)
        self.frames = PerSlot(capacity, int)
        self.ctc = PerSlot(capacity, lambda: None)
        # CTC log-probs are kept for the joint beam and for ctc_lm (when the checkpoint ships its LM)
        self.ctc_lm = CTC_LM in self.recognizer.methods
        self.keep_ctc = d.ctc_weight > 0 or self.ctc_lm
        if self.ctc_lm:
            _ = self.recognizer.lexicon_search  # load the LM and build the lexicon trie now
        self.states.bind(self.sessions, self.history, self.frames, self.ctc)
        self._warm_up()
        self.states.serve()

    def finalize(self) -> None:
        self.states.close()

    def _warm_up(self) -> None:
        self.encoder.reset(0)
        self.encoder.process([0], [np.zeros(spec.SAMPLE_RATE, np.float32)], [True])
        self.encoder.reset(0)
        self.work.reset([0])
        logits = self.work.feed_tokens([0], [[BOS_ID]])
        self.work.generate([0], logits, [self.defaults], [4], self.config.eos_id)

    # -- requests --------------------------------------------------------------------------------
    def _text_input(self, request, tensor: spec.TensorSpec) -> tuple[list[int], str]:
        """The input's token ids (validated) and its text ("" when absent)."""
        raw = pb_utils.get_input_tensor_by_name(request, tensor.name)
        if raw is None:
            return [], ""
        try:
            text = decode_prompts(raw.as_numpy(), 1)[0]
            return self.recognizer.validate_prompt(text), text or ""
        except ValueError as e:
            message = str(e).replace(f"'{spec.PROMPT.name}'", f"'{tensor.name}'")
            raise ValueError(
                message if f"'{tensor.name}'" in message else f"input '{tensor.name}': {message}"
            ) from None

    def _parse(self, request, item: _Item) -> None:
        seq = item.seq = self.states.sequence(request)
        audio = pb_utils.get_input_tensor_by_name(request, spec.AUDIO.name)
        if audio is not None:
            if not seq.start:
                raise ValueError(
                    f"input '{spec.AUDIO.name}' is accepted on the first request of a session (START) only; "
                    f"start a new session for other audio"
                )
            item.audio = validate_audio(audio.as_numpy(), min_samples=self.min_samples)
            if item.audio.shape[0] != 1:
                raise ValueError(
                    f"input '{spec.AUDIO.name}' must have shape [1, samples] (one session per request)"
                )
            if item.audio.shape[1] < self.min_start_samples:
                raise RequestError(
                    f"input '{spec.AUDIO.name}' has {item.audio.shape[1]} samples; a session starts on at "
                    f"least {self.min_start_samples} samples ({self.min_start_samples / spec.SAMPLE_RATE:g} s "
                    f"at {spec.SAMPLE_RATE} Hz)"
                )
        elif seq.start:
            raise ValueError(f"the first request of a session (START) must carry '{spec.AUDIO.name}'")
        key = pb_utils.get_input_tensor_by_name(request, spec.KEY.name)
        if key is not None:
            raw = key.as_numpy().reshape(-1)
            if raw.size != 1:
                raise RequestError(f"input '{spec.KEY.name}' must hold one value")
            value = raw[0]
            item.secret = (value if isinstance(value, bytes) else str(value).encode())[:256].decode(
                "utf-8", errors="replace"
            )
        item.prompt, prompt_text = self._text_input(request, spec.PROMPT)
        item.hotwords = parse_hotwords(prompt_text)
        item.context, _ = self._text_input(request, spec.CONTEXT)
        values = {}
        for t in spec.SESSION_SETTINGS:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            values[t.name] = None if tensor is None else tensor.as_numpy()
        item.sampling = parse_sampling(values, self.defaults, vocab_size=self.config.vocab_size)
        if item.sampling.method == CTC_LM and not self.ctc_lm:
            raise ValueError(
                f"input '{spec.DECODING_METHOD.name}': ctc_lm needs a checkpoint with its LM "
                f"(lm.arpa.gz + lexicon.txt); this one has {', '.join(self.recognizer.methods)}"
            )

    def _gone(self, item: _Item) -> bool:
        """True once the client cancelled (e.g. closed its stream): send nothing more but the final flag.

        Responses sent on a cancelled gRPC stream can crash tritonserver 2.51's frontend (a race fixed
        upstream later), so cancellation is checked before every send; Triton still needs the flag.
        (Measured: delaying that flag by 0.25 s did not make it safer -- 1 crash in ~6 000 cancelled
        sampled streams either way -- and sending it from a thread hung the model.)
        """
        if item.done:
            return True
        if item.sender.is_cancelled():
            item.sender.send(flags=FINAL)
            item.done = True
            self.metrics.rejected(self.name, "cancelled")
            return True
        return False

    def _send(self, item: _Item, token: int = -1, piece: str = "", final: bool = False) -> None:
        if self._gone(item):
            return

        def s(value: str) -> np.ndarray:
            return np.array([[value.encode("utf-8")]], dtype=object)

        response = pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(spec.TOKEN.name, s(piece)),
                pb_utils.Tensor(spec.TOKEN_ID.name, np.array([[token]], dtype=np.int32)),
                pb_utils.Tensor(spec.TRANSCRIPT.name, s(item.text)),
                pb_utils.Tensor(spec.IS_FINAL.name, np.array([[final]], dtype=bool)),
                pb_utils.Tensor(
                    spec.HISTORY_LENGTH.name,
                    np.array([[self.history[item.slot] if item.slot >= 0 else 0]], dtype=np.int64),
                ),
                pb_utils.Tensor(spec.TOKEN_IDS.name, np.array([item.ids], dtype=np.int32).reshape(1, -1)),
                pb_utils.Tensor(spec.SESSION_KEY.name, s(item.key)),
            ]
        )
        if final:
            item.sender.send(response, flags=FINAL)
            item.done = True
        else:
            item.sender.send(response)

    def _fail(self, item: _Item, error: BaseException | str) -> None:
        """The request's one error response (status code from ``common.error_code``; a message: ours)."""
        if not self._gone(item):
            item.sender.send(
                pb_utils.InferenceResponse(error=triton_error(error, pb_utils=pb_utils)), flags=FINAL
            )
            item.done = True

    def _token(self, item: _Item, token: int) -> None:
        """Keep the token for the one final response; with ``stream_tokens``, also send it now."""
        item.ids.append(token)
        if not self.stream_tokens:
            return
        text = self.tokenizer.decode(item.ids)
        piece = text[len(item.text) :] if text.startswith(item.text) else text
        item.text = text
        self._send(item, token, piece)

    def execute(self, requests):
        items: list[_Item] = []
        for request in requests:
            item = _Item(sender=request.get_response_sender(), seq=None)
            try:
                self._parse(request, item)
                item.slot, item.key = self.states.admit(item.seq, item.secret)
                items.append(item)
            except SequenceError as e:
                self._fail(item, e)
                self.states.refused(e)
            except ValueError as e:
                self._fail(item, e)
                text = str(e)
                reason = (
                    "prompt"
                    if f"'{spec.PROMPT.name}'" in text or f"'{spec.CONTEXT.name}'" in text
                    else "invalid_input"
                )
                self.metrics.rejected(self.name, reason)
            except Exception as e:  # a request we cannot read must not take its batch down
                self._fail(item, f"request refused: {type(e).__name__}: {e}")
                self.metrics.rejected(self.name, INTERNAL)
        if not items:
            return None
        with self.states.lease([it.seq.key for it in items]):
            for positions in self.states.rounds([it.slot for it in items]):
                group = [items[p] for p in positions]
                try:
                    self._run(group)
                except Exception as e:  # this group's sessions are in an unknown state: close them
                    for it in group:
                        self.states.end(it.seq.key)
                        self._fail(
                            it, f"session {it.seq.key!r} failed and was closed: {type(e).__name__}: {e}"
                        )  # a message: INTERNAL (our failure)
                    self.metrics.rejected(self.name, "decode_error", len(group))
        for it in items:
            if it.seq.end:
                self.states.end(it.seq.key)
        return None

    # -- the work --------------------------------------------------------------------------------
    def _run(self, group: list[_Item]) -> None:
        starts = [it for it in group if it.seq.start]
        if starts:
            slots = [it.slot for it in starts]  # reset at START by the state pool
            rows = list(range(len(starts)))
            for r in rows:
                self.encoder.reset(r)
            out = self.encoder.process(rows, [it.audio[0] for it in starts], [True] * len(starts))
            self.sessions.feed(slots, [r.prefix for r in out])
            for it, r in zip(starts, out):
                self.history[it.slot] = r.prefix.shape[0]
                self.frames[it.slot] = r.frames_total
                self.ctc[it.slot] = r.ctc_logprobs if self.keep_ctc else None
            self.metrics.audio_seconds(self.name, sum(it.audio.size for it in starts) / spec.SAMPLE_RATE)
        with_context = [it for it in group if it.context]
        if with_context:
            self.sessions.feed_tokens([it.slot for it in with_context], [it.context for it in with_context])
            for it in with_context:
                self.history[it.slot] += len(it.context)

        by_lm = [it for it in group if it.sampling.method == CTC_LM and it.sampling.max_tokens != 0]
        if by_lm:  # the whole text in one response, as offline `asr` decodes it
            texts = self.recognizer.lexicon_search.decode_batch(
                [self.ctc[it.slot].cpu().numpy() for it in by_lm], [it.hotwords for it in by_lm]
            )
            for it, text in zip(by_lm, texts):
                it.text, it.ids = text, self.tokenizer.encode(text)
                self._send(it, final=True)
        generating = [it for it in group if it.sampling.max_tokens != 0 and it.sampling.method != CTC_LM]
        for it in group:
            if it.sampling.max_tokens == 0:
                self._send(it, final=True)
        if not generating:
            return
        rows = list(range(len(generating)))
        self.sessions.copy_to([it.slot for it in generating], self.work, rows)
        logits = self.work.feed_tokens(rows, [[*it.prompt, BOS_ID] for it in generating])
        budgets = [
            it.sampling.max_tokens
            if it.sampling.max_tokens is not None
            else max_decode_length(self.frames[it.slot], self.config)
            for it in generating
        ]
        settings = [it.sampling for it in generating]
        eos = self.config.eos_id
        sampled = [j for j, it in enumerate(generating) if it.sampling.method != BEAM]
        if sampled:
            index = torch.tensor(sampled)
            self.work.generate(
                [rows[j] for j in sampled],
                logits[index],
                [settings[j] for j in sampled],
                [budgets[j] for j in sampled],
                eos,
                on_token=lambda r, token: self._token(generating[sampled[r]], token),
                # cancelled: stop computing too (a sampled row, which sends nothing, asks each step)
                should_stop=lambda r: self._gone(generating[sampled[r]]),
            )
            for j in sampled:
                it = generating[j]
                it.text = self.tokenizer.decode(it.ids)
        for j, it in enumerate(generating):
            if it.sampling.method == BEAM and not self._gone(it):  # cancelled: skip the search
                ids = self.work.beam(
                    [rows[j]],
                    logits[j : j + 1],
                    [settings[j]],
                    [budgets[j]],
                    eos,
                    self.config.blank_id,
                    [self.ctc[it.slot]],
                )[0]
                # One response, never a burst (see the module docstring): the final one below.
                it.ids = list(ids)
                it.text = self.tokenizer.decode(it.ids)
        self.metrics.tokens(self.name, sum(len(it.ids) for it in generating))
        for it in generating:
            self._send(it, final=True)
