"""deploy/k8s offline: the overlays render with kustomize (the real one inside kubectl), every object
validates against the Kubernetes schemas (kubernetes-validate, strict), the front's ConfigMap is what
the template renders and nginx accepts it, and the autoscaling rule names only metrics that a live
tritonserver exports. No cluster runs here: nothing is applied."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import helpers
import pytest
import yaml
from mambaserve.serving import front

K8S = helpers.ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
# CRDs the Kubernetes schemas do not hold (the Prometheus Operator's): checked by hand below instead.
UNKNOWN_KINDS = {"PodMonitor"}


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed on this machine")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


@pytest.fixture(scope="module", params=["base", "overlays/gpu"])
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(K8S / request.param)


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    assert "PodMonitor" in kinds
    for doc in docs:
        if doc["kind"] in UNKNOWN_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_podmonitor_scrapes_the_triton_pods_metrics_port(rendered):
    _, docs = rendered
    monitor = by_kind(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    triton = by_kind(docs, "Deployment", "mambaserve-triton")
    labels = triton["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {
        p["name"]: p["containerPort"] for p in triton["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == 8002 and endpoint["path"] == "/metrics"


def test_triton_pods_use_tritons_health_endpoints_and_forward_the_client_id(rendered):
    _, docs = rendered
    pod = by_kind(docs, "Deployment", "mambaserve-triton")["spec"]["template"]["spec"]
    [server] = pod["containers"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert set(front.FORWARD_ARGS) <= set(server["args"])
    assert server["resources"]["requests"]["cpu"] and server["resources"]["requests"]["memory"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert pod["initContainers"][0]["volumeMounts"][0]["mountPath"] == "/models"


def test_gpu_overlay_runs_nvidias_tritonserver_image_with_a_gpu():
    docs = kustomize(K8S / "overlays" / "gpu")
    [server] = by_kind(docs, "Deployment", "mambaserve-triton")["spec"]["template"]["spec"]["containers"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The image is deploy/Dockerfile.triton built FROM NVIDIA's tritonserver image; its tag says which.
    dockerfile = (helpers.ROOT / "deploy" / "Dockerfile.triton").read_text()
    base = re.search(r"ARG TRITON_IMAGE=(nvcr\.io/nvidia/tritonserver):(\d\d\.\d\d-py3)", dockerfile)
    assert base, "deploy/Dockerfile.triton no longer builds FROM nvcr.io/nvidia/tritonserver:YY.MM-py3"
    assert server["image"].endswith(f"/mambaserve-triton:{base.group(2)}")
    assert "MAMBASERVE_ADMIN_KEY" in {e["name"] for e in server["env"]}  # merged, not replaced


def test_front_configmap_is_what_the_template_renders():
    """deploy/k8s/base/front/ is generated: `python -m mambaserve.serving.front render-k8s`."""
    base = K8S / "base" / "front"
    assert (base / "nginx.conf").read_text() == front.render_k8s()
    assert (base / "front.js").read_text() == front.template_text("front.js")


def test_front_configmap_passes_nginx_config_test(tmp_path):
    """The ConfigMap's nginx.conf with only the image's paths and the backend DNS name replaced by this
    machine's: Debian's nginx (with njs) accepts it."""
    text = front.render_k8s()
    text = text.replace(
        "load_module modules/ngx_http_js_module.so;", f"load_module {front.JS_MODULE_DEBIAN};"
    )
    text = text.replace("/etc/nginx/front", str(tmp_path)).replace("/tmp/front", str(tmp_path))
    text = text.replace("/dev/stderr", str(tmp_path / "error.log")).replace(
        "/dev/stdout", str(tmp_path / "a.log")
    )
    text = text.replace(f"{front.K8S_BACKEND}:", "127.0.0.1:")
    (tmp_path / "nginx.conf").write_text(text)
    (tmp_path / "front.js").write_text(front.template_text("front.js"))
    proc = subprocess.run(
        [front.nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_front_pods_mount_the_generated_configmap():
    docs = kustomize(K8S / "base")
    config = by_kind(docs, "ConfigMap", _generated_name(docs))
    assert set(config["data"]) == {"nginx.conf", "front.js"}
    pod = by_kind(docs, "Deployment", "mambaserve-front")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"]
    [nginx] = pod["containers"]
    assert "/etc/nginx/front/nginx.conf" in nginx["command"][-1]
    assert front.K8S_BACKEND in nginx["command"][-1]
    assert by_kind(docs, "Service", front.K8S_BACKEND)["spec"]["clusterIP"] == "None"


def _generated_name(docs: list[dict]) -> str:
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    return next(n for n in names if n.startswith("mambaserve-front-"))


def adapter_rules(docs: list[dict]) -> list[dict]:
    config = by_kind(docs, "ConfigMap", "mambaserve-prometheus-adapter")
    return yaml.safe_load(config["data"]["config.yaml"])["rules"]


def test_hpa_scales_on_the_adapters_metric():
    docs = kustomize(K8S / "base")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mambaserve-triton"
    served = {rule["name"]["as"] for rule in adapter_rules(docs)}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= served


@pytest.mark.server
def test_adapter_rules_name_only_metrics_the_live_server_exports(triton_server):
    docs = kustomize(K8S / "base")
    exported = helpers.metrics(triton_server).names()
    for rule in adapter_rules(docs):
        text = rule["seriesQuery"] + " " + rule["metricsQuery"] + " " + rule["name"]["matches"]
        names = set(re.findall(r"\b(?:nv|mambaserve)_[a-z_]+", text)) - {rule["name"]["as"]}
        assert names, rule
        missing = names - exported
        assert not missing, f"the adapter rule names metrics the server does not export: {missing}"
