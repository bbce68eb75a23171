"""Issue 15, server side: no client can take the server over, and a dead stub is repaired.

One server started exactly as `make serve` starts it (`python -m mambaserve.serving.server`: explicit
model control with every model loaded, the admin-key restriction, the watchdog in-process), on the
built repository. Each attack is refused, and afterwards the `asr` ensemble still gives the in-process
`Recognizer`'s transcript. Then a stub is SIGKILLed and must come back by itself.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import helpers
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from mambaserve.contract import spec
from mambaserve.serving import admin_key
from mambaserve.serving.stubs import SHM_DIR, proc_stat, remove_stale_shm_regions, stale_shm_regions
from mambaserve.serving.watchdog import live_stubs
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.server

RESTRICTED_HTTP = "This API is restricted"
RESTRICTED_GRPC = "This protocol is restricted"


# ---------------------------------------------------------------------------------------------
# The admin key (no server)
# ---------------------------------------------------------------------------------------------
def test_admin_key_is_generated_once_private_and_env_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(admin_key.ENV_KEY, raising=False)
    path = tmp_path / "conf" / "admin_key"
    monkeypatch.setenv(admin_key.ENV_FILE, str(path))
    with pytest.raises(admin_key.AdminKeyError, match="no admin key"):
        admin_key.load_admin_key(create=False)
    key = admin_key.load_admin_key()
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) >= 40
    assert admin_key.load_admin_key() == key == path.read_text().strip()  # reused, not regenerated
    assert list(path.parent.iterdir()) == [path]  # no temporary files left

    monkeypatch.setenv(admin_key.ENV_KEY, "from-the-environment-0123")
    assert admin_key.load_admin_key() == "from-the-environment-0123"
    for bad in ("short", "has:colon-and-is-long-enough", "has space and is long enough"):
        monkeypatch.setenv(admin_key.ENV_KEY, bad)
        with pytest.raises(admin_key.AdminKeyError, match="not usable"):
            admin_key.load_admin_key()


def test_launcher_command_restricts_the_admin_apis_on_http_and_grpc(tmp_path):
    from mambaserve.serving.server import TritonServer

    key = secrets.token_urlsafe(32)
    cmd = TritonServer(tmp_path, admin_key=key).command()
    apis = "model-repository,shared-memory,logging,trace"
    assert f"--http-restricted-api={apis}:x-admin-key={key}" in cmd
    assert f"--grpc-restricted-protocol={apis}:x-admin-key={key}" in cmd
    assert "--http-address=127.0.0.1" in cmd and "--grpc-address=127.0.0.1" in cmd


# ---------------------------------------------------------------------------------------------
# The server as `make serve` runs it
# ---------------------------------------------------------------------------------------------
class Served:
    """`python -m mambaserve.serving.server` in a subprocess, its stderr collected line by line."""

    def __init__(self, repository: Path, key: str):
        self.key = key
        p = helpers.ports()
        self.http_url, self.grpc_url = f"127.0.0.1:{p['http_port']}", f"127.0.0.1:{p['grpc_port']}"
        env = dict(
            os.environ,
            HTTP_PORT=str(p["http_port"]),
            GRPC_PORT=str(p["grpc_port"]),
            METRICS_PORT=str(p["metrics_port"]),
            MAMBASERVE_ADMIN_KEY=key,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mambaserve.serving.server", "--repository", str(repository)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 900) -> None:
        ok = helpers.wait_for(
            lambda: self.proc.poll() is not None or any("ready: HTTP" in x for x in self.lines), timeout, 0.5
        )
        assert ok and self.proc.poll() is None, self.stderr()[-4000:]

    @property
    def server_pid(self) -> int:
        """The tritonserver process the launcher started (its child)."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = proc_stat(int(entry.name))
                if fields and int(fields[1]) == self.proc.pid:
                    argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
                    if argv0.endswith(b"/tritonserver"):
                        return int(entry.name)
        raise AssertionError("the launcher has no tritonserver child")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def post(self, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(
            f"http://{self.http_url}{path}",
            data=json.dumps(body or {}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _fake_region(age: float = 3600.0) -> Path:
    path = SHM_DIR / f"triton_python_backend_shm_region_mambaserve-test-{uuid.uuid4()}"
    path.write_bytes(b"\0" * 4096)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


@pytest.fixture(scope="module")
def served(model_repository):
    stale = _fake_region()  # what a crashed server leaves behind: the launcher must remove it
    held = _fake_region()  # a region some live process holds open: it must stay
    with open(held, "rb"):
        server = Served(model_repository, secrets.token_urlsafe(32))
        try:
            server.wait_ready()
            server.stale_region, server.held_region_kept = stale, held.exists()
            yield server
        finally:
            server.stop()
            for path in (stale, held):
                path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def clip(speech_clips, recognizer) -> tuple[np.ndarray, str]:
    audio = speech_clips[1][1]
    return audio, recognizer.transcribe([audio])[0]


def transcribe(url: str, audio: np.ndarray) -> str:
    client = grpcclient.InferenceServerClient(url)
    try:
        x = grpcclient.InferInput(spec.AUDIO.name, [1, len(audio)], spec.AUDIO.wire_dtype)
        x.set_data_from_numpy(audio[None, :].astype(np.float32))
        out = client.infer(spec.ASR, [x], client_timeout=120).as_numpy(spec.TRANSCRIPT.name)
        return out[0, 0].decode()
    finally:
        client.close()


def still_serving(served: Served, clip) -> None:
    audio, expected = clip
    assert served.proc.poll() is None, served.stderr()[-3000:]
    assert served.ready()
    assert transcribe(served.grpc_url, audio) == expected


def test_make_serve_removes_stale_shm_regions_and_keeps_live_ones(served, clip):
    assert not served.stale_region.exists(), "a region nobody holds, left by a dead server, is removed"
    assert served.held_region_kept, "a region a live process holds open is kept"
    # every region the running server maps is live: never listed as stale, never removed
    maps = Path(f"/proc/{served.server_pid}/maps").read_text()
    mine = {p for p in SHM_DIR.glob("triton_*_shm_region_*") if str(p) in maps}
    assert mine, "the python backend's regions"
    assert not mine & set(stale_shm_regions(min_age=0.0))
    remove_stale_shm_regions()
    assert all(p.exists() for p in mine)
    still_serving(served, clip)


def test_model_load_without_the_key_is_refused_and_runs_nothing(served, clip, tmp_path):
    """The attack 2.51 allows in explicit mode: a load request carrying its own model.py."""
    marker = tmp_path / "attacker-code-ran"
    code = (
        f"open({str(marker)!r}, 'w')\nclass TritonPythonModel:\n    def execute(self, requests): return []\n"
    )
    body = {
        "parameters": {
            "config": json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0}),
            "file:1/model.py": base64.b64encode(code.encode()).decode(),
        }
    }
    status, text = served.post("/v2/repository/models/evil/load", body)
    assert status == 403 and RESTRICTED_HTTP in text
    status, text = served.post(f"/v2/repository/models/{spec.DECODER}/unload")
    assert status == 403 and RESTRICTED_HTTP in text
    status, _ = served.post(f"/v2/repository/models/{spec.DECODER}/unload", headers={"x-admin-key": "wrong"})
    assert status == 403

    client = grpcclient.InferenceServerClient(served.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match=RESTRICTED_GRPC):
            client.load_model(
                "evil", config=body["parameters"]["config"], files={"file:1/model.py": code.encode()}
            )
        with pytest.raises(InferenceServerException, match=RESTRICTED_GRPC):
            client.unload_model(spec.DECODER)
        # the HTTP header name alone is not the gRPC one: still refused
        with pytest.raises(InferenceServerException, match=RESTRICTED_GRPC):
            client.load_model("evil", headers={"x-admin-key": served.key})
    finally:
        client.close()
    assert not marker.exists()
    still_serving(served, clip)


def test_shared_memory_logging_and_trace_need_the_key(served, clip):
    import tritonclient.utils.shared_memory as shm

    name, key = f"/mambaserve-test-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region(key, name, 64)
    try:
        http = httpclient.InferenceServerClient(served.http_url)
        with pytest.raises(InferenceServerException, match=RESTRICTED_HTTP):
            http.register_system_shared_memory(key, name, 64)
        grpc = grpcclient.InferenceServerClient(served.grpc_url)
        try:
            with pytest.raises(InferenceServerException, match=RESTRICTED_GRPC):
                grpc.register_system_shared_memory(key, name, 64)
            with pytest.raises(InferenceServerException, match=RESTRICTED_GRPC):
                grpc.update_log_settings({"log_verbose_level": 1})
            with pytest.raises(InferenceServerException, match=RESTRICTED_GRPC):
                grpc.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        finally:
            grpc.close()
        http.close()
    finally:
        shm.destroy_shared_memory_region(handle)
    for path in ("/v2/logging", "/v2/trace/setting"):
        status, text = served.post(path, {"log_verbose_level": 1} if "logging" in path else {})
        assert status == 403 and RESTRICTED_HTTP in text, (path, status, text)
    still_serving(served, clip)


def test_with_the_key_the_repository_index_answers(served, clip):
    status, text = served.post("/v2/repository/index", headers=admin_key.admin_headers(served.key))
    assert status == 200
    states = {m["name"]: m.get("state") for m in json.loads(text)}
    assert states[spec.ASR] == "READY" and states[spec.DECODER] == "READY", states
    client = grpcclient.InferenceServerClient(served.grpc_url)
    try:
        index = client.get_model_repository_index(
            headers=admin_key.grpc_admin_headers(served.key), as_json=True
        )
    finally:
        client.close()
    assert {m["name"] for m in index["models"]} == set(states)
    still_serving(served, clip)


# ---------------------------------------------------------------------------------------------
# Supervision: a stub killed with SIGKILL comes back without anyone
# ---------------------------------------------------------------------------------------------
def _kill_and_recover(served: Served, model: str, audio: np.ndarray, expected: str) -> dict:
    victim = min(live_stubs(served.server_pid)[model])
    readiness: list[bool] = []
    answers: list[tuple[str, str]] = []  # ("ok", transcript) | ("error", message)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            readiness.append(served.ready())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    recovered = None
    try:
        deadline = killed + 300  # generous: a reload imports torch in a new stub on 2 busy cores
        while time.monotonic() < deadline:
            try:
                text = transcribe(served.grpc_url, audio)
                answers.append(("ok", text))
                # the first correct answer after the watchdog reloaded the model
                if text == expected and f"[watchdog] {model}: loaded" in served.stderr():
                    recovered = time.monotonic() - killed
                    break
            except InferenceServerException as e:
                answers.append(("error", str(e)))
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert recovered is not None, (answers[-3:], served.stderr()[-3000:])
    return {"seconds": recovered, "readiness": readiness, "answers": answers, "victim": victim}


@pytest.mark.parametrize("model", [spec.DECODER, spec.ENCODER])
def test_a_killed_stub_is_reloaded_by_the_in_process_watchdog(served, clip, model):
    audio, expected = clip
    still_serving(served, clip)
    result = _kill_and_recover(served, model, audio, expected)
    errors = [msg for kind, msg in result["answers"] if kind == "error"]
    print(
        f"\n[recovery] {model} stub SIGKILLed -> asr correct again after {result['seconds']:.1f} s "
        f"(readiness false seen: {False in result['readiness']}, failed requests meanwhile: {len(errors)})"
    )

    log = served.stderr()
    assert f"[watchdog] {model}: dead" in log and f"[watchdog] {model}: loaded" in log, log[-3000:]
    # honest meanwhile: readiness went false while the model was reloaded, or requests failed cleanly
    assert False in result["readiness"] or errors, "no sign of the outage at all"
    clean = ("is not healthy", "has no available versions", "not ready", "unknown model")
    assert all(any(c in e.lower() for c in clean) for e in errors), errors[:3]
    # never a wrong answer: every transcript given meanwhile is the right one
    assert {text for kind, text in result["answers"] if kind == "ok"} <= {expected}
    # the model runs in a new stub, and everything is ready again
    assert helpers.wait_for(served.ready, 120, 0.5)
    new = live_stubs(served.server_pid).get(model, set())
    assert new and result["victim"] not in new
    still_serving(served, clip)
