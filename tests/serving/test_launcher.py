"""The launcher (mambaserve.serving.server) with small throwaway models: start, readiness, ports from the
environment, metrics flags, clear failures, foreground CLI. Real tritonserver, no torch models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
import tritonclient.http as httpclient
from mambaserve.build import model_config as mc
from mambaserve.contract.spec import ModelSpec, TensorSpec
from mambaserve.serving.server import (
    ModelLoadError,
    ServerError,
    TritonServer,
    prepare_backend_dir,
)

pytestmark = pytest.mark.server

ECHO_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        {init}

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)])
                for r in requests]
"""


def python_model(repo: Path, name: str, init: str = "pass") -> None:
    spec = ModelSpec(
        name, inputs=(TensorSpec("X", "TYPE_FP32", (-1,)),), outputs=(TensorSpec("Y", "TYPE_FP32", (-1,)),)
    )
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(ECHO_PY.format(init=init))
    (repo / name / "config.pbtxt").write_text(mc.to_text(mc.model_config(spec, backend="python")))


ports = helpers.ports


def infer_echo(url: str, model: str = "echo") -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    x = httpclient.InferInput("X", [1, 3], "FP32")
    x.set_data_from_numpy(np.array([[1, 2, 3]], np.float32))
    return client.infer(model, [x]).as_numpy("Y")


def test_backend_dir_has_the_python_backend_stub_and_the_onnxruntime_stand_in():
    d = prepare_backend_dir()
    assert (d / "python" / "libtriton_python.so").exists()
    stub = d / "python" / "triton_python_backend_stub"
    assert stub.exists() and os.access(stub, os.X_OK)
    assert "mambaserve.serving.backends.onnxruntime_backend" in (d / "onnxruntime" / "model.py").read_text()
    assert prepare_backend_dir() == d  # built once, reused


def test_context_manager_serves_and_exposes_metrics_with_latency_summaries(tmp_path):
    python_model(tmp_path, "echo")
    with TritonServer(tmp_path, **ports(), log_path=tmp_path / "log.txt") as server:
        assert server.is_ready()
        assert server.http_url.startswith("127.0.0.1:")
        np.testing.assert_array_equal(infer_echo(server.http_url), [[2, 4, 6]])
        metrics = helpers.metrics(server)
        assert metrics.value("nv_inference_request_success", model="echo", version="1") == 1
        assert (
            metrics.value("nv_inference_request_summary_us_count", model="echo") == 1
        )  # summary_latencies=true
    assert not server.is_alive()
    assert "echo" in (tmp_path / "log.txt").read_text()


def test_a_model_that_fails_to_load_is_named_with_the_reason(tmp_path):
    python_model(tmp_path, "echo")
    python_model(tmp_path, "broken", init='raise ValueError("weights file is missing")')
    with pytest.raises(ModelLoadError) as info:
        TritonServer(tmp_path, **ports()).start()
    assert "broken" in info.value.failures
    assert "weights file is missing" in info.value.failures["broken"]
    assert "model 'broken' failed to load" in str(info.value)


def test_a_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(tmp_path / "nope", **ports())


def _cli(repo: Path, env_ports: dict[str, int], *args: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        HTTP_PORT=str(env_ports["http_port"]),
        GRPC_PORT=str(env_ports["grpc_port"]),
        METRICS_PORT=str(env_ports["metrics_port"]),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "mambaserve.serving.server", "--repository", str(repo), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_exits_non_zero_naming_the_model_that_failed(tmp_path):
    python_model(tmp_path, "broken", init='raise RuntimeError("tokenizer.model not found")')
    proc = _cli(tmp_path, ports())
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "model 'broken'" in err and "tokenizer.model not found" in err


def test_cli_refuses_an_empty_repository(tmp_path):
    proc = _cli(tmp_path, ports())
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "holds no models" in err and "make repo" in err


def test_cli_serves_in_the_foreground_on_the_env_ports_and_stops_on_sigint(tmp_path):
    python_model(tmp_path, "echo")
    p = ports()
    proc = _cli(tmp_path, p)
    try:
        seen = []
        for line in proc.stderr:  # the launcher says when it is ready (or why it stopped)
            seen.append(line)
            if "ready: HTTP" in line:
                break
        assert "ready: HTTP" in "".join(seen), "".join(seen)
        np.testing.assert_array_equal(infer_echo(f"127.0.0.1:{p['http_port']}"), [[2, 4, 6]])
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"gRPC 127.0.0.1:{p['grpc_port']}" in "".join(seen)
    assert "stopping tritonserver" in err
