"""The front (serving/front.py: real nginx + njs before a real tritonserver) refuses what would crash or
administer the server, limits clients, and passes normal traffic unchanged."""

from __future__ import annotations

import http.client
import http.server
import json
import threading

import helpers
import numpy as np
import pytest
from mambaserve.clients.client import ASRClient
from mambaserve.contract import spec
from mambaserve.serving import front

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def served(model_repository, tmp_path_factory):
    """One replica behind the front; yields the Replicas."""
    settings = front.FrontSettings(
        listen_http=f"127.0.0.1:{helpers.free_port()}", listen_grpc=f"127.0.0.1:{helpers.free_port()}"
    )
    replicas = front.Replicas(model_repository, 1, settings, log_dir=tmp_path_factory.mktemp("front"))
    with replicas:
        yield replicas


@pytest.fixture(scope="module")
def clip(speech_clips) -> tuple[np.ndarray, str]:
    """A clip and its transcript straight from the replica (no front)."""
    text, audio = speech_clips[1]
    return audio, text


def post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes, dict]:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def get(url: str, path: str) -> int:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def json_infer(audio: np.ndarray) -> bytes:
    tensor = {"name": spec.AUDIO.name, "datatype": "FP32", "shape": [1, len(audio)], "data": audio.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def alive(replicas: front.Replicas) -> bool:
    return all(s.is_alive() and s.is_ready() for s in replicas.servers)


def test_deep_json_is_refused_by_the_front_and_the_server_lives(served, clip):
    url = served.front.http_url
    deep = b'{"inputs":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    for path in ("/v2/models/asr/infer", "/v2/models/asr/generate", "/v2/health/ready"):
        status, body, _ = post(url, path, deep if "models" in path else b"[" * 3000)
        assert 400 <= status < 500, (path, status, body[:200])
    status, body, _ = post(url, "/v2/models/asr/infer", deep)
    assert status == 400 and b"mambaserve front: JSON nested more than 16" in body
    # Binary tensor extension: the JSON header is checked, the raw tensor bytes after it are not.
    header = b'{"inputs":[{"name":"AUDIO","parameters":{"x":' + b"[" * 50 + b"]" * 50 + b"}}]}"
    status, body, _ = post(
        url,
        "/v2/models/asr/infer",
        header + b"[[[[" * 100,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and b"nested" in body
    # Shallow nesting passes (to Triton, which answers for itself); brackets inside strings do not count.
    status, body, _ = post(url, "/v2/models/asr/infer", b'{"inputs":[{"name":"' + b"[" * 100 + b'"}]}')
    assert status == 400 and b"mambaserve front" not in body
    assert alive(served)


def test_a_30_second_clip_as_json_passes_and_a_larger_body_is_refused(served):
    audio = (
        np.random.default_rng(0).uniform(-1, 1, int(spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE)) * 1e-3
    ).astype(np.float32)
    status, body, _ = post(served.front.http_url, "/v2/models/asr/infer", json_infer(audio))
    assert status == 200, body[:300]
    oversize = b'{"inputs":[' + b"0," * (8 << 20) + b"0]}"
    status, _, _ = post(served.front.http_url, "/v2/models/asr/infer", oversize)
    assert status == 413
    assert alive(served)


def test_grpc_body_over_the_limit_is_refused(served):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    seconds = 2 * spec.MAX_STREAM_SECONDS  # twice the longest stream: over the front's gRPC limit
    audio = np.zeros((1, int(seconds * spec.SAMPLE_RATE)), np.float32)
    x = grpcclient.InferInput(spec.AUDIO.name, list(audio.shape), "FP32")
    x.set_data_from_numpy(audio)
    client = grpcclient.InferenceServerClient(served.front.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer(spec.ASR, [x], client_timeout=120)
    finally:
        client.close()
    assert "413" in str(err.value) or "RESOURCE_EXHAUSTED" in str(err.value), str(err.value)
    assert alive(served)


def test_the_grpc_limit_counts_a_whole_stream(served, clip):
    """nginx counts client_max_body_size over an HTTP/2 stream, not per message: a stream of small
    chunks is cut once their sum passes the limit (here lowered to 1 MiB; the front's is 38 MiB)."""
    from mambaserve.clients.request import ASRError
    from mambaserve.clients.streaming import StreamingClient

    [server] = served.servers
    settings = front.FrontSettings(
        listen_http=f"127.0.0.1:{helpers.free_port()}",
        listen_grpc=f"127.0.0.1:{helpers.free_port()}",
        extra={"GRPC_BODY_LIMIT": "1m"},
    )
    audio = np.tile(clip[0], int(np.ceil(24 * spec.SAMPLE_RATE / len(clip[0]))))  # 24 s: 1.5 MiB
    backend = front.Backend(server.http_url, server.grpc_url)
    with front.Front([backend], settings) as small, StreamingClient(small.grpc_url) as client:
        assert client.transcribe(audio[: 8 * spec.SAMPLE_RATE], chunk_ms=1000)[-1].is_final  # 0.5 MiB
        with pytest.raises(ASRError):
            client.transcribe(audio, chunk_ms=1000)  # each chunk 64 KiB, all of them 1.5 MiB
    assert alive(served)


def test_compressed_bodies_are_refused(served, clip):
    status, body, _ = post(
        served.front.http_url, "/v2/models/asr/infer", b"\x1f\x8b", {"Content-Encoding": "gzip"}
    )
    assert status == 415, body


@pytest.mark.parametrize(
    "path",
    [
        "/v2/repository/index",
        "/v2/repository/models/asr/unload",
        "/v2/systemsharedmemory/register",
        "/v2/cudasharedmemory/status",
        "/v2/logging",
        "/v2/trace/setting",
        "/v2/models/asr/trace/setting",
    ],
)
def test_admin_apis_are_forbidden_through_the_front(served, path):
    status, body, _ = post(served.front.http_url, path, b"{}")
    assert status == 403, (path, status, body)
    assert get(served.front.http_url, path) == 403
    assert alive(served)


def test_only_known_endpoints_pass(served):
    url = served.front.http_url
    assert get(url, "/v2/health/ready") == 200
    assert get(url, "/v2/health/live") == 200
    assert get(url, "/v2/models/asr") == 200
    assert get(url, "/v2/models/asr/config") == 200
    assert get(url, "/metrics") == 404
    assert get(url, "/v2/models/asr/unknown") == 404
    assert get(url, "/front/replicas/0/ready") == 200
    assert get(url, "/front/replicas/7/ready") == 404


def test_grpc_admin_methods_are_denied(served):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(served.front.grpc_url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready(spec.ASR)
        for call in (
            client.get_model_repository_index,
            lambda: client.unload_model(spec.ASR),
            client.get_system_shared_memory_status,
            client.get_trace_settings,
            client.get_log_settings,
        ):
            with pytest.raises(InferenceServerException) as err:
                call()
            assert "PERMISSION_DENIED" in str(err.value.status()) or "403" in str(err.value), str(err.value)
    finally:
        client.close()
    assert alive(served)


def test_a_clip_transcribes_through_the_front_as_it_does_directly(served, clip):
    audio, _ = clip
    [server] = served.servers
    with ASRClient(server.grpc_url) as direct:
        expected = direct.transcribe(audio).text
    assert expected
    for protocol, url in (("grpc", served.front.grpc_url), ("http", served.front.http_url)):
        with ASRClient(url, protocol=protocol) as client:
            assert client.transcribe(audio).text == expected
    status, body, headers = post(served.front.http_url, "/v2/models/asr/infer", json_infer(audio))
    assert status == 200
    assert json.loads(body)["outputs"][0]["data"][0] == expected
    # Inside addresses only on readiness (which replica answered), not on public answers.
    assert "x-mambaserve-replica" not in {k.lower() for k in headers}


class _Echo(http.server.BaseHTTPRequestHandler):
    """A stand-in backend that answers with the headers it received."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # read the request body: on a kept-alive upstream connection an unread body would be taken
        # for the start of the next request (501)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_front():
    """The real front (low limits) before a header-echoing HTTP backend."""
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{backend.server_address[1]}"
    settings = front.FrontSettings(
        listen_http=f"127.0.0.1:{helpers.free_port()}",
        listen_grpc=f"127.0.0.1:{helpers.free_port()}",
        rate_per_s=2,
        burst=3,
    )
    with front.Front([front.Backend(address, f"127.0.0.1:{helpers.free_port()}")], settings) as f:
        yield f
    backend.shutdown()


def test_the_front_sets_the_client_id_from_the_address(echo_front):
    status, body, _ = post(
        echo_front.http_url, "/v2/models/asr/infer", b"{}", {"x-client-id": "someone-else"}
    )
    assert status == 200
    assert json.loads(body)[spec.CLIENT_ID_HEADER] == "127.0.0.1"


def test_each_client_is_rate_limited(echo_front):
    statuses = [post(echo_front.http_url, "/v2/models/asr/infer", b"{}")[0] for _ in range(20)]
    assert statuses.count(200) >= 3  # the burst
    assert 429 in statuses
