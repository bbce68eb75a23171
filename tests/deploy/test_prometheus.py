"""deploy/: Prometheus rules and config, the Grafana dashboard, and mambaserve's own metrics, checked
against a real tritonserver scraped by a real Prometheus."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time

import helpers
import numpy as np
import pytest
import yaml
from mambaserve.contract import spec
from mambaserve.loadtest import dashboard
from mambaserve.loadtest.prom import PROMETHEUS_CONFIG, Prometheus, render_config
from mambaserve.serving import metrics as m

RULES = sorted((PROMETHEUS_CONFIG.parent / "rules").glob("*.rules.yml"))
needs_prometheus = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="Debian package prometheus missing: make system-deps"
)


# ---------------------------------------------------------------------------------------------
# Offline checks
# ---------------------------------------------------------------------------------------------
@needs_prometheus
def test_promtool_checks_rules_and_config(tmp_path):
    assert RULES, "no rule files in deploy/prometheus/rules"
    out = subprocess.run(["promtool", "check", "rules", *map(str, RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # the deploy config as shipped (relative rule paths) and as the tests render it
    out = subprocess.run(
        ["promtool", "check", "config", PROMETHEUS_CONFIG.name],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS_CONFIG.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(yaml.safe_dump(render_config(["127.0.0.1:1"])))
    out = subprocess.run(["promtool", "check", "config", str(rendered)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_committed_dashboard_is_the_generated_one():
    assert dashboard.DASHBOARD_PATH.read_text() == dashboard.render(), (
        "deploy/grafana/dashboards/mambaserve.json is stale: run python -m mambaserve.loadtest.dashboard"
    )


def test_dashboard_panels_are_consistent():
    board = json.loads(dashboard.DASHBOARD_PATH.read_text())
    queries = dashboard.panel_queries(board)
    assert set(queries) == set(dashboard.PANELS), "every panel has a fixed id and at least one query"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    names = re.compile(r"\b(nv_[a-z_]+|mambaserve_[a-z_]+)\b")
    for pid, exprs in queries.items():
        used = {n for e in exprs for n in names.findall(e)}
        if dashboard.PANELS[pid].requires == "gpu":
            # GPU panels use only the metric names Triton documents for GPU hosts
            assert used and used <= set(dashboard.GPU_METRICS), (pid, used)
        else:
            assert not any(n.startswith(("nv_gpu", "nv_energy")) for n in used), pid
    # the recorded series the panels read are all defined in the rules
    recorded = {
        r["record"]
        for f in RULES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }
    for pid, exprs in queries.items():
        for e in exprs:
            for series in re.findall(r"\b[a-z_]+:[a-z_0-9]+:[a-z_0-9]+\b", e):
                assert series in recorded, (pid, series)


@pytest.mark.parametrize(
    ("audio", "reason"),
    [
        (None, "missing"),
        (np.zeros((1, 800), np.float64), "dtype"),
        (np.zeros(800, np.float32), "shape"),
        (np.zeros((1, 0), np.float32), "empty"),
        (np.zeros((1, 100), np.float32), "too_short"),
        (np.zeros((1, int(spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE) + 1), np.float32), "too_long"),
        (np.array([[0.0, np.inf] * 400], np.float32), "nan"),
        (np.full((1, 800), 3.0, np.float32), "out_of_range"),
    ],
)
def test_audio_rejection_reason(audio, reason):
    assert m.audio_rejection_reason(audio, min_samples=400) == reason
    assert reason in m.AUDIO_REJECTION_REASONS


# ---------------------------------------------------------------------------------------------
# Against the real server
# ---------------------------------------------------------------------------------------------
def _infer(client, audio: np.ndarray, prompt: bytes | None = None):
    import tritonclient.grpc as grpcclient

    inputs = [grpcclient.InferInput(spec.AUDIO.name, [1, audio.shape[-1]], spec.AUDIO.wire_dtype)]
    inputs[0].set_data_from_numpy(audio.reshape(1, -1))
    if prompt is not None:
        inputs.append(grpcclient.InferInput(spec.PROMPT.name, [1, 1], spec.PROMPT.wire_dtype))
        inputs[1].set_data_from_numpy(np.array([[prompt]], dtype=object))
    return client.infer(spec.ASR, inputs)


@pytest.mark.server
def test_mambaserve_metrics_count_audio_tokens_and_rejections(triton_server, speech_clips, recognizer):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    fe, dec = spec.FEATURE_EXTRACTOR, spec.DECODER
    before = helpers.metrics(triton_server)
    clips = [audio for _, audio in speech_clips[:3]]
    for audio in clips:
        _infer(client, audio)
    bad = {
        "nan": np.array([np.nan] * 1600, np.float32),
        "too_long": np.zeros(int(spec.MAX_AUDIO_SECONDS * spec.SAMPLE_RATE) + 16, np.float32),
        "out_of_range": np.full(1600, 4.0, np.float32),
    }
    for audio in bad.values():
        with pytest.raises(InferenceServerException):
            _infer(client, audio)
    with pytest.raises(InferenceServerException, match=spec.PROMPT.name):
        _infer(client, clips[0], prompt=b"x" * (spec.MAX_PROMPT_BYTES + 1))
    after = helpers.metrics(triton_server)

    seconds = (
        sum(len(a) for a in [*clips, clips[0]]) / spec.SAMPLE_RATE
    )  # the bad prompt's audio was processed
    got = after.get(m.AUDIO_SECONDS, model=fe) - before.get(m.AUDIO_SECONDS, model=fe)
    assert got == pytest.approx(seconds, rel=1e-6)
    for reason in bad:
        delta = after.get(m.REJECTED, model=fe, reason=reason) - before.get(
            m.REJECTED, model=fe, reason=reason
        )
        assert delta == 1, reason
    assert (
        after.get(m.REJECTED, model=dec, reason="prompt") - before.get(m.REJECTED, model=dec, reason="prompt")
        == 1
    )
    # every declared reason is exported from the start (rate() works before the first rejection)
    for reason in m.AUDIO_REJECTION_REASONS:
        assert after.select(m.REJECTED, model=fe, reason=reason), reason

    # tokens: what the in-process reference decodes for the same clips (served == in-process)
    expected = 0
    for audio in clips:  # one at a time, as they were served
        feats, lengths = recognizer.features([audio])
        expected += sum(len(ids) for ids in recognizer.decode_ids(recognizer.encode(feats, lengths)))
    tokens = after.get(m.TOKENS, model=dec) - before.get(m.TOKENS, model=dec)
    assert tokens == expected


@needs_prometheus
@pytest.mark.server
def test_every_dashboard_panel_has_data_from_a_live_server(triton_server, speech_clips):
    """A real Prometheus scrapes the real server (1 s intervals, the shipped rules) while clients send
    traffic; then each panel's queries must return at least one finite value, except the panels
    whose metrics this server cannot export (GPU on a CPU host; streaming before asr_streaming is
    deployed), which must return nothing rather than something made up."""
    from mambaserve.clients import ASRClient

    board = json.loads(dashboard.DASHBOARD_PATH.read_text())
    queries = {
        pid: [e.replace(f"${dashboard.MODEL_VAR}", ".*") for e in exprs]
        for pid, exprs in dashboard.panel_queries(board).items()
    }
    served = {p.name for p in (triton_server.repository).iterdir() if (p / "config.pbtxt").exists()}
    exempt = {"gpu"} | ({"streaming"} if spec.ASR_STREAMING not in served else set())

    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic(i: int) -> None:
        try:
            with ASRClient(
                triton_server.grpc_url if i % 2 else triton_server.http_url,
                protocol="grpc" if i % 2 else "http",
            ) as asr:
                n = 0
                while not stop.is_set():
                    asr.transcribe(speech_clips[(i + n) % len(speech_clips)][1])
                    n += 1
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=traffic, args=(i,), daemon=True) for i in range(3)]
    with Prometheus([triton_server.metrics_url], interval="1s") as prom:
        for t in threads:
            t.start()
        try:
            prom.wait_for('up{job="tritonserver"} == 1', timeout=30)
            missing: dict[int, list[str]] = {}
            deadline = time.monotonic() + 60
            while True:
                missing = {}
                for pid, exprs in queries.items():
                    if dashboard.PANELS[pid].requires in exempt:
                        continue
                    for e in exprs:
                        values = [float(r["value"][1]) for r in prom.query(e)]
                        if not any(math.isfinite(v) for v in values):
                            missing.setdefault(pid, []).append(e)
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert not errors, errors[:3]
        assert not missing, f"panels without data: {missing}; rules: {prom.rule_health()}"
        bad_rules = [r for r in prom.rule_health() if r[1] != "ok"]
        assert not bad_rules, bad_rules
        # the exempt panels really have no data here (nothing invented), and say why in their row
        for pid, exprs in queries.items():
            if dashboard.PANELS[pid].requires in exempt:
                assert all(prom.query(e) == [] for e in exprs), pid
        # the traffic shows up where it should
        rps = prom.query(
            f'model_outcome:nv_inference_request:rate1m{{model="{spec.ASR}", outcome="success"}}'
        )
        assert float(rps[0]["value"][1]) > 0
        assert float(prom.query("mambaserve:audio_seconds:rate1m")[0]["value"][1]) > 0
