"""The web gateway: a page that listens, and the WebSocket / HTTP endpoints behind it.

The browser cannot speak Triton's gRPC, and a public page must not reach the server directly, so a
small asyncio server stands between them. It serves the page (``static/``), turns one WebSocket into
one `asr_streaming` sequence (microphone audio in, partial and final transcripts out) and an upload
into one offline `asr` request, and puts limits on what a browser may ask for: each stream's audio
rate and length, the number of streams at once, the size of an upload. It talks to tritonserver's
gRPC port only, so it may sit behind a proxy later.

WebSocket protocol (``/ws/stream``; the full table is in clients/README.md):

    client -> {"type": "start", "sample_rate": <contract SAMPLE_RATE>, "format": "f32" | "s16", "prompt": "..."}
    client -> binary frames: little-endian mono PCM at 16 kHz (float32 or int16), any length
    client -> {"type": "stop"}                      (END: the final transcript follows)
    gateway -> {"type": "ready", "stream_id": ..., "limits": {...}}
    gateway -> {"type": "partial", "text": ..., "audio_s": ...}      one per 320 ms chunk
    gateway -> {"type": "final", "text": ..., "audio_s": ..., "stream_id": ...}
    gateway -> {"type": "error", "code": ..., "message": ...}  and the socket is closed
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
from mambaserve.clients.audio import AudioError, load_audio
from mambaserve.clients.client import AsyncASRClient
from mambaserve.clients.request import DEFAULT_URLS, ASRError, ServerError, ServerUnavailableError
from mambaserve.clients.streaming import LiveStream
from mambaserve.contract import spec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

log = logging.getLogger("mambaserve.web")

STATIC = resources.files("mambaserve.clients.web") / "static"

# WebSocket close codes (RFC 6455): policy violation, message too big, try again later, server error.
CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_BUSY, CLOSE_ERROR = 1008, 1009, 1013, 1011


@dataclass(frozen=True)
class GatewayConfig:
    """Where the server is and what one browser may ask of it."""

    grpc_url: str = DEFAULT_URLS["grpc"]
    max_streams: int = 8
    """Streams open at once; one more is refused with code "busy" (the server has 256 slots per
    streaming instance, and other clients share them)."""
    max_rate: float = 2.0
    """Sustained audio rate cap, × real time: a microphone sends 1×; more means a script is pushing."""
    rate_burst_s: float = 2.0
    """Seconds of audio a stream may be ahead of `max_rate` (network jitter, a tab that was in the background)."""
    max_stream_seconds: float = spec.MAX_STREAM_SECONDS
    """Audio per stream; at the cap the stream is ended (final transcript sent) and closed."""
    idle_seconds: float = 10.0
    """A started stream without audio this long is ended (below the server's 15 s sequence timeout)."""
    max_upload_seconds: float = spec.MAX_AUDIO_SECONDS
    max_upload_bytes: int = 16 * 1024 * 1024
    """Bytes per upload, checked before decoding (30 s of 48 kHz stereo float WAV is 11.5 MB)."""
    max_uploads: int = 4
    """Uploads transcribed at once; more are refused with 503."""
    chunk_ms: float = 320.0
    timeout_s: float = 60.0
    """Longest wait for any answer from the server."""
    debug_audio: bool = False
    """Keep the audio each stream received (last 16) at GET /debug/audio/{stream_id}.wav: tests compare
    the final transcript with the offline one of exactly that audio."""

    def limits(self) -> dict:
        """What the page shows (and a client may check) about the limits."""
        d = asdict(self)
        for key in ("grpc_url", "debug_audio", "timeout_s"):
            d.pop(key)
        d["sample_rate"] = spec.SAMPLE_RATE
        d["max_prompt_bytes"] = spec.MAX_PROMPT_BYTES
        return d


class Refusal(Exception):
    """A request the gateway turns down: `code` for programs, `message` for people."""

    def __init__(self, code: str, message: str, close_code: int = CLOSE_POLICY):
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


class StreamSlots:
    """A bounded count of open streams; no waiting: a full gateway refuses at once."""

    def __init__(self, limit: int):
        self.limit, self.in_use = limit, 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


class Gateway:
    """The state the endpoints share: config, the gRPC clients (made in the server's event loop), counts."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.streams = StreamSlots(config.max_streams)
        self.uploads = StreamSlots(config.max_uploads)
        self.ids = itertools.count(1)
        self.received: OrderedDict[int, np.ndarray] = OrderedDict()
        self.stream_client = None
        self.asr: AsyncASRClient | None = None

    async def open(self) -> None:
        import tritonclient.grpc.aio as grpc_aio

        self.stream_client = grpc_aio.InferenceServerClient(self.config.grpc_url)
        self.asr = AsyncASRClient(self.config.grpc_url, protocol="grpc", timeout=self.config.timeout_s)

    async def close(self) -> None:
        if self.asr is not None:
            await self.asr.close()
        if self.stream_client is not None:
            with contextlib.suppress(Exception):
                await self.stream_client.close()

    def keep_audio(self, stream_id: int, pieces: list[np.ndarray]) -> None:
        if self.config.debug_audio:
            self.received[stream_id] = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
            while len(self.received) > 16:
                self.received.popitem(last=False)


def decode_pcm(data: bytes, fmt: str) -> np.ndarray:
    """Little-endian mono PCM bytes as float32 in [-1, 1]."""
    if fmt == "s16":
        if len(data) % 2:
            raise Refusal("protocol", "an int16 audio frame must have an even number of bytes")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if len(data) % 4:
        raise Refusal("protocol", "a float32 audio frame must be a multiple of 4 bytes")
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise Refusal("protocol", "audio frame holds NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


def parse_start(message: dict, config: GatewayConfig) -> tuple[str, str | None]:
    """The sample format and prompt of a start message, or a Refusal saying what is wrong."""
    if message.get("type") != "start":
        raise Refusal("protocol", 'the first message must be {"type": "start", ...}')
    if message.get("sample_rate", spec.SAMPLE_RATE) != spec.SAMPLE_RATE:
        raise Refusal(
            "protocol",
            f"audio must be resampled to {spec.SAMPLE_RATE} Hz mono first (got sample_rate {message['sample_rate']})",
        )
    fmt = message.get("format", "f32")
    if fmt not in ("f32", "s16"):
        raise Refusal("protocol", f'format must be "f32" or "s16", got {fmt!r}')
    prompt = message.get("prompt") or None
    if prompt is not None:
        if not isinstance(prompt, str):
            raise Refusal("protocol", "prompt must be a string")
        if len(prompt.encode("utf-8")) > spec.MAX_PROMPT_BYTES:
            raise Refusal("prompt", f"the prompt is longer than {spec.MAX_PROMPT_BYTES} bytes (UTF-8)")
    return fmt, prompt


async def _send(ws: WebSocket, message: dict) -> None:
    if ws.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):  # the browser may be gone already
            await ws.send_text(json.dumps(message))


async def _close(ws: WebSocket, code: int = 1000, reason: str = "") -> None:
    if ws.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await ws.close(code, reason[:120])


async def _receive(ws: WebSocket, timeout: float) -> dict:
    """The next WebSocket message; {"type": "websocket.disconnect"} when the socket closes."""
    try:
        return await asyncio.wait_for(ws.receive(), timeout)
    except RuntimeError:  # receive after a disconnect
        return {"type": "websocket.disconnect"}


class Reported(Exception):
    """The forwarding task has told the browser what went wrong and closed the socket."""


def as_refusal(exc: BaseException, timeout_s: float) -> Refusal:
    """What the browser is told about a failure on the server's side."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, ServerError):
        return Refusal("server", f"the server refused the stream: {exc.server_message}", CLOSE_ERROR)
    message = str(exc) or f"no answer from the server within {timeout_s:g} s"
    return Refusal("unavailable", message, CLOSE_ERROR)


async def _refuse(ws: WebSocket, r: Refusal) -> None:
    await _send(ws, {"type": "error", "code": r.code, "message": r.message})
    await _close(ws, r.close_code, r.code)


async def _forward(
    ws: WebSocket, stream: LiveStream, stream_id: int, done: asyncio.Future, timeout_s: float
) -> None:
    """Send each chunk's answer to the browser as it comes; the final resolves `done`. A failure is
    reported to the browser at once (the socket is closed), even while the page is only listening."""
    try:
        async for r in _answers(stream):
            if r.is_final:
                await _send(
                    ws, {"type": "final", "text": r.text, "audio_s": r.audio_end_s, "stream_id": stream_id}
                )
                done.set_result(r.text)
                return
            await _send(ws, {"type": "partial", "text": r.text, "audio_s": r.audio_end_s})
        raise ServerUnavailableError("the server closed the stream without a final transcript")
    except Exception as exc:
        if not done.done():
            log.info("stream %d: %s", stream_id, exc)
            await _refuse(ws, as_refusal(exc, timeout_s))
            done.set_exception(Reported())


async def _answers(stream: LiveStream) -> AsyncIterator:
    try:
        async for r in stream.results():
            yield r
    except ASRError:
        raise
    except Exception as exc:  # grpc.aio transport errors (AioRpcError): the server is down or went away
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        detail = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        if getattr(code, "name", "") == "UNAVAILABLE":
            raise ServerUnavailableError(f"the server at {stream.url} is unreachable: {detail}") from exc
        raise ServerUnavailableError(f"lost the gRPC stream to the server at {stream.url}: {detail}") from exc


async def stream_endpoint(ws: WebSocket) -> None:
    """One WebSocket = one `asr_streaming` sequence, with the gateway's limits."""
    gw: Gateway = ws.app.state.gateway
    cfg = gw.config
    await ws.accept()
    if not gw.streams.try_acquire():
        busy = f"all {cfg.max_streams} streams of this gateway are in use; try again in a moment"
        await _refuse(ws, Refusal("busy", busy, CLOSE_BUSY))
        return
    stream_id = next(gw.ids)
    stream: LiveStream | None = None
    forward: asyncio.Task | None = None
    received: list[np.ndarray] = []
    try:
        try:
            first = await _receive(ws, cfg.idle_seconds)
        except asyncio.TimeoutError:
            raise Refusal("idle", f"no start message within {cfg.idle_seconds:g} s") from None
        if first["type"] == "websocket.disconnect":
            return
        try:
            fmt, prompt = parse_start(json.loads(first.get("text") or "null") or {}, cfg)
        except (ValueError, AttributeError):
            raise Refusal("protocol", 'the first message must be JSON: {"type": "start", ...}') from None
        stream = LiveStream(gw.stream_client, url=cfg.grpc_url, chunk_ms=cfg.chunk_ms, prompt=prompt)
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        forward = asyncio.create_task(_forward(ws, stream, stream_id, done, cfg.timeout_s))
        await _send(ws, {"type": "ready", "stream_id": stream_id, "limits": cfg.limits()})
        started = time.monotonic()
        total = 0  # samples received
        notice: Refusal | None = None
        while True:
            try:
                msg = await _receive(ws, cfg.idle_seconds)
            except asyncio.TimeoutError:
                notice = Refusal("idle", f"no audio for {cfg.idle_seconds:g} s: the stream was ended", 1000)
                break
            if done.done():  # the server refused a chunk, or went away: already reported
                return
            if msg["type"] == "websocket.disconnect":
                log.info(
                    "stream %d: socket closed mid-utterance after %.1f s; ending it",
                    stream_id,
                    total / spec.SAMPLE_RATE,
                )
                return  # the finally clause ENDs the sequence
            if msg.get("bytes") is not None:
                samples = decode_pcm(msg["bytes"], fmt)
                room = int(cfg.max_stream_seconds * spec.SAMPLE_RATE) - total
                if len(samples) >= room:
                    samples = samples[: max(room, 0)]
                    notice = Refusal(
                        "length",
                        f"the stream reached the {cfg.max_stream_seconds:g} s limit and was ended",
                        1000,
                    )
                total += len(samples)
                allowed = cfg.rate_burst_s + cfg.max_rate * (time.monotonic() - started)
                if total / spec.SAMPLE_RATE > allowed:
                    raise Refusal(
                        "rate",
                        f"audio arrives faster than {cfg.max_rate:g}× real time "
                        f"({total / spec.SAMPLE_RATE:.1f} s of audio in {time.monotonic() - started:.1f} s)",
                    )
                received.append(samples)
                await stream.send(samples)
                if notice is not None:
                    break
            elif msg.get("text") is not None:
                try:
                    kind = json.loads(msg["text"]).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind != "stop":
                    raise Refusal("protocol", 'expected binary audio or {"type": "stop"}')
                break
        await stream.end()
        gw.keep_audio(stream_id, received)
        await asyncio.wait_for(asyncio.shield(done), cfg.timeout_s)
        if notice is not None:
            await _send(ws, {"type": "error", "code": notice.code, "message": notice.message})
        await _close(ws, 1000)
    except Reported:
        pass
    except (Refusal, ServerError, ServerUnavailableError, asyncio.TimeoutError) as e:
        await _refuse(ws, as_refusal(e, cfg.timeout_s))
    except WebSocketDisconnect:
        pass
    finally:
        if stream is not None and not stream.ended:
            # Socket gone or a refusal mid-utterance: END the sequence so its server slot is freed now
            # (a graceful half-close: the server answers, nobody listens), not at the idle timeout.
            await stream.end()
        if forward is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(forward), cfg.timeout_s)
            if not forward.done():  # the server never answered: cut the call
                forward.cancel()
                stream.cancel()
        gw.streams.release()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def transcribe_endpoint(request: Request) -> Response:
    """POST the file's bytes as the body (``?prompt=`` optional): the offline `asr` transcript."""
    gw: Gateway = request.app.state.gateway
    cfg = gw.config
    prompt = request.query_params.get("prompt") or None
    if prompt is not None and len(prompt.encode("utf-8")) > spec.MAX_PROMPT_BYTES:
        return _error(400, "prompt", f"the prompt is longer than {spec.MAX_PROMPT_BYTES} bytes (UTF-8)")
    too_big = f"the file is larger than {cfg.max_upload_bytes / 2**20:g} MiB"
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cfg.max_upload_bytes:
        return _error(413, "size", too_big)
    if not gw.uploads.try_acquire():
        return _error(503, "busy", f"{cfg.max_uploads} uploads are being transcribed; try again in a moment")
    try:
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > cfg.max_upload_bytes:
                return _error(413, "size", too_big)
        if not body:
            return _error(400, "audio", "the upload is empty")
        try:
            audio = await asyncio.to_thread(load_audio, bytes(body))
        except AudioError as e:
            return _error(400, "audio", str(e).replace(f"<{len(body)} bytes>", "the file"))
        seconds = len(audio) / spec.SAMPLE_RATE
        if seconds > cfg.max_upload_seconds:
            return _error(
                413,
                "length",
                f"the file holds {seconds:.1f} s of audio; the limit is {cfg.max_upload_seconds:g} s",
            )
        assert gw.asr is not None
        try:
            t = await gw.asr.transcribe(audio, prompt=prompt)
        except ServerError as e:
            return _error(502, "server", f"the server refused the file: {e.server_message}")
        except ServerUnavailableError as e:
            return _error(503, "unavailable", str(e))
        return JSONResponse(
            {"text": t.text, "audio_s": round(t.audio_seconds, 3), "latency_ms": round(t.latency_s * 1000, 1)}
        )
    finally:
        gw.uploads.release()


