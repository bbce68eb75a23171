"""Fault: a python model's stub process is SIGKILLed under load.

What Triton 2.51 does by itself (every request then fails with "Stub process ... is not healthy",
readiness keeps saying 200), and how the watchdog turns that into an honest not-ready window
followed by recovery without anyone restarting the server; and a reload that fails is retried
(make serve's in-process watchdog) until the model loads again.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import helpers
import numpy as np
import pytest
from mambaserve.contract import spec
from mambaserve.serving.watchdog import Watchdog, live_stubs

pytestmark = pytest.mark.server  # a second server and a reload: ~50 s, in `make test`

NOT_HEALTHY = "is not healthy"


class Load:
    """Two client threads sending real speech; every outcome recorded with its time."""

    def __init__(self, server, clips: list[np.ndarray]):
        self.server, self.clips = server, clips
        self.outcomes: list[tuple[float, str, str]] = []  # (time, "ok"|"error", text or message)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]

    def _run(self, i: int) -> None:
        from mambaserve.clients import ASRClient

        with ASRClient(self.server.grpc_url, protocol="grpc", timeout=60) as asr:
            n = 0
            while not self.stop.is_set():
                try:
                    text = asr.transcribe(self.clips[(i + n) % len(self.clips)]).text
                    self.outcomes.append((time.time(), "ok", text))
                except Exception as e:  # what a client sees is the point of this test
                    self.outcomes.append((time.time(), "error", str(e)))
                    time.sleep(0.05)
                n += 1

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {self.outcomes[-3:]}"
            time.sleep(0.05)

    def since(self, t: float, kind: str) -> list[str]:
        return [msg for when, k, msg in list(self.outcomes) if when > t and k == kind]


def test_killed_stub_then_watchdog_recovers(model_repository, speech_clips, tmp_path):
    clips = [audio for _, audio in speech_clips[:3]]
    server = helpers.server(
        model_repository, model_control_mode="explicit", load_models=["*"], log_path=tmp_path / "server.log"
    )
    with server:
        stubs = live_stubs(server.pid)
        assert {spec.FEATURE_EXTRACTOR, spec.DECODER} <= set(stubs), stubs
        from mambaserve.clients import ASRClient

        with ASRClient(server.grpc_url) as asr:  # single-request answers, before any fault
            reference = {asr.transcribe(c).text for c in clips}
        load = Load(server, clips)
        for t in load.threads:
            t.start()
        try:
            load.wait_for(lambda: len(load.since(0, "ok")) >= 4, 120, "first answers")

            # 1. Triton alone: the decoder's stub dies; clients get errors, readiness still says ready
            killed_at = time.time()
            (victim,) = stubs[spec.DECODER]
            os.kill(victim, signal.SIGKILL)
            load.wait_for(lambda: len(load.since(killed_at, "error")) >= 3, 60, "failures after the kill")
            errors = load.since(killed_at, "error")
            assert all(NOT_HEALTHY in e and f"'{spec.DECODER}_" in e for e in errors), errors[:3]
            assert helpers.is_ready(server) and helpers.is_ready(
                server, f"/v2/models/{spec.ASR}/ready"
            )  # Triton 2.51 does not notice
            time.sleep(1.0)
            assert not load.since(killed_at + 0.5, "ok"), "nothing recovers by itself"

            # 2. the watchdog: dead stub found, model unloaded (readiness false), reloaded, serving again
            not_ready = threading.Event()

            def watch_readiness() -> None:
                while not load.stop.is_set():
                    if not helpers.is_ready(server):
                        not_ready.set()
                    time.sleep(0.02)

            threading.Thread(target=watch_readiness, daemon=True).start()
            dog = Watchdog(
                server.http_url, server.pid, interval=0.2, log=lambda s: None, admin_key=server.admin_key
            )
            dog._known = stubs  # what it learned while the server was healthy
            started = time.time()
            dog.start()
            try:
                load.wait_for(lambda: len(load.since(started, "ok")) >= 4, 300, "answers after the reload")
            finally:
                dog.stop()
        finally:
            load.stop.set()
            for t in load.threads:
                t.join(timeout=60)

        actions = [(e.model, e.action) for e in dog.events]
        assert (spec.DECODER, "dead") in actions and (spec.DECODER, "loaded") in actions, actions
        assert not_ready.is_set(), "readiness must say not ready while the model is reloaded"
        assert helpers.is_ready(server) and helpers.is_ready(server, f"/v2/models/{spec.ASR}/ready")
        new = live_stubs(server.pid)[spec.DECODER]
        assert new and victim not in new
        # while the watchdog reloads, clients are told the model is down (not a wrong answer)
        for e in load.since(started, "error"):
            assert NOT_HEALTHY in e or "has no available versions" in e or "not ready" in e, e
        # the reloaded model answers exactly as before; failures only while it was down
        after = load.since(max(e.time for e in dog.events), "ok")
        assert after and set(after) <= reference, (after[:3], reference)
        assert not load.since(max(e.time for e in dog.events) + 1.0, "error")


FLAKY_PY = """
import os
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        if os.path.exists({marker!r}):
            raise RuntimeError("weights are being replaced")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)])
                for r in requests]
"""


def test_a_failed_reload_is_retried_until_the_model_loads(tmp_path):
    """make serve's watchdog (start_watchdog): the stub dies while its model cannot load; readiness stays
    false (no half-working server), and once the model can load again it is back without anyone."""
    import tritonclient.http as httpclient
    from mambaserve.build import model_config as mc
    from mambaserve.contract.spec import ModelSpec, TensorSpec
    from mambaserve.serving.server import start_watchdog

    marker = tmp_path / "cannot-load"
    repo = tmp_path / "repo"
    model = ModelSpec(
        "echo", inputs=(TensorSpec("X", "TYPE_FP32", (-1,)),), outputs=(TensorSpec("Y", "TYPE_FP32", (-1,)),)
    )
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.py").write_text(FLAKY_PY.format(marker=str(marker)))
    (repo / "echo" / "config.pbtxt").write_text(mc.to_text(mc.model_config(model, backend="python")))

    def echo_works(url: str) -> bool:
        client = httpclient.InferenceServerClient(url)
        x = httpclient.InferInput("X", [1, 3], "FP32")
        x.set_data_from_numpy(np.array([[1, 2, 3]], np.float32))
        try:
            return client.infer("echo", [x]).as_numpy("Y").tolist() == [[2, 4, 6]]
        except Exception:
            return False

    server = helpers.server(repo, model_control_mode="explicit", load_models=["*"], log_path=tmp_path / "log")
    with server:
        lines: list[str] = []
        dog = start_watchdog(server, interval=0.2)
        dog.log, dog.retry_interval = lines.append, 0.5
        try:
            (victim,) = live_stubs(server.pid)["echo"]
            marker.touch()
            os.kill(victim, signal.SIGKILL)
            assert helpers.wait_for(lambda: any("echo: reload_failed" in x for x in lines), 120), lines
            assert not helpers.is_ready(server) and not echo_works(server.http_url)
            time.sleep(1.5)  # several retries, all failing: still honestly not ready
            assert not helpers.is_ready(server)
            marker.unlink()
            assert helpers.wait_for(lambda: echo_works(server.http_url), 120), lines
            assert helpers.is_ready(server)
            assert any("echo: loaded: after a failed reload" in x for x in lines), lines
        finally:
            dog.stop()
