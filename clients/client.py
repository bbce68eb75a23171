"""Python API for the `asr` model over Triton's HTTP or gRPC protocol, blocking and asyncio.

    with ASRClient("127.0.0.1:8001", protocol="grpc") as asr:
        asr.wait_ready(60)
        print(asr.transcribe("clip.flac").text)

tritonclient's clients are not thread-safe (the HTTP one is gevent-based and bound to the thread that
made it), so the blocking client opens one connection per thread and runs `transcribe_many` on a
thread pool; the asyncio client shares one connection and
bounds the requests in flight with a semaphore.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress

import numpy as np
from mambaserve.clients.request import (
    DEFAULT_URLS,
    ASRError,
    AudioInput,
    ServerError,
    ServerUnavailableError,
    Transcription,
    build_request,
    check_protocol,
    expand_prompts,
    parse_response,
    prepare_audio,
    translate_error,
)
from mambaserve.contract import spec

__all__ = [
    "ASRClient",
    "ASRError",
    "AsyncASRClient",
    "ServerError",
    "ServerUnavailableError",
    "Transcription",
]

Result = Transcription | Exception


def _check_concurrency(concurrency: int) -> int:
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    return concurrency


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
    return timeout


class ASRClient:
    """Blocking client. `url` is host:port without scheme (defaults: gRPC :8001, HTTP :8000)."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = spec.ASR,
        timeout: float | None = 60.0,
    ):
        self.protocol = check_protocol(protocol)
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        self.timeout = _check_timeout(timeout)
        self._opened: dict[threading.Thread, object] = {}
        self._lock = threading.Lock()
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module

    # -- connection management -------------------------------------------------------------------
    def _connection(self):
        """This thread's tritonclient connection: the HTTP one is gevent-based and bound to its thread."""
        thread = threading.current_thread()
        with self._lock:
            client = self._opened.get(thread)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.url)
            else:
                t = self.timeout if self.timeout is not None else 1e9
                client = self._module.InferenceServerClient(self.url, connection_timeout=t, network_timeout=t)
            with self._lock:
                self._opened[thread] = client
        return client

    def _close_where(self, stale) -> None:
        with self._lock:
            gone = [t for t in self._opened if stale(t)]
            clients = [self._opened.pop(t) for t in gone]
        for client in clients:
            # Closing a connection that already failed must not mask the real error.
            with suppress(Exception):
                client.close()

    def close(self) -> None:
        self._close_where(lambda thread: True)

    def __enter__(self) -> ASRClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, *args, **kwargs):
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        try:
            return getattr(self._connection(), method)(*args, **kwargs)
        except Exception as exc:
            raise translate_error(
                exc, model=self.model, url=self.url, protocol=self.protocol, timeout=self.timeout
            ) from exc

    # -- health ----------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """True when the server answers and reports the model ready."""
        try:
            return bool(self._call("is_model_ready", self.model))
        except ASRError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Poll until the model is ready; ServerUnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = "not ready"
        while True:
            try:
                if self._call("is_model_ready", self.model):
                    return
                last = f"model '{self.model}' is not ready"
            except ASRError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(
                    f"model '{self.model}' at {self.url} ({self.protocol}) not ready after {timeout} s: {last}"
                )
            time.sleep(interval)

    # -- inference -------------------------------------------------------------------------------
    def transcribe(self, audio: AudioInput, prompt: str | None = None) -> Transcription:
        """Transcribe a 16 kHz float array, or a file path / bytes (decoded with load_audio)."""
        samples = prepare_audio(audio)
        inputs, outputs = build_request(self._module, samples, prompt)
        start = time.perf_counter()
        result = self._call("infer", self.model, inputs, outputs=outputs)
        latency = time.perf_counter() - start
        text = parse_response(result, model=self.model, url=self.url)
        return Transcription(text, latency, samples.shape[0] / spec.SAMPLE_RATE)

    def iter_transcribe(
        self,
        items: Sequence[AudioInput],
        prompt: str | Sequence[str | None] | None = None,
        concurrency: int = 4,
    ) -> Iterator[tuple[int, Result]]:
        """Yield (index, Transcription or the exception) in completion order, `concurrency` in flight.

        Audio is loaded inside the workers, so an unreadable file is one failed item, not a crash.
        """
        _check_concurrency(concurrency)
        items = list(items)
        prompts = expand_prompts(prompt, len(items))
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="asr")
        pending: dict[Future, int] = {}
        queue = iter(range(len(items)))
        try:
            for i in queue:
                pending[pool.submit(self.transcribe, items[i], prompts[i])] = i
                if len(pending) >= concurrency:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    exc = fut.exception()
                    yield i, (exc if exc is not None else fut.result())
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(self.transcribe, items[nxt], prompts[nxt])] = nxt
        finally:
            # Also when the caller stops iterating early: drop queued work, then close the
            # connections of the pool's (now finished) threads.
            pool.shutdown(wait=True, cancel_futures=True)
            self._close_where(lambda thread: not thread.is_alive())

    def transcribe_many(
        self,
        items: Sequence[AudioInput],
        prompt: str | Sequence[str | None] | None = None,
        concurrency: int = 4,
        return_exceptions: bool = False,
    ) -> list[Result]:
        """Results in input order. With return_exceptions=False the first failure is raised."""
        results: list[Result | None] = [None] * len(items)
        for i, res in self.iter_transcribe(items, prompt, concurrency):
            if isinstance(res, Exception) and not return_exceptions:
                raise res
            results[i] = res
        return results  # type: ignore[return-value]