async def config_endpoint(request: Request) -> Response:
    """Limits, and whether the server's models are ready (the page shows both)."""
    gw: Gateway = request.app.state.gateway
    ready = {}
    for model in (spec.ASR, spec.ASR_STREAMING):
        try:
            ready[model] = bool(await asyncio.wait_for(gw.stream_client.is_model_ready(model), 5))
        except Exception:
            ready[model] = False
    return JSONResponse({"limits": gw.config.limits(), "ready": ready, "streams_in_use": gw.streams.in_use})


async def debug_audio_endpoint(request: Request) -> Response:
    """The audio a stream received, as a float32 WAV (only with debug_audio)."""
    import soundfile as sf

    gw: Gateway = request.app.state.gateway
    audio = gw.received.get(int(request.path_params["stream_id"]))
    if not gw.config.debug_audio or audio is None:
        return _error(
            404, "not_found", "no audio kept for that stream (the gateway keeps it only with --debug-audio)"
        )
    buf = io.BytesIO()
    sf.write(buf, audio, spec.SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return Response(buf.getvalue(), media_type="audio/wav")


async def index(request: Request) -> Response:
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


def create_app(config: GatewayConfig | None = None) -> Starlette:
    """The ASGI app; run it with uvicorn (``python -m mambaserve.clients.web``)."""
    gateway = Gateway(config or GatewayConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await gateway.open()
        try:
            yield
        finally:
            await gateway.close()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/config", config_endpoint),
            Route("/api/transcribe", transcribe_endpoint, methods=["POST"]),
            Route("/debug/audio/{stream_id:int}.wav", debug_audio_endpoint),
            WebSocketRoute("/ws/stream", stream_endpoint),
            Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
