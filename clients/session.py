"""Decoder-session client for `decoder_session`: one audio, many prompts, tokens as they are generated.

    with SessionClient("127.0.0.1:8001") as client:            # gRPC streaming (or protocol="http")
        session = client.open(audio)                           # encoder + prefix run once, state kept
        for event in session.stream("Glossary: Mamba.", method="greedy"):
            print(event.text, end="", flush=True)              # each token as the server sends it
        best = session.generate(method="beam", beam_size=4)    # from the same kept state
        session.close()

gRPC uses one bidirectional stream per client (responses are routed by request id); HTTP uses
Triton's `generate_stream` endpoint (server-sent events), naming the session in the request
parameters `sequence_id` / `sequence_start` / `sequence_end`.

A session belongs to the client that opened it: the answer to START carries a secret (SESSION_KEY)
that `Session` sends (as KEY) with every later request (the server refuses the session to anyone without it).
A generation answers with one final response (the whole transcript and its TOKEN_IDS: per-token
responses crash tritonserver 2.51 when clients cancel streams); a server configured with
``stream_tokens`` sends one response per greedy or sampled token first. `Session.generate` handles
both; with one response a `stream()` yields only the final event (its `transcript`).
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from mambaserve.clients.request import (
    AFFINITY_HEADER,
    DEFAULT_URLS,
    AudioInput,
    ServerError,
    ServerUnavailableError,
    check_protocol,
    prepare_audio,
    translate_error,
)
from mambaserve.clients.streaming import new_sequence_id
from mambaserve.contract import spec

_REQUEST_IDS = itertools.count(1)
_NUMPY = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BYTES": np.object_}


@dataclass(frozen=True)
class TokenEvent:
    """One streamed response: a token (token_id -1 and text "" in the final response)."""

    token_id: int
    text: str  # what this token adds to the transcript
    transcript: str  # the transcript so far
    is_final: bool
    history_length: int  # positions the session's kept state has seen
    at: float  # time.perf_counter() when it arrived
    token_ids: tuple[int, ...] = ()  # every token id of `transcript` (all of them in the final event)
    session_key: str = ""  # the session's secret, in the answer to START ("" otherwise)


@dataclass
class Generation:
    """A whole generation: the final transcript, its tokens and when each arrived."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    history_length: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def first_token_s(self) -> float | None:
        return self.token_times[0] - self.started if self.token_times else None

    @property
    def per_token_s(self) -> float | None:
        """Mean time between consecutive tokens (None with fewer than two)."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)


def settings_inputs(
    *,
    method: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    beam_size: int | None = None,
) -> dict[spec.TensorSpec, object]:
    values = {
        spec.DECODING_METHOD: method,
        spec.MAX_TOKENS: max_tokens,
        spec.MIN_TOKENS: min_tokens,
        spec.TEMPERATURE: temperature,
        spec.TOP_K: top_k,
        spec.SEED: seed,
        spec.BEAM_SIZE: beam_size,
    }
    return {t: v for t, v in values.items() if v is not None}


class SessionClient:
    """Client of `decoder_session` over gRPC streaming or HTTP generate_stream. Thread-safe for gRPC."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = spec.DECODER_SESSION,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
    ):
        """``headers``: sent with every request (gRPC: with the stream), e.g. the client id header
        (``spec.CLIENT_ID_HEADER``) a trusted front proxy would set."""
        self.protocol = check_protocol(protocol)
        self.headers = dict(headers or {})
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        self.timeout = timeout
        self._lock = threading.Lock()
        self._routes: dict[str, queue.Queue] = {}
        self._grpc = None

    # -- transport -------------------------------------------------------------------------------
    def _stream(self):
        with self._lock:
            if self._grpc is None:
                import tritonclient.grpc as grpcclient

                self._module = grpcclient
                client = grpcclient.InferenceServerClient(self.url)
                # One stream for every session of this client: one affinity key keeps them on one replica.
                client.start_stream(
                    callback=self._on_response,
                    headers={AFFINITY_HEADER: str(new_sequence_id()), **self.headers},
                )
                self._grpc = client
            return self._grpc

    def _on_response(self, result, error) -> None:
        if result is not None:
            rid = result.get_response().id
        else:  # tritonclient reports stream errors without the response; route by the id in the error
            rid = getattr(error, "request_id", None) or _request_id_from(str(error))
        with self._lock:
            target = self._routes.get(rid)
            if target is None and len(self._routes) == 1:
                target = next(iter(self._routes.values()))
        if target is not None:
            target.put((time.perf_counter(), result, error))

    def close(self, cancel: bool = False) -> None:
        """Close the stream. By default the server first finishes what is in flight; ``cancel=True``
        cancels it (the server stops generating). Cancelling while a decoupled model is still sending
        can crash tritonserver 2.51 (a server race, see serving/STREAMING.md), so it is opt-in."""
        with self._lock:
            client, self._grpc = self._grpc, None
        if client is not None:
            client.stop_stream(cancel_requests=cancel)
            client.close()

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, exc: BaseException) -> BaseException:
        return translate_error(
            exc, model=self.model, url=self.url, protocol=self.protocol, timeout=self.timeout
        )

    # -- requests --------------------------------------------------------------------------------
    def request(
        self,
        session_id: int,
        *,
        start: bool = False,
        end: bool = False,
        audio: np.ndarray | None = None,
        prompt: str | None = None,
        context: str | None = None,
        key: str | None = None,
        parameters: dict | None = None,
        **settings,
    ) -> Iterator[TokenEvent]:
        """One request to a session; yields its responses as they arrive (the last is final).
        ``key``: the session's secret (the START answer's ``session_key``), required after START;
        ``parameters``: extra request parameters."""
        values: dict[spec.TensorSpec, object] = settings_inputs(**settings)
        if key:
            values[spec.KEY] = key
        if audio is not None:
            values[spec.AUDIO] = np.ascontiguousarray(audio, dtype=np.float32)
        if prompt is not None:
            values[spec.PROMPT] = prompt
        if context is not None:
            values[spec.CONTEXT] = context
        if not values:  # Triton refuses a request without inputs: send a setting that changes nothing
            values[spec.MIN_TOKENS] = 0
        if self.protocol == "grpc":
            yield from self._request_grpc(session_id, start, end, values, parameters)
        else:
            yield from self._request_http(session_id, start, end, values, parameters)

    def _request_grpc(
        self, sid: int, start: bool, end: bool, values: dict, parameters: dict | None = None
    ) -> Iterator[TokenEvent]:
        client = self._stream()
        inputs = []
        for t, v in values.items():
            if t is spec.AUDIO:
                x = self._module.InferInput(t.name, [1, int(v.shape[0])], t.wire_dtype)
                x.set_data_from_numpy(v[None, :])
            else:
                x = self._module.InferInput(t.name, [1, 1], t.wire_dtype)
                data = v.encode("utf-8") if isinstance(v, str) else v
                x.set_data_from_numpy(np.array([[data]], dtype=_NUMPY[t.wire_dtype]))
            inputs.append(x)
        rid = f"s{sid}-{next(_REQUEST_IDS)}"
        answers: queue.Queue = queue.Queue()
        with self._lock:
            self._routes[rid] = answers
        try:
            try:
                client.async_stream_infer(
                    self.model,
                    inputs,
                    request_id=rid,
                    sequence_id=sid,
                    sequence_start=start,
                    sequence_end=end,
                    parameters=parameters or None,
                )
            except Exception as exc:
                raise self._error(exc) from exc
            while True:
                try:
                    at, result, error = answers.get(timeout=self.timeout)
                except queue.Empty:
                    raise ServerUnavailableError(
                        f"no answer from {self.url} within {self.timeout} s"
                    ) from None
                if error is not None:
                    raise self._error(error)
                event = _event(result.as_numpy, at)
                yield event
                if event.is_final:
                    return
        finally:
            with self._lock:
                self._routes.pop(rid, None)

    def _request_http(
        self, sid: int, start: bool, end: bool, values: dict, parameters: dict | None = None
    ) -> Iterator[TokenEvent]:
        body: dict = {
            "parameters": {
                **(parameters or {}),
                "sequence_id": sid,
                "sequence_start": start,
                "sequence_end": end,
            }
        }
        for t, v in values.items():
            body[t.name] = v.tolist() if isinstance(v, np.ndarray) else v
        req = urllib.request.Request(
            f"http://{self.url}/v2/models/{self.model}/generate_stream",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", AFFINITY_HEADER: str(sid), **self.headers},
        )
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise ServerError(
                _http_error(e.read()), status=str(e.code), model=self.model, url=self.url
            ) from None
        except OSError as e:
            raise ServerUnavailableError(f"http server at {self.url} is unreachable: {e}") from None
        with resp:
            for raw in resp:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = json.loads(line[5:])
                if "error" in data:
                    raise ServerError(data["error"], status=None, model=self.model, url=self.url)
                event = _event(data.__getitem__, time.perf_counter())
                yield event
                if event.is_final:
                    return
        raise ServerError(
            "the event stream ended without a final response", status=None, model=self.model, url=self.url
        )

    # -- sessions --------------------------------------------------------------------------------
    def open(self, audio: AudioInput, context: str | None = None, session_id: int | None = None) -> Session:
        """Start a session on `audio` (runs the encoder once); no tokens are generated yet."""
        session = Session(self, session_id if session_id is not None else new_sequence_id())
        events = list(
            self.request(session.id, start=True, audio=prepare_audio(audio), context=context, max_tokens=0)
        )
        session.history_length = events[-1].history_length
        session.key = events[-1].session_key
        return session


