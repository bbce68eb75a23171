"""A real Prometheus (Debian package `prometheus`) scraping a tritonserver, for tests and benchmarks.

It runs deploy/prometheus/prometheus.yml and the rule files next to it unchanged, except for the
scrape target (the compose file says `tritonserver:8002`) and the intervals (1 s here, so a test
gets the two samples `rate()` needs within seconds).

    with Prometheus(["127.0.0.1:8002"]) as prom:
        prom.wait_for("up == 1")
        prom.query('model:nv_inference_batch_size:mean_rate1m')
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from mambaserve.loadtest import CHECKOUT

DEPLOY = CHECKOUT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
JOB = "tritonserver"


class PrometheusError(RuntimeError):
    """Prometheus could not start, or a query failed."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_config(targets: list[str], interval: str = "1s", source: Path = PROMETHEUS_CONFIG) -> dict:
    """The deploy config with its tritonserver targets and intervals replaced; rule paths made absolute."""
    config = yaml.safe_load(source.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [
        str((source.parent / pattern).resolve()) for pattern in config.get("rule_files", [])
    ]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    if len(jobs) != 1:
        raise PrometheusError(f"{source} has no scrape job '{JOB}'")
    jobs[0]["static_configs"] = [{"targets": list(targets)}]
    return config


class Prometheus:
    """A prometheus child process on a free port with a throw-away TSDB."""

    def __init__(
        self,
        targets: list[str],
        *,
        interval: str = "1s",
        binary: str = "prometheus",
        startup_timeout: float = 30.0,
    ):
        self.targets = list(targets)
        self.interval = interval
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise PrometheusError(
                f"'{binary}' not found on PATH: install the Debian package (make system-deps)"
            )
        self.startup_timeout = startup_timeout
        self.port = _free_port()
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self._dir = Path(tempfile.mkdtemp(prefix="mambaserve-prometheus-"))
        config = self._dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(render_config(self.targets, self.interval)))
        self._log = open(self._dir / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self._dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"prometheus not ready after {self.startup_timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        if self._dir is None:
            return ""
        path = self._dir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- API -------------------------------------------------------------------------------------
    def _get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query: the result vector ([{metric: {...}, value: [t, "v"]}, ...])."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        """Poll until `expr` returns a non-empty vector; PrometheusError with the last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"no data for {expr!r} after {timeout} s; targets: {self.targets_health()}"
                )
            time.sleep(0.5)

    def targets_health(self) -> list[tuple[str, str, str]]:
        active = self._get("/api/v1/targets")["activeTargets"]
        return [(t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in active]

    def rule_health(self) -> list[tuple[str, str, str]]:
        """(rule name, health, last error) of every loaded rule."""
        out = []
        for group in self._get("/api/v1/rules")["groups"]:
            for rule in group["rules"]:
                out.append((rule["name"], rule.get("health", ""), rule.get("lastError", "")))
        return out
