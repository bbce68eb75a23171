"""Offline recognition users: one whole clip per request to the `asr` ensemble, over HTTP or gRPC.

One definition for both protocols: each user drives the product client (`mambaserve.clients.ASRClient`,
whose requests `mambaserve.clients.request.build_request` builds), so the load is byte for byte what
users send. Each user (a greenlet) owns its client and connection: they are not safe to share.
"""

from __future__ import annotations

from locust import task
from mambaserve.clients.client import ASRClient
from mambaserve.contract import spec
from mambaserve.loadtest.users.base import SETTINGS, TritonUser


class AsrUser(TritonUser):
    """`asr` over ``protocol`` (a subclass sets it, with its `key` and `request_type`)."""

    abstract = True
    protocol = ""
    request_name = spec.ASR

    def on_start(self) -> None:
        url = SETTINGS.http_url if self.protocol == "http" else SETTINGS.grpc_url
        self._client = ASRClient(url, protocol=self.protocol, timeout=SETTINGS.timeout)

    def call(self, clip) -> str:
        return self._client.transcribe(clip.audio, prompt=clip.prompt).text

    @task
    def transcribe(self) -> None:
        self.timed(self.pick())


class HttpAsrUser(AsrUser):
    """`asr` over HTTP/REST (tritonclient.http, gevent-based: native to locust)."""

    key = "http_asr"
    request_type = "HTTP"
    protocol = "http"


class GrpcAsrUser(AsrUser):
    """`asr` over gRPC (tritonclient.grpc; gevent-enabled by importing users.base)."""

    key = "grpc_asr"
    request_type = "gRPC"
    protocol = "grpc"