class Session:
    """A live session: every call starts from the state kept after its audio (and context), and
    carries the session's key (``key``: the secret the server answered to START)."""

    def __init__(self, client: SessionClient, session_id: int, key: str = ""):
        self.client = client
        self.id = session_id
        self.key = key
        self.history_length = 0
        self.closed = False

    def stream(self, prompt: str | None = None, **settings) -> Iterator[TokenEvent]:
        """Generate from the kept state with this prompt and settings (method, max_tokens, min_tokens,
        temperature, top_k, seed, beam_size); yields each token as it arrives, then the final event."""
        for event in self.client.request(self.id, prompt=prompt, key=self.key, **settings):
            self.history_length = event.history_length
            yield event

    def generate(self, prompt: str | None = None, **settings) -> Generation:
        out = Generation(started=time.perf_counter())
        for event in self.stream(prompt, **settings):
            if event.is_final:
                out.text = event.transcript
                out.history_length = event.history_length
                out.finished = event.at
                if len(event.token_ids) > len(out.token_ids):  # beam: the whole result in one response
                    out.token_ids = list(event.token_ids)  # (no per-token times then: none were sent)
            else:
                out.token_ids.append(event.token_id)
                out.pieces.append(event.text)
                out.token_times.append(event.at)
        return out

    def add_context(self, text: str) -> int:
        """Append text to the kept history (later prompts see it); returns the new history length."""
        for event in self.client.request(self.id, context=text, key=self.key, max_tokens=0):
            self.history_length = event.history_length
        return self.history_length

    def close(self) -> None:
        """End the session now (its slot is freed; it would otherwise be reaped when idle)."""
        if not self.closed:
            list(self.client.request(self.id, end=True, key=self.key, max_tokens=0))
            self.closed = True


