"""Streaming recognition client for `asr_streaming`: audio in chunks under one correlation ID.

    with StreamingClient("127.0.0.1:8001") as client:
        for update in client.stream(audio, chunk_ms=320, speed=1.0):   # speed 1.0: real time
            print(update.text, update.is_final, update.latency_s)

Chunks go over one gRPC bidirectional stream (``sequence_start`` on the first, ``sequence_end`` on
the last); the server batches chunks of many streams together and answers each chunk with the
partial transcript (CTC greedy) and, at the end, the decoder's final transcript. ``speed`` paces
the chunks like a live source: each chunk is sent when its last sample would have been recorded
(speed 2.0: twice as fast; 0: as fast as the answers come, one chunk in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np
from mambaserve.clients.request import (
    AFFINITY_HEADER,
    DEFAULT_URLS,
    AudioInput,
    ServerError,
    ServerUnavailableError,
    prepare_audio,
    translate_error,
)
from mambaserve.contract import spec

_IDS = itertools.count(1)


def new_sequence_id() -> int:
    """A correlation ID unlikely to collide with other clients' (random high bits, a counter below)."""
    return (random.SystemRandom().getrandbits(40) << 20 | (os.getpid() & 0xFFF) << 8 | next(_IDS) & 0xFF) or 1


def chunk_audio(audio: np.ndarray, chunk_samples: int) -> list[np.ndarray]:
    """Consecutive chunks of `chunk_samples` (the last may be shorter; an empty clip gives one empty chunk)."""
    if chunk_samples < 1:
        raise ValueError(f"chunk size must be >= 1 sample, got {chunk_samples}")
    chunks = [audio[i : i + chunk_samples] for i in range(0, len(audio), chunk_samples)]
    return chunks or [audio[:0]]


@dataclass(frozen=True)
class ChunkResult:
    """The server's answer to one chunk."""

    index: int
    text: str  # partial transcript, or the final one when is_final
    is_final: bool
    latency_s: float  # from sending the chunk to its answer
    audio_end_s: float  # seconds of audio sent up to and including this chunk


def chunk_inputs(module, chunk: np.ndarray, prompt: str | None) -> list:
    """Inputs of one `asr_streaming` request; `module` is tritonclient.grpc or .http."""
    audio = module.InferInput(spec.AUDIO.name, [1, int(chunk.shape[0])], spec.AUDIO.wire_dtype)
    audio.set_data_from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)[None, :])
    inputs = [audio]
    if prompt is not None:
        p = module.InferInput(spec.PROMPT.name, [1, 1], spec.PROMPT.wire_dtype)
        p.set_data_from_numpy(np.array([[prompt.encode("utf-8")]], dtype=np.object_))
        inputs.append(p)
    return inputs


def parse_chunk(result) -> tuple[str, bool]:
    text = result.as_numpy(spec.TRANSCRIPT.name).reshape(-1)[0]
    final = bool(result.as_numpy(spec.IS_FINAL.name).reshape(-1)[0])
    return (text.decode("utf-8") if isinstance(text, bytes) else str(text)), final


