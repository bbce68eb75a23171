"""Stateful users: live `asr_streaming` streams and `decoder_session` sessions, over gRPC streaming.

- `grpc_streaming`: each task streams one clip in chunks under a fresh correlation ID (START on the
  first chunk, END on the last) over a gRPC bidirectional stream; every chunk is one locust request
  ("asr_streaming chunk", its send-to-answer latency), the final answer is "asr_streaming final".
  ``--chunk-ms`` sets the chunk length; ``--stream-speed`` paces them (1 = real time, 0 = as fast as
  the answers come).
- `grpc_session`: opens a decoder session on a clip ("decoder_session open"), generates
  ``--session-prompts`` times from the kept state ("decoder_session generate": request to final
  token; the per-token time goes to the request context), then closes it.

Both hold one product client per user (greenlet), closed in on_stop while gevent still runs, and
report through `TritonUser.fire` like every other user.
"""

from __future__ import annotations

import time

from locust import events, task
from mambaserve.loadtest.users.base import SETTINGS, TritonUser

PROMPTS = ("", "Glossary: Mamba, Triton, state space.", "Transcribe numbers as digits.")


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("mambaserve streaming")
    group.add_argument("--chunk-ms", type=float, default=320.0, help="asr_streaming chunk length in ms")
    group.add_argument(
        "--stream-speed",
        type=float,
        default=1.0,
        help="asr_streaming pacing: 1 = real time, N = N x faster, 0 = as fast as answers come",
    )
    group.add_argument("--session-prompts", type=int, default=3, help="generations per decoder session")
    group.add_argument(
        "--session-max-tokens", type=int, default=0, help="MAX_TOKENS per generation (0: server default)"
    )


def _option(user, name: str, default):
    options = getattr(user.environment, "parsed_options", None)
    return getattr(options, name, default) if options is not None else default


class GrpcStreamingUser(TritonUser):
    """Live streams to `asr_streaming`: one locust request per chunk."""

    key = "grpc_streaming"
    request_type = "gRPC-stream"
    request_name = "asr_streaming chunk"

    def on_start(self) -> None:
        from mambaserve.clients import StreamingClient

        self._client = StreamingClient(SETTINGS.grpc_url, timeout=SETTINGS.timeout)

    @task
    def stream(self) -> None:
        clip = self.pick()
        chunk_ms = float(_option(self, "chunk_ms", 320.0))
        speed = float(_option(self, "stream_speed", 1.0))
        sent = time.perf_counter()
        try:
            for r in self._client.stream(clip.audio, chunk_ms=chunk_ms, speed=speed, prompt=clip.prompt):
                seconds = min(chunk_ms / 1000, max(0.0, clip.seconds - r.index * chunk_ms / 1000))
                name = "asr_streaming final" if r.is_final else self.request_name
                self.fire(name, r.latency_s * 1000.0, None, len(r.text), audio_seconds=seconds, clip=clip.id)
        except Exception as e:  # the stream failed: one failure, the user goes on with the next clip
            self.fire_since(self.request_name, sent, e, clip=clip.id)


class GrpcSessionUser(TritonUser):
    """Decoder sessions: open on a clip, several generations from the kept state, close."""

    key = "grpc_session"
    request_type = "gRPC-session"
    request_name = "decoder_session generate"

    def on_start(self) -> None:
        from mambaserve.clients import SessionClient

        self._client = SessionClient(SETTINGS.grpc_url, timeout=SETTINGS.timeout)

    @task
    def session(self) -> None:
        clip = self.pick()
        started = time.perf_counter()
        try:
            session = self._client.open(clip.audio)
        except Exception as e:
            self.fire_since("decoder_session open", started, e, clip=clip.id)
            return
        self.fire_since("decoder_session open", started, None, audio_seconds=clip.seconds, clip=clip.id)
        max_tokens = int(_option(self, "session_max_tokens", 0)) or None
        try:
            for k in range(int(_option(self, "session_prompts", 3))):
                started = time.perf_counter()
                try:
                    g = session.generate(PROMPTS[k % len(PROMPTS)] or None, max_tokens=max_tokens)
                except Exception as e:
                    self.fire_since(self.request_name, started, e, clip=clip.id)
                    continue
                self.fire_since(
                    self.request_name,
                    started,
                    None,
                    len(g.text),
                    clip=clip.id,
                    tokens=len(g.token_ids),
                    ms_per_token=(g.per_token_s or 0.0) * 1000,
                    history=g.history_length,
                )
        finally:
            started = time.perf_counter()
            try:
                session.close()
                self.fire_since("decoder_session close", started, None)
            except Exception as e:
                self.fire_since("decoder_session close", started, e)
