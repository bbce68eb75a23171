"""The front: nginx in front of N tritonserver replicas (session affinity, limits, refusals).

Why a real proxy: a sequence (`asr_streaming`) or a session (`decoder_session`) lives in one
replica's memory, so every request of it must reach that replica; offline `asr` requests should go to
the least busy one; and public traffic must not reach what crashes or administers tritonserver 2.51
(JSON nested ~120 000 deep, the repository / shared-memory / logging / trace APIs). nginx does the
routing (consistent hash on ``x-mambaserve-affinity``, least_conn otherwise), bounds bodies, limits
each client and, through njs (front.js), refuses deep JSON before Triton parses it.

The config is rendered from ``serving/nginx/front.conf.in`` (the same template renders the Kubernetes
ConfigMap in deploy/k8s/base/front/). Replicas listen on 127.0.0.1 ports only the front knows.

CLI (what ``make serve REPLICAS=2`` runs)::

    python -m mambaserve.serving.front --repository model_repository --replicas 2
    python -m mambaserve.serving.front render-k8s --out deploy/k8s/base/front   # the ConfigMap files
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mambaserve.contract import spec
from mambaserve.serving.server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    ServerError,
    TritonServer,
    free_port,
    start_watchdog,
)

AFFINITY_HEADER = "x-mambaserve-affinity"
"""The header the front hashes on; the clients set it from the correlation / session id."""
ADMIN_PATHS = ("/v2/repository", "/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/logging", "/v2/trace")
"""HTTP path prefixes the front answers 403 to."""
MAX_JSON_DEPTH = 16
"""Deepest JSON nesting the front passes on (a Triton inference request nests 4 to 6 levels)."""
JSON_BYTES_PER_SAMPLE = 24
"""Widest JSON text of one float32 sample plus its comma (``-1.2345678806304932e-05,``)."""
BODY_MARGIN_BYTES = 1 << 20
"""Room for the prompt, parameters and the JSON around the audio."""
FORWARD_ARGS = (
    f"--grpc-header-forward-pattern={spec.CLIENT_ID_HEADER}",
    f"--http-header-forward-pattern={spec.CLIENT_ID_HEADER}",
)
"""tritonserver flags that hand the front's x-client-id to the models as a request parameter."""
JS_MODULE_DEBIAN = "/usr/lib/nginx/modules/ngx_http_js_module.so"
"""Where Debian's libnginx-mod-http-js puts njs (the official nginx image: modules/ under its prefix)."""


def _mib(n_bytes: float) -> str:
    return f"{math.ceil(n_bytes / (1 << 20))}m"


def http_body_limit() -> str:
    """client_max_body_size of the HTTP server: the longest clip (spec.MAX_AUDIO_SECONDS) as JSON text."""
    samples = spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE
    return _mib(samples * JSON_BYTES_PER_SAMPLE + BODY_MARGIN_BYTES)


def grpc_body_limit() -> str:
    """client_max_body_size of the gRPC server: nginx counts a whole HTTP/2 stream, so one streaming
    sequence of the longest accepted utterance (float32 on the wire) + margin."""
    return _mib(spec.MAX_STREAM_SECONDS * spec.SAMPLE_RATE * 4 + BODY_MARGIN_BYTES)


@dataclass(frozen=True)
class Backend:
    """One replica's addresses as the front reaches them (host:port)."""

    http: str
    grpc: str


@dataclass
class FrontSettings:
    """Everything the template needs besides the backends."""

    listen_http: str = f"0.0.0.0:{DEFAULT_HTTP_PORT}"
    listen_grpc: str = f"0.0.0.0:{DEFAULT_GRPC_PORT}"
    rate_per_s: int = 200  # requests per second per client address (an HTTP/2 stream is one request)
    burst: int = 400
    conns: int = 256  # concurrent connections (HTTP/1) / streams (HTTP/2) per client address
    max_json_depth: int = MAX_JSON_DEPTH
    max_fails: int = 1
    fail_timeout_s: int = 10
    workers: str = "auto"
    # Paths (the Kubernetes rendering uses the nginx image's)
    prefix: str = "/tmp/mambaserve-front"
    js_module: str | None = JS_MODULE_DEBIAN
    js_dir: str | None = None  # where front.js is (default: the prefix)
    error_log: str | None = None  # default: PREFIX/error.log
    access_log: str | None = None  # default: PREFIX/access.log
    extra: dict[str, str] = field(default_factory=dict)


def template_text(name: str = "front.conf.in") -> str:
    return resources.files("mambaserve.serving").joinpath("nginx", name).read_text()