class StreamingClient:
    """gRPC client of `asr_streaming`. Not thread-safe: use one per thread (each opens one stream)."""

    def __init__(self, url: str | None = None, model: str = spec.ASR_STREAMING, timeout: float = 60.0):
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self.url = url or DEFAULT_URLS["grpc"]
        self.model = model
        self.timeout = timeout
        self._client = grpcclient.InferenceServerClient(self.url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> StreamingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, exc: BaseException) -> BaseException:
        return translate_error(exc, model=self.model, url=self.url, protocol="grpc", timeout=self.timeout)

    def stream(
        self,
        audio: AudioInput,
        chunk_ms: float = 320.0,
        speed: float = 0.0,
        prompt: str | None = None,
        sequence_id: int | None = None,
    ) -> Iterator[ChunkResult]:
        """Send `audio` in chunks of `chunk_ms`; yield each chunk's answer in order (the last is final).

        A refused chunk raises ServerError (the server's message); the stream is closed either way.
        """
        if not chunk_ms > 0:
            raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
        if speed < 0:
            raise ValueError(f"speed must be >= 0 (0: as fast as possible), got {speed}")
        samples = prepare_audio(audio)
        chunks = chunk_audio(samples, max(1, round(chunk_ms * spec.SAMPLE_RATE / 1000)))
        sid = sequence_id if sequence_id is not None else new_sequence_id()
        answers: queue.Queue = queue.Queue()
        # One gRPC stream per sequence: the affinity header keeps it on one replica behind a front.
        self._client.start_stream(
            callback=lambda result, error: answers.put((time.perf_counter(), result, error)),
            headers={AFFINITY_HEADER: str(sid)},
        )
        sent_at: list[float] = []
        ends = np.cumsum([len(c) for c in chunks]) / spec.SAMPLE_RATE
        next_chunk = 0
        failed = True
        try:
            start = time.perf_counter()
            received = 0
            while received < len(chunks):
                now = time.perf_counter()
                can_send = next_chunk < len(chunks) and (speed > 0 or next_chunk == received)
                due = start + ends[next_chunk] / speed if can_send and speed > 0 else now
                if can_send and now >= due:
                    self._send(chunks[next_chunk], sid, next_chunk, len(chunks), prompt)
                    sent_at.append(time.perf_counter())
                    next_chunk += 1
                    continue
                wait = max(0.0, due - now) if can_send else self.timeout
                try:
                    at, result, error = answers.get(timeout=wait)
                except queue.Empty:
                    if can_send:
                        continue
                    raise ServerUnavailableError(
                        f"no answer from {self.url} within {self.timeout} s"
                    ) from None
                if error is not None:
                    raise self._error(error)
                text, final = parse_chunk(result)
                yield ChunkResult(received, text, final, at - sent_at[received], float(ends[received]))
                received += 1
            failed = False
        except GeneratorExit:  # the caller stopped reading: not a server failure
            failed = False
            raise
        finally:
            if not failed and 0 < next_chunk < len(chunks):
                # Abandoned mid-utterance: END the sequence now so its server slot is freed at once, not
                # at the idle timeout (Triton's python backend never sees the timeout as an END).
                with contextlib.suppress(Exception):
                    self._send(np.zeros(0, np.float32), sid, len(chunks) - 1, len(chunks), None)
            # A healthy stream is closed gracefully (outstanding requests answered); a failed one is cut.
            self._client.stop_stream(cancel_requests=failed)

    def _send(self, chunk: np.ndarray, sid: int, index: int, total: int, prompt: str | None) -> None:
        try:
            self._client.async_stream_infer(
                self.model,
                chunk_inputs(self._module, chunk, prompt if index == 0 else None),
                sequence_id=sid,
                sequence_start=index == 0,
                sequence_end=index == total - 1,
                enable_empty_final_response=False,
            )
        except Exception as exc:
            raise self._error(exc) from exc

    def transcribe(
        self, audio: AudioInput, chunk_ms: float = 320.0, prompt: str | None = None
    ) -> list[ChunkResult]:
        """Every chunk's answer, as fast as possible (the last one holds the final transcript)."""
        results = list(self.stream(audio, chunk_ms=chunk_ms, speed=0.0, prompt=prompt))
        if not results or not results[-1].is_final:
            raise ServerError(
                "the stream ended without a final transcript", status=None, model=self.model, url=self.url
            )
        return results


