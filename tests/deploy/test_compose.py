"""deploy/docker-compose.yml cannot run here (no Docker engine): check that it uses exactly the files,
ports and flags the other tests exercise, so that nothing in it is untested by construction; and run the
container's entry script (deploy/serve.sh) itself against the real tritonserver of this machine."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import yaml
from mambaserve.loadtest.prom import PROMETHEUS_CONFIG
from mambaserve.serving.server import TritonInstall, TritonServer, prepare_backend_dir, server_env

DEPLOY = helpers.ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SERVE_SH = DEPLOY / "serve.sh"
DOCKERFILE = (DEPLOY / "Dockerfile.triton").read_text()

CPU_ONLY = (
    "--model-repository",
    "--backend-directory",
    "--cache-directory",
    "--http-address",
    "--grpc-address",
    "--metrics-address",
    "--allow-gpu-metrics",
    "--pinned-memory-pool-byte-size",
    "--log-verbose",
    "--http-port",
    "--grpc-port",
    "--metrics-port",
)
"""Launcher flags that differ on purpose in the container (paths of the pip wheel, CPU-only settings,
addresses: the container listens on all interfaces); the ports are checked separately."""


def _triton_command() -> str:
    """The tritonserver command line the container runs: deploy/serve.sh (comments dropped)."""
    lines = [line for line in SERVE_SH.read_text().splitlines() if not line.lstrip().startswith("#")]
    return " ".join(lines)


def _mount(service: str, target: str) -> Path:
    for volume in SERVICES[service]["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_tritonserver_runs_with_the_launchers_flags(tmp_path):
    key = secrets.token_urlsafe(32)
    launcher = TritonServer(
        tmp_path, http_port=8000, grpc_port=8001, metrics_port=8002, admin_key=key
    ).command()
    command = _triton_command()
    for flag in launcher[1:]:
        if not flag.startswith(CPU_ONLY):
            flag = flag.replace(key, "$KEY")  # the container's key comes from its environment
            assert flag in command, f"{flag} (launcher) missing from deploy/serve.sh"
    for name, port in (("HTTP", 8000), ("GRPC", 8001), ("METRICS", 8002)):
        assert f"-port=${{{name}_PORT:-{port}}}" in command
        assert f"127.0.0.1:{port}:{port}" in SERVICES["tritonserver"]["ports"]
    # explicit model control + every model, restricted, as make serve; the watchdog watches this server
    assert "--model-control-mode=explicit" in command and '"--load-model=*"' in command
    assert "--http-restricted-api=model-repository,shared-memory,logging,trace:x-admin-key=$KEY" in command
    assert (
        "--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:x-admin-key=$KEY" in command
    )
    assert "python3 -m mambaserve.serving.watchdog" in command and "--server-pid $$ &" in command
    assert "exec tritonserver" in command
    # the image runs the script by default, and compose runs the image's script
    assert "COPY deploy/serve.sh /usr/local/bin/mambaserve-serve" in DOCKERFILE
    assert re.search(r'^CMD \["mambaserve-serve"\]$', DOCKERFILE, re.M)
    assert SERVICES["tritonserver"]["command"] == ["mambaserve-serve"]
    assert (DEPLOY.parent / SERVICES["tritonserver"]["build"]["dockerfile"]).exists()
    assert _mount("tritonserver", "/models") == (DEPLOY.parent / "model_repository").resolve()


def test_ports_are_published_on_the_loopback_only():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_the_container_runs_unprivileged_with_the_key_from_an_env_file():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert "useradd" in DOCKERFILE and "--uid 10001" in DOCKERFILE
    triton = SERVICES["tritonserver"]
    assert triton["user"] == users[-1] == "10001:10001"
    assert triton["cap_drop"] == ["ALL"] and "no-new-privileges:true" in triton["security_opt"]
    # the key: an env file beside the compose file, ignored by git, never written into the compose file
    assert triton["env_file"] == ["admin.env"]
    assert "MAMBASERVE_ADMIN_KEY" not in str(triton.get("environment", {}))
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/admin.env"], cwd=helpers.ROOT)
    assert ignored.returncode == 0, "deploy/admin.env must be in .gitignore"
    for name, service in SERVICES.items():
        assert not service.get("privileged"), name


def test_prometheus_uses_the_tested_config_and_rules():
    assert _mount("prometheus", "/etc/prometheus") == PROMETHEUS_CONFIG.parent.resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tritonserver"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert (
        host in SERVICES
        and host == "tritonserver"
        and f"127.0.0.1:{port}:{port}" in SERVICES["tritonserver"]["ports"]
    )
    assert any(PROMETHEUS_CONFIG.parent.glob(config["rule_files"][0]))


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard():
    provisioning = _mount("grafana", "/etc/grafana/provisioning")
    dashboards_mount = "/etc/grafana/dashboards"
    dashboards = _mount("grafana", dashboards_mount)
    (ds,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mambaserve.yml").read_text())["providers"]
    assert provider["options"]["path"] == dashboards_mount
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(dashboards_mount)).is_file()


def test_the_image_copies_every_layer_folder():
    """deploy/Dockerfile.triton installs the package: every folder of [tool.setuptools.package-dir]."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    folders = set(
        tomllib.loads((helpers.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
            "package-dir"
        ].values()
    )
    copied = set(re.findall(r"^COPY (\S+) \./\1$", (DEPLOY / "Dockerfile.triton").read_text(), re.M))
    assert folders <= copied, sorted(folders - copied)