def render(
    backends: list[Backend] | list[str], settings: FrontSettings, *, replica_index: bool = True
) -> str:
    """The nginx.conf for these backends. Strings instead of Backends are DNS names (Kubernetes):
    "name" means name:8000 (HTTP) and name:8001 (gRPC)."""
    items = [b if isinstance(b, Backend) else Backend(f"{b}:8000", f"{b}:8001") for b in backends]
    if not items:
        raise ValueError("the front needs at least one backend")
    health = f"max_fails={settings.max_fails} fail_timeout={settings.fail_timeout_s}s"
    http_servers = "\n".join(f"        server {b.http} {health};" for b in items)
    grpc_servers = "\n".join(f"        server {b.grpc} {health};" for b in items)
    lines = ["    map $replica_index $replica_http {", "        default '';"]
    if replica_index:
        lines += [f"        {i} {b.http};" for i, b in enumerate(items)]
    lines.append("    }")
    prefix = settings.prefix.rstrip("/")
    values = {
        "LOAD_JS_MODULE": f"load_module {settings.js_module};" if settings.js_module else "",
        "WORKERS": settings.workers,
        "PID_FILE": f"{prefix}/nginx.pid",
        "ERROR_LOG": settings.error_log or f"{prefix}/error.log",
        "ACCESS_LOG": settings.access_log or f"{prefix}/access.log",
        "TEMP_DIR": prefix,
        "JS_DIR": settings.js_dir or prefix,
        "HTTP_SERVERS": http_servers,
        "GRPC_SERVERS": grpc_servers,
        "REPLICA_MAP": "\n".join(lines),
        "RATE": str(settings.rate_per_s),
        "BURST": str(settings.burst),
        "CONNS": str(settings.conns),
        "MAX_JSON_DEPTH": str(settings.max_json_depth),
        "MAX_FAILS": str(settings.max_fails),
        "FAIL_TIMEOUT": f"{settings.fail_timeout_s}s",
        "LISTEN_HTTP": settings.listen_http,
        "LISTEN_GRPC": settings.listen_grpc,
        "HTTP_BODY_LIMIT": http_body_limit(),
        "GRPC_BODY_LIMIT": grpc_body_limit(),
        "MAX_STREAM_SECONDS": f"{spec.MAX_STREAM_SECONDS:g}",
        **settings.extra,
    }
    text = template_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@([A-Z_]+)@", text)
    if left:
        raise ValueError(f"front.conf.in placeholders without a value: {sorted(set(left))}")
    return text


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if path is None:
        raise ServerError("nginx not found: `make system-deps` installs Debian's nginx-light + njs")
    if not Path(JS_MODULE_DEBIAN).exists():
        raise ServerError(f"njs not found at {JS_MODULE_DEBIAN}: apt-get install libnginx-mod-http-js")
    return path


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        return True
    return False