class LiveStream:
    """One `asr_streaming` sequence fed by a live source, for asyncio code (the web gateway).

    Unlike `StreamingClient.stream`, the audio is not known in advance: `send()` takes pieces of any
    size as they are recorded, cuts them into `chunk_ms` chunks (START on the first), and `end()` sends
    the rest with END. `results()` yields each chunk's answer in order; the last one is final. Uses a
    `tritonclient.grpc.aio` client (shared by many streams: each LiveStream is one bidirectional call).

        stream = LiveStream(aio_client, url=url, prompt="Names: Ada.")
        await stream.send(samples)          # float32 at 16 kHz, any length
        await stream.end()
        async for r in stream.results(): ...
    """

    def __init__(
        self,
        client,
        *,
        url: str = DEFAULT_URLS["grpc"],
        model: str = spec.ASR_STREAMING,
        chunk_ms: float = 320.0,
        prompt: str | None = None,
        sequence_id: int | None = None,
    ):
        if not chunk_ms > 0:
            raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self.url, self.model, self.prompt = url, model, prompt
        self.sequence_id = sequence_id if sequence_id is not None else new_sequence_id()
        self.chunk_samples = max(1, round(chunk_ms * spec.SAMPLE_RATE / 1000))
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._sent_samples = 0
        self._chunks_sent = 0
        self._sent: list[tuple[float, float]] = []  # (perf_counter at send, audio end s) per chunk
        self._requests: asyncio.Queue = asyncio.Queue()
        self._ended = False
        self._responses = client.stream_infer(self._request_iter())

    @property
    def started(self) -> bool:
        """Whether the sequence has reached the server (its first chunk, with START, was sent)."""
        return self._chunks_sent > 0

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio taken so far (sent or buffered)."""
        return (self._sent_samples + self._pending_len) / spec.SAMPLE_RATE

    async def _request_iter(self):
        while (item := await self._requests.get()) is not None:
            yield item

    def _enqueue(self, chunk: np.ndarray, end: bool) -> None:
        first = self._chunks_sent == 0
        self._sent_samples += len(chunk)
        self._sent.append((time.perf_counter(), self._sent_samples / spec.SAMPLE_RATE))
        self._requests.put_nowait(
            {
                "model_name": self.model,
                "inputs": chunk_inputs(self._module, chunk, self.prompt if first else None),
                "sequence_id": self.sequence_id,
                "sequence_start": first,
                "sequence_end": end,
            }
        )
        self._chunks_sent += 1

    async def send(self, samples: np.ndarray) -> None:
        """Buffer `samples` (1-D float32, 16 kHz) and send every full chunk."""
        if self._ended:
            raise RuntimeError("the stream has ended")
        if len(samples) == 0:
            return
        self._pending.append(np.ascontiguousarray(samples, dtype=np.float32))
        self._pending_len += len(samples)
        if self._pending_len < self.chunk_samples:
            return
        buf = np.concatenate(self._pending)
        full = len(buf) - len(buf) % self.chunk_samples
        for i in range(0, full, self.chunk_samples):
            self._enqueue(buf[i : i + self.chunk_samples], end=False)
        rest = buf[full:]
        self._pending, self._pending_len = ([rest] if len(rest) else []), len(rest)

    async def end(self) -> None:
        """Send what is buffered (possibly nothing) with END, and close the request side of the call."""
        if self._ended:
            return
        self._ended = True
        rest = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._pending_len = [], 0
        self._enqueue(rest, end=True)
        self._requests.put_nowait(None)

    async def results(self) -> AsyncIterator[ChunkResult]:
        """Each chunk's answer in order, until the final one; a refused chunk raises ServerError."""
        index = 0
        async for result, error in self._responses:
            if error is not None:
                raise ServerError(error.message() or str(error), status=None, model=self.model, url=self.url)
            text, final = parse_chunk(result)
            sent_at, audio_end = self._sent[index] if index < len(self._sent) else (time.perf_counter(), 0.0)
            yield ChunkResult(index, text, final, time.perf_counter() - sent_at, audio_end)
            index += 1
            if final:
                return

    def cancel(self) -> None:
        """Cut the call without waiting for answers (after `end()`, the server still frees the slot)."""
        with contextlib.suppress(Exception):
            self._requests.put_nowait(None)
            self._responses.cancel()
