"""Run the real tritonserver (from the nvidia-pytriton wheel) on this machine, CPU only.

The wheel ships the C++ server, the python backend and a python stub per CPython version, but not in
a layout the server can use directly; :func:`prepare_backend_dir` builds that layout as a writable copy
under a cache folder, and :class:`TritonServer` starts the binary with the environment it needs
(see docs in build/README.md). On a GPU host the same model repository is served by NVIDIA's
tritonserver container instead, so nothing here is needed there.

CLI (what ``make serve`` runs): explicit model control with every model loaded, the model-repository,
shared-memory, logging and trace APIs restricted to the admin key (serving/admin_key.py), and the
watchdog as a thread (a model whose stub dies is reloaded)::

    python -m mambaserve.serving.server --repository model_repository
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mambaserve.serving.admin_key import (
    AdminKeyError,
    admin_headers,
    grpc_admin_headers,
    load_admin_key,
    restriction_flags,
)
from mambaserve.serving.stubs import remove_stale_shm_regions
from mambaserve.serving.watchdog import Watchdog

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002

_ORT_BACKEND_SHIM = (
    '"""Python-based stand-in for the C++ onnxruntime backend (installed by mambaserve.serving.server)."""\n'
    "from mambaserve.serving.backends.onnxruntime_backend import TritonPythonModel  # noqa: F401\n"
)

# "failed to load 'encoder' version 1: Invalid argument: ..." (quotes around the message vary by version)
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.*?)\"?$")
# The model table printed at start-up / shutdown: "| encoder | 1 | UNAVAILABLE: Internal: ... |"
_TABLE_FAILURE = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*UNAVAILABLE: (.*?)\s*\|\s*$")


class ServerError(RuntimeError):
    """tritonserver could not start, died, or did not become ready."""


class ModelLoadError(ServerError):
    """One or more models failed to load; ``failures`` maps model name to the server's reason."""

    def __init__(self, failures: dict[str, str], log_tail: str = ""):
        self.failures = dict(failures)
        lines = [f"model '{name}' failed to load: {reason}" for name, reason in self.failures.items()]
        msg = "\n".join(lines)
        if log_tail:
            msg += "\n--- tritonserver log (tail) ---\n" + log_tail
        super().__init__(msg)


# ---------------------------------------------------------------------------------------------
# Locating the server in the wheel and building the backend directory
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the installed nvidia-pytriton wheel."""

    root: Path  # site-packages/pytriton/tritonserver
    libs: Path  # site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    def stub(self, version: tuple[int, int] | None = None) -> Path:
        major, minor = version or sys.version_info[:2]
        return self.root / "python_backend_stubs" / f"{major}.{minor}" / "triton_python_backend_stub"

    @classmethod
    def find(cls) -> TritonInstall:
        try:
            import pytriton  # the `serve` extra
        except ImportError as e:
            raise ServerError(
                "tritonserver not found: install the serve extra (`pip install -e '.[serve]'`), "
                "which brings nvidia-pytriton with the real tritonserver inside"
            ) from e
        site = Path(pytriton.__file__).resolve().parent.parent
        install = cls(root=site / "pytriton" / "tritonserver", libs=site / "nvidia_pytriton.libs")
        for path in (install.binary, install.python_backend / "libtriton_python.so", install.stub()):
            if not path.exists():
                raise ServerError(f"incomplete nvidia-pytriton install: {path} is missing")
        return install


def default_cache_dir() -> Path:
    """`.cache/triton/` in the source checkout when writable, else ~/.cache/mambaserve/triton."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists() and os.access(checkout, os.W_OK):
        return checkout / ".cache" / "triton"
    return Path.home() / ".cache" / "mambaserve" / "triton"