# ---------------------------------------------------------------------------------------------
# deploy/serve.sh for real: this machine's tritonserver stands in for the container's
# ---------------------------------------------------------------------------------------------
def _serve_sh(tmp_path: Path, repo: Path, ports: dict[str, int], key: str | None) -> subprocess.Popen:
    """Run deploy/serve.sh with `tritonserver` on PATH being the wheel's binary plus the launcher's
    CPU-only flags (what the container does not need), and `python3` this venv's."""
    install = TritonInstall.find()
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "tritonserver"
    cpu_only = (
        f"--backend-directory={prepare_backend_dir(install=install)} --cache-directory={install.caches} "
        "--allow-gpu-metrics=false --pinned-memory-pool-byte-size=0 "
        "--http-address=127.0.0.1 --grpc-address=127.0.0.1 --metrics-address=127.0.0.1"
    )
    wrapper.write_text(f'#!/bin/sh\nexec {install.binary} "$@" {cpu_only}\n')
    wrapper.chmod(0o755)
    env = server_env(install)
    env["PATH"] = f"{bindir}:{Path(sys.executable).parent}:{env['PATH']}"
    env.update(
        MODEL_REPOSITORY=str(repo),
        HTTP_PORT=str(ports["http_port"]),
        GRPC_PORT=str(ports["grpc_port"]),
        METRICS_PORT=str(ports["metrics_port"]),
    )
    env.pop("MAMBASERVE_ADMIN_KEY", None)
    env["MAMBASERVE_ADMIN_KEY_FILE"] = str(tmp_path / "no-key-here")
    if key:
        env["MAMBASERVE_ADMIN_KEY"] = key
    with open(tmp_path / "serve.log", "w") as log:  # the child keeps its own copy
        return subprocess.Popen(
            ["sh", str(SERVE_SH)],
            env=env,
            cwd=prepare_backend_dir(install=install),  # as the launcher: no `model/` on the stubs' path
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.server
def test_serve_sh_restricts_the_admin_apis_and_its_watchdog_reloads_a_killed_stub(tmp_path):
    import numpy as np
    import tritonclient.http as httpclient
    from mambaserve.serving.watchdog import live_stubs

    repo = tmp_path / "repo"
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.py").write_text(ECHO_PY)
    (repo / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    log = tmp_path / "serve.log"

    no_key = _serve_sh(tmp_path, repo, helpers.ports(), key=None)
    assert no_key.wait(timeout=120) != 0, "serve.sh must refuse to start without an admin key"
    assert "no admin key" in log.read_text()

    ports = helpers.ports()
    key = secrets.token_urlsafe(32)
    proc = _serve_sh(tmp_path, repo, ports, key)
    url = f"127.0.0.1:{ports['http_port']}"
    try:
        client = httpclient.InferenceServerClient(url)
        assert helpers.wait_for(lambda: _ready(client), 180, 0.25), log.read_text()[-3000:]
        assert helpers.wait_for(lambda: f"watching tritonserver pid {proc.pid}" in log.read_text(), 60)
        with pytest.raises(Exception, match="This API is restricted"):
            client.load_model("echo")
        index = client.get_model_repository_index(headers={"x-admin-key": key})  # the key unlocks it
        assert [(m["name"], m["state"]) for m in index] == [("echo", "READY")]

        (victim,) = live_stubs(proc.pid)["echo"]
        os.kill(victim, signal.SIGKILL)
        assert helpers.wait_for(lambda: "[watchdog] echo: loaded" in log.read_text(), 120), log.read_text()[
            -3000:
        ]
        assert helpers.wait_for(lambda: _ready(client), 60)
        x = httpclient.InferInput("X", [3], "FP32")
        x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
        assert client.infer("echo", [x]).as_numpy("Y").tolist() == [2, 4, 6]
        assert victim not in live_stubs(proc.pid)["echo"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:  # the watchdog and any stub left: they are in the session serve.sh started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


ECHO_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)])
                for r in requests]
"""
ECHO_CONFIG = """
name: "echo"
backend: "python"
input { name: "X" data_type: TYPE_FP32 dims: [ -1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }
instance_group { kind: KIND_CPU count: 1 }
"""


def _ready(client) -> bool:
    try:
        return client.is_server_ready()
    except Exception:
        return False
