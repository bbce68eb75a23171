"""deploy/docker-compose.yml cannot run here (no Docker engine): check that it uses exactly the files,
ports and flags the other tests exercise, so that nothing in it is untested by construction."""

from __future__ import annotations

import re
from pathlib import Path

import helpers
import pytest
import yaml
from mambaserve.loadtest.prom import PROMETHEUS_CONFIG
from mambaserve.serving.server import TritonServer

DEPLOY = helpers.ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]

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
    return " ".join(SERVICES["tritonserver"]["command"])


def _mount(service: str, target: str) -> Path:
    for volume in SERVICES[service]["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_tritonserver_runs_with_the_launchers_flags(tmp_path):
    launcher = TritonServer(tmp_path, http_port=8000, grpc_port=8001, metrics_port=8002).command()
    command = _triton_command()
    for flag in launcher[1:]:
        if not flag.startswith(CPU_ONLY):
            assert flag in command, f"{flag} (launcher) missing from the compose command"
    for port in (8000, 8001, 8002):
        assert f"-port={port}" in command and f"{port}:{port}" in SERVICES["tritonserver"]["ports"]
    # explicit model control + every model, as in tests/test_loadtest_fault.py, with the watchdog beside it
    assert "--model-control-mode=explicit" in command and "--load-model=*" in command
    assert "python3 -m mambaserve.serving.watchdog --http-url 127.0.0.1:8000" in command
    assert (DEPLOY.parent / SERVICES["tritonserver"]["build"]["dockerfile"]).exists()
    assert _mount("tritonserver", "/models") == (DEPLOY.parent / "model_repository").resolve()


def test_prometheus_uses_the_tested_config_and_rules():
    assert _mount("prometheus", "/etc/prometheus") == PROMETHEUS_CONFIG.parent.resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tritonserver"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert (
        host in SERVICES and host == "tritonserver" and f"{port}:{port}" in SERVICES["tritonserver"]["ports"]
    )
    assert any(PROMETHEUS_CONFIG.parent.glob(config["rule_files"][0]))


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard():
    provisioning = _mount("grafana", "/etc/grafana/provisioning")
    dashboards_mount = "/etc/grafana/dashboards"
    dashboards = _mount("grafana", dashboards_mount)
    (ds,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert "9090:9090" in SERVICES["prometheus"]["ports"]
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