class AsyncASRClient:
    """asyncio client with the same methods as ASRClient, as coroutines.

    The tritonclient connection is opened lazily inside the running event loop (aiohttp and grpc.aio
    bind to the loop they are created in); close it with `await client.close()` or `async with`.
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = spec.ASR,
        timeout: float | None = 60.0,
    ):
        self.protocol = check_protocol(protocol)
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        self.timeout = _check_timeout(timeout)
        self._conn = None
        if protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        self._module = module

    def _client(self):
        if self._conn is None:
            if self.protocol == "grpc":
                self._conn = self._module.InferenceServerClient(self.url)
            else:
                t = self.timeout if self.timeout is not None else 1e9
                self._conn = self._module.InferenceServerClient(self.url, conn_timeout=t)
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):  # closing a failed connection must not mask the real error
                await conn.close()

    async def __aenter__(self) -> AsyncASRClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, fn, *args, **kwargs):
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            raise translate_error(
                exc, model=self.model, url=self.url, protocol=self.protocol, timeout=self.timeout
            ) from exc

    async def is_ready(self) -> bool:
        try:
            return bool(await self._call(self._client().is_model_ready, self.model))
        except ASRError:
            return False

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "not ready"
        while True:
            try:
                if await self._call(self._client().is_model_ready, self.model):
                    return
                last = f"model '{self.model}' is not ready"
            except ASRError as exc:
                last = str(exc)
            if loop.time() >= deadline:
                raise ServerUnavailableError(
                    f"model '{self.model}' at {self.url} ({self.protocol}) not ready after {timeout} s: {last}"
                )
            await asyncio.sleep(interval)

    async def transcribe(self, audio: AudioInput, prompt: str | None = None) -> Transcription:
        # Decoding and resampling a file is CPU work: keep it off the event loop.
        samples = audio if isinstance(audio, np.ndarray) else await asyncio.to_thread(prepare_audio, audio)
        samples = prepare_audio(samples)
        inputs, outputs = build_request(self._module, samples, prompt)
        start = time.perf_counter()
        result = await self._call(self._client().infer, self.model, inputs, outputs=outputs)
        latency = time.perf_counter() - start
        text = parse_response(result, model=self.model, url=self.url)
        return Transcription(text, latency, samples.shape[0] / spec.SAMPLE_RATE)

    async def iter_transcribe(
        self,
        items: Sequence[AudioInput],
        prompt: str | Sequence[str | None] | None = None,
        concurrency: int = 4,
    ) -> AsyncIterator[tuple[int, Result]]:
        """Yield (index, Transcription or the exception) in completion order, `concurrency` in flight."""
        _check_concurrency(concurrency)
        items = list(items)
        prompts = expand_prompts(prompt, len(items))

        async def one(i: int) -> tuple[int, Result]:
            try:
                return i, await self.transcribe(items[i], prompts[i])
            except Exception as exc:
                return i, exc

        queue = iter(range(len(items)))
        pending = {asyncio.create_task(one(i)) for _, i in zip(range(concurrency), queue)}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(asyncio.create_task(one(nxt)))
        finally:
            for task in pending:
                task.cancel()

    async def transcribe_many(
        self,
        items: Sequence[AudioInput],
        prompt: str | Sequence[str | None] | None = None,
        concurrency: int = 4,
        return_exceptions: bool = False,
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(items)
        async for i, res in self.iter_transcribe(items, prompt, concurrency):
            if isinstance(res, Exception) and not return_exceptions:
                raise res
            results[i] = res
        return results  # type: ignore[return-value]
