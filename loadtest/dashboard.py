"""The mambaserve Grafana dashboard, as code (grafana-foundation-sdk).

    python -m mambaserve.loadtest.dashboard            # writes deploy/grafana/dashboards/mambaserve.json
    python -m mambaserve.loadtest.dashboard --check    # exit 1 if the committed JSON is stale

Panels query the recorded series of deploy/prometheus/rules/mambaserve.rules.yml (cheap to render,
one definition of each formula) and a few raw Triton gauges. Panel ids are fixed here so that links
to a panel survive regeneration. `PANELS` says which panels can only have data on some hosts:
"gpu" (Triton exports nv_gpu_* only where it sees a GPU) and "streaming" (slot gauges set by the
streaming models); tests/test_deploy_prometheus.py holds every other panel to returning data from a
live server.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mambaserve.contract import spec
from mambaserve.loadtest import CHECKOUT

DASHBOARD_PATH = CHECKOUT / "deploy" / "grafana" / "dashboards" / "mambaserve.json"
UID = "mambaserve"
MODEL_VAR = "model"
DATASOURCE_VAR = "datasource"

GPU_METRICS = (
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
)
"""GPU metrics Triton documents for GPU hosts (docs/user_guide/metrics.md, "GPU Metrics"; label
gpu_uuid). This CPU server exports none of them; the GPU panels use only these names."""

_M = f'model=~"${MODEL_VAR}"'


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    id: int
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    requires: str | None = None  # None: every server; "gpu"; "streaming"
    width: int = 12


@dataclass(frozen=True)
class RowSpec:
    id: int
    title: str
    panels: tuple[PanelSpec, ...]


ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        100,
        "Overview",
        (
            PanelSpec(
                1,
                "RTFx (audio seconds per second)",
                (Target("mambaserve:audio_seconds:rate1m"),),
                unit="short",
                kind="stat",
                width=6,
                description="Seconds of audio recognised per wall-clock second, whole server (1 m rate).",
            ),
            PanelSpec(
                2,
                f"{spec.ASR} requests/s",
                (
                    Target(
                        f'sum(model_outcome:nv_inference_request:rate1m{{model="{spec.ASR}", outcome="success"}})'
                    ),
                ),
                unit="reqps",
                kind="stat",
                width=6,
            ),
            PanelSpec(
                3,
                f"{spec.ASR} p99 latency",
                (
                    Target(
                        f'model_quantile:nv_inference_request_duration_seconds:summary{{model="{spec.ASR}", quantile="0.99"}}'
                    ),
                ),
                unit="s",
                kind="stat",
                width=6,
                description="From Triton's latency summary (a sliding window of recent requests).",
            ),
            PanelSpec(
                4,
                "Failed requests/s",
                (Target('sum(model_outcome:nv_inference_request:rate1m{outcome="failure"})'),),
                unit="reqps",
                kind="stat",
                width=6,
            ),
        ),
    ),
    RowSpec(
        200,
        "Traffic",
        (
            PanelSpec(
                5,
                "Requests by model and outcome",
                (
                    Target(
                        f"model_outcome:nv_inference_request:rate1m{{{_M}}}",
                        "{{model}} {{outcome}} {{reason}}",
                    ),
                ),
                unit="reqps",
                description="Triton's success and failure counters (failure reasons: REJECTED, CANCELED, BACKEND, OTHER).",
            ),
            PanelSpec(
                6,
                "Rejected by mambaserve models, by reason",
                (
                    Target(
                        f"model_reason:mambaserve_requests_rejected:rate1m{{{_M}}}", "{{model}}: {{reason}}"
                    ),
                ),
                unit="reqps",
                description="Requests a python model refused (empty, nan, too_long, prompt, ...): mambaserve_requests_rejected_total.",
            ),
            PanelSpec(7, "RTFx", (Target("mambaserve:audio_seconds:rate1m", "audio s / s"),), unit="short"),
            PanelSpec(
                8,
                "Tokens generated/s",
                (Target(f"model:mambaserve_tokens_generated:rate1m{{{_M}}}", "{{model}}"),),
                unit="short",
            ),
        ),
    ),
    RowSpec(
        300,
        "Latency",
        (
            PanelSpec(
                9,
                "Request latency p50 / p95 / p99",
                (
                    Target(
                        f"model_quantile:nv_inference_request_duration_seconds:summary{{{_M}}}",
                        "{{model}} q{{quantile}}",
                    ),
                ),
                unit="s",
            ),
            PanelSpec(
                10,
                "Queue latency p50 / p95 / p99",
                (
                    Target(
                        f"model_quantile:nv_inference_queue_duration_seconds:summary{{{_M}}}",
                        "{{model}} q{{quantile}}",
                    ),
                ),
                unit="s",
            ),
            PanelSpec(
                11,
                "Queue time ÷ compute time",
                (Target(f"model:nv_inference_queue_over_compute:ratio_rate1m{{{_M}}}", "{{model}}"),),
                unit="short",
                description="Above 1: requests wait longer than they run.",
            ),
            PanelSpec(
                12,
                "Mean request time",
                (Target(f"model:nv_inference_request_duration_seconds:mean_rate1m{{{_M}}}", "{{model}}"),),
                unit="s",
            ),
        ),
    ),
    RowSpec(
        400,
        "Batching and load",
        (
            PanelSpec(
                13,
                "Average batch size",
                (Target(f"model:nv_inference_batch_size:mean_rate1m{{{_M}}}", "{{model}}"),),
                unit="short",
                description="Inferences per model execution (dynamic batching).",
            ),
            PanelSpec(
                14,
                "Pending requests",
                (Target(f"model:nv_inference_pending_request_count:sum{{{_M}}}", "{{model}}"),),
                unit="short",
            ),
        ),
    ),
    RowSpec(
        500,
        "Streaming",
        (
            PanelSpec(
                15,
                "Streaming slot occupancy",
                (Target(f"model:mambaserve_slots:occupancy_ratio{{{_M}}}", "{{model}}"),),
                unit="percentunit",
                requires="streaming",
                width=12,
                description="Slots in use ÷ capacity (mambaserve_slots_in_use / mambaserve_slots_capacity); "
                "empty until the streaming models are deployed.",
            ),
            PanelSpec(
                21,
                "Streaming sequences reaped / refused",
                (
                    Target(
                        f"model:mambaserve_sequences_reaped:rate1m{{{_M}}}", "{{model}} reaped (idle, no END)"
                    ),
                    Target(
                        f"model_reason:mambaserve_sequences_rejected:rate1m{{{_M}}}",
                        "{{model}} refused: {{reason}}",
                    ),
                ),
                unit="short",
                requires="streaming",
                width=12,
                description="Per second: sequences/sessions freed after going idle without END, and new ones "
                "refused (pool_full: every slot in use).",
            ),
        ),
    ),
    RowSpec(
        600,
        "Host",
        (
            PanelSpec(
                16, "CPU utilisation", (Target("nv_cpu_utilization", "{{instance}}"),), unit="percentunit"
            ),
            PanelSpec(
                17,
                "Memory",
                (
                    Target("nv_cpu_memory_used_bytes", "used {{instance}}"),
                    Target("nv_cpu_memory_total_bytes", "total {{instance}}"),
                ),
                unit="bytes",
            ),
        ),
    ),
    RowSpec(
        700,
        "GPU (GPU hosts only: empty on a CPU server)",
        (
            PanelSpec(
                18,
                "GPU utilisation",
                (Target("nv_gpu_utilization", "{{gpu_uuid}}"),),
                unit="percentunit",
                requires="gpu",
                width=8,
            ),
            PanelSpec(
                19,
                "GPU memory",
                (
                    Target("nv_gpu_memory_used_bytes", "used {{gpu_uuid}}"),
                    Target("nv_gpu_memory_total_bytes", "total {{gpu_uuid}}"),
                ),
                unit="bytes",
                requires="gpu",
                width=8,
            ),
            PanelSpec(
                20,
                "GPU power",
                (
                    Target("nv_gpu_power_usage", "usage {{gpu_uuid}}"),
                    Target("nv_gpu_power_limit", "limit {{gpu_uuid}}"),
                ),
                unit="watt",
                requires="gpu",
                width=8,
            ),
        ),
    ),
)

PANELS: dict[int, PanelSpec] = {p.id: p for row in ROWS for p in row.panels}


def build_dashboard():
    """The dashboard model (grafana_foundation_sdk.models.dashboard.Dashboard)."""
    from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

    ds = dm.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")
    board = (
        dashboard.Dashboard("mambaserve: speech recognition on Triton")
        .uid(UID)
        .description(
            "Traffic, latency, batching, RTFx and host metrics of a mambaserve tritonserver. "
            "Generated by `python -m mambaserve.loadtest.dashboard`; do not edit by hand."
        )
        .tags(["mambaserve", "triton"])
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable(DATASOURCE_VAR).label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable(MODEL_VAR)
            .label("Model")
            .datasource(ds)
            .query("label_values(nv_inference_count, model)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )
    )
    for row in ROWS:
        board = board.with_row(dashboard.Row(row.title).id(row.id))
        for p in row.panels:
            if p.kind == "stat":
                panel = (
                    stat.Panel()
                    .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
                    .graph_mode(cm.BigValueGraphMode.AREA)
                )
            else:
                panel = (
                    timeseries.Panel()
                    .legend(
                        common.VizLegendOptions()
                        .display_mode(cm.LegendDisplayMode.LIST)
                        .placement(cm.LegendPlacement.BOTTOM)
                        .show_legend(True)
                    )
                    .tooltip(
                        common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.NONE)
                    )
                )
            panel = panel.id(p.id).title(p.title).datasource(ds).unit(p.unit).span(p.width).height(8)
            if p.description:
                panel = panel.description(p.description)
            for ref, target in zip("ABCDEFGH", p.targets):
                query = prometheus.Dataquery().expr(target.expr).ref_id(ref)
                if target.legend:
                    query = query.legend_format(target.legend)
                panel = panel.with_target(query)
            board = board.with_panel(panel)
    return board.build()


def render() -> str:
    """The dashboard JSON exactly as committed (sorted keys, 2-space indent, trailing newline)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return (
        json.dumps(
            json.loads(JSONEncoder().encode(build_dashboard())), indent=2, sort_keys=True, ensure_ascii=False
        )
        + "\n"
    )


def panel_queries(board: dict) -> dict[int, list[str]]:
    """{panel id: [PromQL, ...]} of a dashboard JSON, rows included (what a test runs against Prometheus)."""
    out: dict[int, list[str]] = {}

    def visit(panels: list[dict]) -> None:
        for panel in panels:
            if panel.get("type") == "row":
                visit(panel.get("panels") or [])
            elif panel.get("targets"):
                out[panel["id"]] = [t["expr"] for t in panel["targets"]]

    visit(board["panels"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambaserve.loadtest.dashboard", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=DASHBOARD_PATH)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python -m mambaserve.loadtest.dashboard", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date ({len(PANELS)} panels)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(PANELS)} panels in {len(ROWS)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