def prepare_backend_dir(cache_dir: Path | None = None, install: TritonInstall | None = None) -> Path:
    """Build (once) a writable backend directory: python backend + stub, and the onnxruntime stand-in.

    The directory name carries a hash of its inputs, so a new wheel, Python or shim gives a new
    directory; it is built in a temporary folder and renamed into place, so that concurrent test
    sessions never see a half-written one.
    """
    install = install or TritonInstall.find()
    cache_dir = Path(cache_dir or default_cache_dir())
    sources = {
        "python/libtriton_python.so": install.python_backend / "libtriton_python.so",
        "python/triton_python_backend_utils.py": install.python_backend / "triton_python_backend_utils.py",
        "python/triton_python_backend_stub": install.stub(),
    }
    digest = hashlib.sha256(_ORT_BACKEND_SHIM.encode())
    for rel, src in sorted(sources.items()):
        st = src.stat()
        digest.update(f"{rel}:{st.st_size}:{int(st.st_mtime)}".encode())
    target = cache_dir / f"backends-py{sys.version_info[0]}.{sys.version_info[1]}-{digest.hexdigest()[:12]}"
    if (target / "python" / "triton_python_backend_stub").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache_dir))
    try:
        for rel, src in sources.items():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        (staging / "python" / "triton_python_backend_stub").chmod(0o755)
        (staging / "onnxruntime").mkdir()
        (staging / "onnxruntime" / "model.py").write_text(_ORT_BACKEND_SHIM)
        try:
            staging.rename(target)
        except OSError:  # another process won the race: use its copy
            if not (target / "python" / "triton_python_backend_stub").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its python stubs need (see the notes in build/README.md).

    - LD_LIBRARY_PATH: the wheel's bundled libraries (copied backend files lose their RPATH) and this
      Python's LIBDIR (so the stub embeds this interpreter's libpython, not the system one);
    - PATH: this interpreter's bin first — the stub runs Python in isolated mode (PYTHONPATH is
      ignored) and finds its prefix, hence the venv's site-packages, through `python3` on PATH.
    """
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [str(install.libs), libdir, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in ld if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # The stubs print Python tracebacks to stderr: unbuffered keeps them next to the server's lines.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (tests start servers on these)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The server process
# ---------------------------------------------------------------------------------------------
class TritonServer:
    """A tritonserver child process; a context manager that starts it, waits for readiness, stops it.

    >>> with TritonServer("model_repository", http_port=free_port(), grpc_port=free_port(),
    ...                   metrics_port=free_port()) as server:
    ...     client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    Raises :class:`ModelLoadError` (naming each model and the server's reason) when a model fails to
    load, and :class:`ServerError` with the log tail when the process dies or is not ready in time.
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        host: str = DEFAULT_HOST,
        model_control_mode: str | None = None,
        load_models: list[str] | tuple[str, ...] = (),
        log_path: str | os.PathLike | None = None,
        log_verbose: int = 0,
        echo: bool = False,
        startup_timeout: float = 180.0,
        backend_dir: str | os.PathLike | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        admin_key: str | None = None,
    ):
        if model_control_mode not in (None, "none", "poll", "explicit"):
            raise ValueError(
                f"model_control_mode must be None, 'poll' or 'explicit', not {model_control_mode!r}"
            )
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = int(http_port), int(grpc_port), int(metrics_port)
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self._own_log = log_path is None
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        )
        self.log_verbose = log_verbose
        self.echo = echo
        self.startup_timeout = startup_timeout
        self._backend_dir = Path(backend_dir) if backend_dir else None
        self.extra_args = tuple(extra_args)
        self._admin_key = admin_key
        self.removed_shm: list[Path] = []
        self._install: TritonInstall | None = None
        self._proc: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=400)
        self._failures: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- addresses -----------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.host}:{self.metrics_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def admin_key(self) -> str:
        """The key the restricted APIs demand: the one given, else :func:`load_admin_key` (created once)."""
        if self._admin_key is None:
            try:
                self._admin_key = load_admin_key(create=True)
            except AdminKeyError as e:
                raise ServerError(str(e)) from None
        return self._admin_key

    @property
    def admin_headers(self) -> dict[str, str]:
        """`{"x-admin-key": KEY}`: the HTTP header the restricted APIs demand."""
        return admin_headers(self.admin_key)

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """The gRPC metadata the restricted protocols demand (`triton-grpc-protocol-x-admin-key`)."""
        return grpc_admin_headers(self.admin_key)

    # -- command -------------------------------------------------------------------------------
    def backend_dir(self) -> Path:
        """The backend directory given, else the prepared copy (see :func:`prepare_backend_dir`)."""
        if self._backend_dir is None:
            self._backend_dir = prepare_backend_dir(install=self._install or TritonInstall.find())
        return self._backend_dir

    def command(self) -> list[str]:
        install = self._install or TritonInstall.find()
        backend_dir = self.backend_dir()
        cmd = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--cache-directory={install.caches}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--metrics-config=summary_latencies=true",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--log-verbose={self.log_verbose}",
            # model control, shared memory, logging and trace settings only with the admin key
            *restriction_flags(self.admin_key),
        ]
        if self.model_control_mode and self.model_control_mode != "none":
            cmd.append(f"--model-control-mode={self.model_control_mode}")
            cmd += [f"--load-model={name}" for name in self.load_models]
        cmd += list(self.extra_args)
        return cmd

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, wait: bool = True) -> TritonServer:
        if self._proc is not None and self._proc.poll() is None:
            raise ServerError("this TritonServer is already running")
        self._install = TritonInstall.find()
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._tail.clear()
        self._failures.clear()
        # A crashed or SIGKILLed server leaves its python-backend regions in /dev/shm (1 MB+ each,
        # forever): remove those no live process holds before adding ours.
        self.removed_shm = remove_stale_shm_regions()
        if self.removed_shm and self.echo:
            print(
                f"[mambaserve] removed {len(self.removed_shm)} stale /dev/shm region(s) of dead servers",
                file=sys.stderr,
            )
        self._proc = subprocess.Popen(
            cmd,
            # Not the caller's directory: the python stubs put their working directory first on
            # sys.path, and a python-based backend (the onnxruntime stand-in) is imported as `model`,
            # which a `model/` folder there (this checkout's) would shadow. Every path is absolute.
            cwd=self.backend_dir(),
            env=server_env(self._install),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop the server cleanly
        )
        self._pump = threading.Thread(target=self._pump_output, name="tritonserver-log", daemon=True)
        self._pump.start()
        if wait:
            try:
                self.wait_ready(self.startup_timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def _pump_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in iter(self._proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if self.echo:
                    print(line, flush=True)
                with self._lock:
                    self._tail.append(line)
                    for pattern in (_LOAD_FAILURE, _TABLE_FAILURE):
                        m = pattern.search(line)
                        if m:
                            self._failures.setdefault(m.group(1), m.group(3).strip())

    def log_tail(self, lines: int = 60) -> str:
        with self._lock:
            return "\n".join(list(self._tail)[-lines:])

    @property
    def load_failures(self) -> dict[str, str]:
        """Models the server reported as failed to load, with its reason (from the log)."""
        with self._lock:
            return dict(self._failures)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 5.0,
        admin: bool = False,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=timeout)
        headers = {"Content-Type": "application/json"} if body else {}
        if admin:
            headers.update(self.admin_headers)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def is_ready(self) -> bool:
        try:
            return self._http("GET", "/v2/health/ready", timeout=2.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the server answers ready; raise with the reason (and log tail) otherwise."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        while True:
            if self._proc is None:
                raise ServerError("server not started")
            code = self._proc.poll()
            if code is not None:
                if self._pump:
                    self._pump.join(timeout=5)
                if self.load_failures:
                    raise ModelLoadError(self.load_failures, self.log_tail(40))
                raise ServerError(
                    f"tritonserver exited with code {code} before becoming ready "
                    f"(repository {self.repository}, log {self.log_path})\n"
                    f"--- tritonserver log (tail) ---\n{self.log_tail(40)}"
                )
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver not ready after {timeout}s (log {self.log_path})\n"
                    f"--- tritonserver log (tail) ---\n{self.log_tail(40)}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL after `timeout`. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the stubs too: they are in its session
                proc.wait(timeout=10)
        # Python stubs normally exit with the server; kill any left in the server's session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._pump:
            self._pump.join(timeout=5)
        return proc.returncode

    def wait(self) -> int:
        """Wait for the process to exit on its own (foreground serving)."""
        assert self._proc is not None
        code = self._proc.wait()
        if self._pump:
            self._pump.join(timeout=5)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_log and exc[0] is None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    # -- model control (explicit mode) -----------------------------------------------------------
    def load_model(self, name: str, timeout: float = 300.0) -> None:
        """POST /v2/repository/models/NAME/load; raises ModelLoadError with the server's reason."""
        status, body = self._http(
            "POST", f"/v2/repository/models/{name}/load", body=b"{}", timeout=timeout, admin=True
        )
        if status != 200:
            raise ModelLoadError({name: _error_text(body)})

    def unload_model(self, name: str, timeout: float = 60.0) -> None:
        status, body = self._http(
            "POST", f"/v2/repository/models/{name}/unload", body=b"{}", timeout=timeout, admin=True
        )
        if status != 200:
            raise ServerError(f"unloading model '{name}' failed: {_error_text(body)}")

    def repository_index(self) -> list[dict]:
        """The server's view of the repository: [{name, version, state, reason}, ...]."""
        status, body = self._http("POST", "/v2/repository/index", body=b"{}", admin=True)
        if status != 200:
            raise ServerError(f"repository index failed: {_error_text(body)}")
        return json.loads(body)


def _error_text(body: bytes) -> str:
    try:
        return json.loads(body).get("error", body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# CLI: foreground serving (make serve)
# ---------------------------------------------------------------------------------------------
def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"error: environment variable {name}={value!r} is not a port number") from None


def start_watchdog(server: TritonServer, interval: float = 1.0) -> Watchdog:
    """The watchdog as a thread of this process: reloads a model whose stub died (needs explicit mode).

    Started right after readiness, so that it learns the healthy stubs before any can die.
    """
    if server.model_control_mode != "explicit":
        print(
            "[mambaserve] warning: not in explicit model control mode: the watchdog cannot reload a "
            "model whose stub died (restart the server instead)",
            file=sys.stderr,
        )
    dog = Watchdog(
        server.http_url,
        server.pid,
        interval=interval,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        admin_key=server.admin_key,
    )
    try:
        dog.check_once()  # learn the healthy stubs now
    except Exception as e:  # its thread tries again every interval
        print(f"[mambaserve] watchdog: first check failed: {e}", file=sys.stderr)
    return dog.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.serving.server",
        description="Run tritonserver (CPU, from the nvidia-pytriton wheel) in the foreground on a model "
        "repository. Ports come from HTTP_PORT / GRPC_PORT / METRICS_PORT (default 8000/8001/8002).",
    )
    parser.add_argument("--repository", default="model_repository", help="model repository folder")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--model-control-mode",
        choices=["none", "poll", "explicit"],
        default="explicit",
        help="default explicit: the watchdog can reload a model whose stub died (the repository API "
        "is restricted to the admin key)",
    )
    parser.add_argument(
        "--load-model", action="append", default=[], help="with explicit mode: model to load (default: *)"
    )
    parser.add_argument(
        "--no-watchdog", action="store_true", help="do not reload models whose stub process died"
    )
    parser.add_argument("--watchdog-interval", type=float, default=1.0, help="seconds between checks")
    parser.add_argument("--log-file", default=None, help="also write the server log here")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    args, extra = parser.parse_known_args(argv)
    repository = Path(args.repository)
    if not repository.is_dir() or not any(repository.glob("*/config.pbtxt")):
        print(
            f"[mambaserve] error: {repository} holds no models (no */config.pbtxt); build one with "
            "`make repo` (python -m mambaserve.build --checkpoint DIR --out model_repository)",
            file=sys.stderr,
        )
        return 1

    server = TritonServer(
        args.repository,
        http_port=_env_port("HTTP_PORT", DEFAULT_HTTP_PORT),
        grpc_port=_env_port("GRPC_PORT", DEFAULT_GRPC_PORT),
        metrics_port=_env_port("METRICS_PORT", DEFAULT_METRICS_PORT),
        host=args.host,
        model_control_mode=None if args.model_control_mode == "none" else args.model_control_mode,
        load_models=args.load_model or (["*"] if args.model_control_mode == "explicit" else []),
        log_path=args.log_file,
        log_verbose=args.log_verbose,
        echo=True,
        startup_timeout=args.startup_timeout,
        extra_args=extra,
    )
    stopping = threading.Event()
    dog = None

    def _on_signal(signum, _frame):
        stopping.set()
        if dog is not None:
            dog._stop.set()  # no reloads while the server shuts down
        print(f"\n[mambaserve] signal {signum}: stopping tritonserver...", file=sys.stderr, flush=True)
        if server.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        server.start(wait=True)
    except ModelLoadError as e:
        server.stop()
        print("\n[mambaserve] error: the server could not load its models", file=sys.stderr)
        for name, reason in e.failures.items():
            print(f"[mambaserve]   model '{name}': {reason}", file=sys.stderr)
        return 1
    except ServerError as e:
        server.stop()
        if stopping.is_set():
            return 0
        print(f"\n[mambaserve] error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if not args.no_watchdog:
        dog = start_watchdog(server, args.watchdog_interval)
    print(
        f"[mambaserve] ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics "
        f"http://{server.metrics_url}/metrics  (Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    code = server.wait()
    if dog is not None:
        dog.stop()
    server.stop()
    if stopping.is_set():
        return 0
    if server.load_failures:
        for name, reason in server.load_failures.items():
            print(f"[mambaserve] error: model '{name}': {reason}", file=sys.stderr)
    print(f"[mambaserve] tritonserver exited with code {code}", file=sys.stderr)
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