def _event(get, at: float) -> TokenEvent:
    def one(name: str):
        v = np.asarray(get(name)).reshape(-1)[0]
        return v.decode("utf-8") if isinstance(v, bytes) else v

    def optional(name: str, default):  # outputs a server older than the tensor does not send
        try:
            return get(name)
        except (KeyError, TypeError):
            return default

    ids = optional(spec.TOKEN_IDS.name, None)
    key = optional(spec.SESSION_KEY.name, None)
    return TokenEvent(
        token_id=int(one(spec.TOKEN_ID.name)),
        text=str(one(spec.TOKEN.name)),
        transcript=str(one(spec.TRANSCRIPT.name)),
        is_final=bool(one(spec.IS_FINAL.name)),
        history_length=int(one(spec.HISTORY_LENGTH.name)),
        at=at,
        token_ids=tuple(int(i) for i in np.asarray(ids).reshape(-1)) if ids is not None else (),
        session_key=one(spec.SESSION_KEY.name) if key is not None else "",
    )


def _request_id_from(message: str) -> str | None:
    if message.startswith("[request id: "):
        return message[len("[request id: ") : message.index("]")]
    return None


def _http_error(body: bytes) -> str:
    """The server's message from an error body: JSON, or an event (`data: {...}`) of generate_stream."""
    text = body.decode(errors="replace").strip()
    if text.startswith("data:"):
        text = text[5:].strip()
    try:
        return json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        return text
