"""Offline recognition users: one whole clip per request to the `asr` ensemble, HTTP or gRPC.

Requests are built by `mambaserve.clients.request.build_request`, so the load is byte for byte what
the product client sends. Each user (a greenlet) owns one tritonclient connection: they are not
safe to share.
"""

from __future__ import annotations

from locust import task
from mambaserve.clients.request import build_request, parse_response
from mambaserve.contract import spec
from mambaserve.loadtest.users.base import SETTINGS, TritonUser, close_now


class HttpAsrUser(TritonUser):
    """`asr` over HTTP/REST (tritonclient.http, gevent-based: native to locust)."""

    key = "http_asr"
    request_type = "HTTP"

    def on_start(self) -> None:
        import tritonclient.http as module

        self._module = module
        self._client = module.InferenceServerClient(
            SETTINGS.http_url, connection_timeout=SETTINGS.timeout, network_timeout=SETTINGS.timeout)

    def on_stop(self) -> None:
        close_now(self)

    def call(self, clip) -> str:
        inputs, outputs = build_request(self._module, clip.audio, clip.prompt)
        result = self._client.infer(spec.ASR, inputs, outputs=outputs)
        return parse_response(result, model=spec.ASR, url=SETTINGS.http_url)

    @task
    def transcribe(self) -> None:
        self.timed(self.pick())


class GrpcAsrUser(TritonUser):
    """`asr` over gRPC (tritonclient.grpc; gevent-enabled by importing users.base)."""

    key = "grpc_asr"
    request_type = "gRPC"

    def on_start(self) -> None:
        import tritonclient.grpc as module

        self._module = module
        self._client = module.InferenceServerClient(SETTINGS.grpc_url)

    def on_stop(self) -> None:
        close_now(self)

    def call(self, clip) -> str:
        inputs, outputs = build_request(self._module, clip.audio, clip.prompt)
        result = self._client.infer(spec.ASR, inputs, outputs=outputs, client_timeout=SETTINGS.timeout)
        return parse_response(result, model=spec.ASR, url=SETTINGS.grpc_url)

    @task
    def transcribe(self) -> None:
        self.timed(self.pick())