class Front:
    """A running nginx with the rendered config in its own temp prefix (a context manager)."""

    def __init__(self, backends: list[Backend], settings: FrontSettings | None = None):
        self.backends = list(backends)
        self.settings = settings or FrontSettings()
        self.prefix: Path | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return _client_address(self.settings.listen_http)

    @property
    def grpc_url(self) -> str:
        return _client_address(self.settings.listen_grpc)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> Front:
        binary = nginx_binary()
        self.prefix = Path(tempfile.mkdtemp(prefix="mambaserve-front-"))
        self.prefix.chmod(0o755)  # nginx workers run as nobody when the master is root
        self.settings.prefix = str(self.prefix)
        (self.prefix / "front.js").write_text(template_text("front.js"))
        conf = self.prefix / "nginx.conf"
        conf.write_text(render(self.backends, self.settings))
        check = subprocess.run(
            [binary, "-t", "-q", "-p", str(self.prefix), "-c", str(conf)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise ServerError(f"nginx refused the rendered config {conf}:\n{check.stderr}")
        self._proc = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not (_port_open(self.http_url) and _port_open(self.grpc_url)):
            if self._proc.poll() is not None:
                raise ServerError(f"nginx exited with code {self._proc.returncode}: {self.error_log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"nginx not listening after {timeout} s: {self.error_log()}")
            time.sleep(0.05)
        return self

    def error_log(self) -> str:
        path = self.prefix / "error.log" if self.prefix else None
        return path.read_text()[-4000:] if path and path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "access.log" if self.prefix else None
        return path.read_text() if path and path.exists() else ""

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: workers finish what is in flight
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def __enter__(self) -> Front:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.prefix and exc[0] is None:
            shutil.rmtree(self.prefix, ignore_errors=True)


def _client_address(listen: str) -> str:
    host, port = listen.rsplit(":", 1)
    return f"{'127.0.0.1' if host in ('0.0.0.0', '*', '') else host}:{port}"


class Replicas:
    """N tritonservers on private 127.0.0.1 ports + the front on the public ones (a context manager).

    Replicas start together (each is its own process group) and are waited for in turn.
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        n: int,
        settings: FrontSettings | None = None,
        *,
        log_dir: str | os.PathLike | None = None,
        echo: bool = False,
        startup_timeout: float = 600.0,
        model_control_mode: str | None = None,
        load_models: tuple[str, ...] = (),
        server_args: tuple[str, ...] = (),
    ):
        if n < 1:
            raise ValueError(f"replicas must be >= 1, got {n}")
        log_dir = Path(log_dir) if log_dir else None
        self.servers = [
            TritonServer(
                repository,
                http_port=free_port(),
                grpc_port=free_port(),
                metrics_port=free_port(),
                host=DEFAULT_HOST,
                log_path=(log_dir / f"tritonserver-{i}.log") if log_dir else None,
                echo=echo,
                startup_timeout=startup_timeout,
                model_control_mode=model_control_mode,
                load_models=load_models,
                # The models' per-client caps count the x-client-id the front sets.
                extra_args=(*FORWARD_ARGS, *server_args),
            )
            for i in range(n)
        ]
        self.front = Front([Backend(s.http_url, s.grpc_url) for s in self.servers], settings)

    def start(self) -> Replicas:
        try:
            for server in self.servers:
                server.start(wait=False)
            for server in self.servers:
                server.wait_ready()
            self.front.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.front.stop()
        threads = [threading.Thread(target=s.stop) for s in self.servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def __enter__(self) -> Replicas:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if exc[0] is None and self.front.prefix:
            shutil.rmtree(self.front.prefix, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Kubernetes rendering (deploy/k8s/base/front/): the same template, DNS names instead of ports
# ---------------------------------------------------------------------------------------------
K8S_BACKEND = "mambaserve-triton-pods"
"""The headless Service whose DNS name resolves to every ready tritonserver pod (deploy/k8s/base)."""


def render_k8s() -> str:
    """nginx.conf for the front Deployment: the official nginx image's paths, the headless Service as
    the one backend name (nginx resolves it to every pod address when it (re)loads)."""
    settings = FrontSettings(
        listen_http="0.0.0.0:8000",
        listen_grpc="0.0.0.0:8001",
        prefix="/tmp/front",
        js_module="modules/ngx_http_js_module.so",
        js_dir="/etc/nginx/front",
        error_log="/dev/stderr",
        access_log="/dev/stdout",
        workers="2",
    )
    return render([K8S_BACKEND], settings, replica_index=False)


def write_k8s(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"nginx.conf": render_k8s(), "front.js": template_text("front.js")}
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render-k8s"]:
        p = argparse.ArgumentParser(prog="python -m mambaserve.serving.front render-k8s")
        p.add_argument("--out", default="deploy/k8s/base/front")
        args = p.parse_args(argv[1:])
        for path in write_k8s(Path(args.out)):
            print(path)
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.serving.front",
        description="N tritonserver replicas on private 127.0.0.1 ports behind nginx on HTTP_PORT / "
        "GRPC_PORT (default 8000/8001): session affinity, least-load for offline requests, limits.",
    )
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--host", default=DEFAULT_HOST, help="address the front listens on")
    parser.add_argument("--rate", type=int, default=FrontSettings.rate_per_s, help="requests/s per client")
    parser.add_argument("--burst", type=int, default=FrontSettings.burst)
    parser.add_argument(
        "--conns", type=int, default=FrontSettings.conns, help="connections/streams per client"
    )
    args = parser.parse_args(argv)
    settings = FrontSettings(
        listen_http=f"{args.host}:{_env_port('HTTP_PORT', DEFAULT_HTTP_PORT)}",
        listen_grpc=f"{args.host}:{_env_port('GRPC_PORT', DEFAULT_GRPC_PORT)}",
        rate_per_s=args.rate,
        burst=args.burst,
        conns=args.conns,
    )
    # As `make serve`: explicit model control, so that each replica's watchdog can reload a model whose
    # stub died; a replica that exits is started again on its ports (nginx skips it meanwhile).
    replicas = Replicas(
        args.repository, args.replicas, settings, model_control_mode="explicit", load_models=("*",)
    )
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        replicas.start()
    except ServerError as e:
        print(f"[mambaserve] error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(
        f"[mambaserve] front: HTTP {replicas.front.http_url}  gRPC {replicas.front.grpc_url}", file=sys.stderr
    )
    for i, s in enumerate(replicas.servers):
        print(
            f"[mambaserve]   replica {i}: HTTP {s.http_url} gRPC {s.grpc_url} metrics http://{s.metrics_url}/metrics "
            f"(pid {s.pid}, log {s.log_path})",
            file=sys.stderr,
        )
    dogs = [start_watchdog(s) for s in replicas.servers]
    print("[mambaserve] ready (Ctrl-C stops)", file=sys.stderr, flush=True)
    code = 0
    while not stopping.wait(1.0):
        if not replicas.front.is_alive():
            print(f"[mambaserve] error: nginx exited: {replicas.front.error_log()}", file=sys.stderr)
            code = 1
            break
        for i, server in enumerate(replicas.servers):
            if server.is_alive() or stopping.is_set():
                continue
            dogs[i].stop()
            print(
                f"[mambaserve] replica {i} exited: starting it again (log {server.log_path})", file=sys.stderr
            )
            try:
                server.stop()
                server.start(wait=True)
            except ServerError as e:
                print(
                    f"[mambaserve] error: replica {i} did not start: {str(e).splitlines()[0]}",
                    file=sys.stderr,
                )
                continue
            dogs[i] = start_watchdog(server)
            print(f"[mambaserve] replica {i} ready again", file=sys.stderr, flush=True)
    for dog in dogs:
        dog.stop()
    replicas.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
