"""Generate Xinhe's Grafana dashboards from the metric definitions.

    python deploy/grafana/generate.py          # rewrite deploy/grafana/dashboards/*.json
    python deploy/grafana/generate.py --check  # exit 1 if the committed JSON is stale

Every PromQL expression here may only name metrics defined in
``controlplane/observability/metrics.py`` (checked when generating, and by
tests), so renaming a metric fails loudly instead of emptying a panel.
Dashboards take a ``${datasource}`` variable and ``pool`` / ``family`` /
``tenant`` template variables (multi-select, "All" = ``.*``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from controlplane.observability import metrics  # noqa: E402

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
P = 'pool=~"$pool"'
F = 'family=~"$family"'
T = 'tenant=~"$tenant"'
PF = f"{P}, {F}"
# Series Xinhe does not define but panels may use (Prometheus' own).
EXTERNAL = frozenset({"up"})
IDENT = re.compile(r"\b(xinhe_[a-z0-9_]+)\b")


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # timeseries, stat, bargauge, heatmap, table
    targets: tuple[Target, ...]
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    thresholds: tuple[tuple[float, str], ...] = ()
    stacked: bool = False


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)
    variables: tuple[str, ...] = ("pool", "family", "tenant")


def ts(title: str, *targets: tuple[str, str] | str, **kw: object) -> Panel:
    return Panel(title, "timeseries", _targets(targets), **kw)  # type: ignore[arg-type]


def stat(title: str, *targets: tuple[str, str] | str, **kw: object) -> Panel:
    return Panel(title, "stat", _targets(targets), width=6, height=4, **kw)  # type: ignore[arg-type]


def _targets(items: tuple[tuple[str, str] | str, ...]) -> tuple[Target, ...]:
    return tuple(Target(i) if isinstance(i, str) else Target(*i) for i in items)


def quantile(q: float, metric: str, by: str, selector: str = "") -> str:
    return (f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))")


UTILISATION_LINES = ((0.0, "red"), (0.6, "orange"), (0.9, "green"))


def fleet() -> Dashboard:
    healthy = f'xinhe_accelerators{{state!="unhealthy", {PF}}}'
    allocated = f'xinhe_accelerators{{state="allocated", {PF}}}'
    return Dashboard("xinhe-fleet", "Xinhe / Fleet overview",
                     "Is the expensive hardware busy? Utilisation per family against the "
                     "60 % target and the 90 % best-in-class line, free devices, jobs.", [
        ts("Utilisation per family (allocated / healthy)",
           (f"sum by (family) ({allocated}) / sum by (family) ({healthy})", "{{family}}"),
           unit="percentunit", thresholds=UTILISATION_LINES, width=16,
           description="Dashed lines: 60 % (public target) and 90 % (best centres)."),
        Panel("Fleet utilisation", "stat",
              (Target(f"sum({allocated}) / sum({healthy})"),), unit="percentunit", width=8,
              thresholds=UTILISATION_LINES),
        Panel("Devices free per pool", "bargauge",
              (Target(f'sum by (pool) (xinhe_accelerators{{state="free", {PF}}})',
                      "{{pool}}"),)),
        ts("Devices by state", (f"sum by (state) (xinhe_accelerators{{{PF}}})", "{{state}}"),
           stacked=True),
        ts("Running and waiting jobs",
           (f'sum(xinhe_jobs{{state="RUNNING", {T}}}) or vector(0)', "running"),
           (f'sum(xinhe_jobs{{state="QUEUED", {T}}}) or vector(0)', "waiting"),
           (f'sum(xinhe_jobs{{state=~"SCHEDULED|STARTING", {T}}}) or vector(0)', "starting")),
        ts("Utilisation per pool",
           (f"xinhe_accelerator_utilization_ratio{{{PF}}}", "{{pool}} ({{family}})"),
           unit="percentunit", thresholds=UTILISATION_LINES),
        Panel("Capacity per pool and model", "table",
              (Target(f"sum by (pool, region, family, model, state) "
                      f"(xinhe_accelerators{{{PF}}})"),), width=24),
    ])


def tenants() -> Dashboard:
    held = f"xinhe_tenant_accelerators_allocated{{{T}, {F}}}"
    return Dashboard("xinhe-tenants", "Xinhe / Tenants and queues",
                     "Who gets the devices, who waits and for how long.", [
        ts("Share of allocated accelerators per tenant",
           (f"sum by (tenant) ({held}) / scalar(sum(xinhe_tenant_accelerators_allocated))",
            "{{tenant}}"), unit="percentunit", stacked=True,
           description="Fair share in practice: each tenant's part of the devices in use."),
        ts("Accelerators in use per tenant and family (quota use)",
           (f"sum by (tenant, family) ({held})", "{{tenant}} / {{family}}"), stacked=True),
        ts("Quota use per tenant (nominal, used, borrowed)",
           (f"sum by (tenant, family, kind) (xinhe_tenant_quota_devices{{{T}}})",
            "{{tenant}} / {{family}} {{kind}}"),
           description="Devices each tenant's quotas grant (nominal) and its scheduled and "
                       "running jobs hold (used); borrowed = used beyond nominal, the first "
                       "to be preempted when the owner reclaims. Quotas name a family or "
                       "model, so the family filter does not apply."),
        ts("Waiting jobs per tenant",
           (f'sum by (tenant) (xinhe_jobs{{state="QUEUED", {T}}})', "{{tenant}}")),
        ts("Running jobs per tenant",
           (f'sum by (tenant) (xinhe_jobs{{state="RUNNING", {T}}})', "{{tenant}}")),
        ts("Queue wait p50 / p90 per tenant",
           (quantile(0.5, "xinhe_job_queue_wait_seconds", "tenant", T), "p50 {{tenant}}"),
           (quantile(0.9, "xinhe_job_queue_wait_seconds", "tenant", T), "p90 {{tenant}}"),
           unit="s"),
        ts("Oldest queued job per tenant",
           (f"max by (tenant) (xinhe_queue_oldest_job_age_seconds{{{T}}})", "{{tenant}}"),
           unit="s"),
        ts("Submissions and outcomes per second",
           (f"sum by (tenant) (rate(xinhe_jobs_submitted_total{{{T}}}[{RATE}]))",
            "submitted {{tenant}}"),
           (f"sum by (tenant) (rate(xinhe_jobs_succeeded_total{{{T}}}[{RATE}]))",
            "succeeded {{tenant}}"),
           (f"sum by (tenant) (rate(xinhe_jobs_failed_total{{{T}}}[{RATE}]))",
            "failed {{tenant}}"),
           (f"sum by (tenant) (rate(xinhe_jobs_cancelled_total{{{T}}}[{RATE}]))",
            "cancelled {{tenant}}"), unit="ops", width=24),
        ts("Job run time p50 / p90 per family",
           (quantile(0.5, "xinhe_job_run_duration_seconds", "family", f"{T}, {F}"),
            "p50 {{family}}"),
           (quantile(0.9, "xinhe_job_run_duration_seconds", "family", f"{T}, {F}"),
            "p90 {{family}}"), unit="s", width=24),
    ], variables=("family", "tenant"))


def scheduler() -> Dashboard:
    return Dashboard("xinhe-scheduler", "Xinhe / Scheduler and API",
                     "Round time, placement rate, preemptions, migrations, API and store.", [
        ts("Scheduling round time p50 / p99",
           (quantile(0.5, "xinhe_scheduler_round_duration_seconds", "instance"), "p50"),
           (quantile(0.99, "xinhe_scheduler_round_duration_seconds", "instance"), "p99"),
           unit="s"),
        ts("Placements per second",
           (f"sum(rate(xinhe_scheduler_placements_total[{RATE}]))", "placements/s"),
           (f"sum(rate(xinhe_scheduler_round_duration_seconds_count[{RATE}]))", "rounds/s"),
           unit="ops"),
        ts("Placements per round (mean)",
           (f"sum(rate(xinhe_scheduler_round_placements_sum[{RATE}])) / "
            f"sum(rate(xinhe_scheduler_round_placements_count[{RATE}]))", "mean")),
        ts("Preemptions, migrations and retries per second",
           (f"sum(rate(xinhe_jobs_preempted_total[{RATE}])) or vector(0)", "preempted"),
           # Split by trigger (request | policy); "or on() vector(0)" adds a zero
           # only while no migration has been counted (no unlabelled extra series).
           (f"sum by (trigger) (rate(xinhe_jobs_migrated_total[{RATE}])) or on() vector(0)",
            "migrated {{trigger}}"),
           (f"sum(rate(xinhe_jobs_retried_total[{RATE}])) or vector(0)", "retried"),
           unit="ops"),
        ts("API front ends (--api-workers): running, configured, restarts per hour",
           ("sum by (instance, state) (xinhe_api_frontends)", "{{instance}} {{state}}"),
           ("sum by (instance) (increase(xinhe_api_frontend_restarts_total[1h]))",
            "{{instance}} restarts/h")),
        ts("gRPC calls per second by method and code",
           (f"sum by (method, code) (rate(xinhe_grpc_requests_total[{RATE}]))",
            "{{method}} {{code}}"), unit="ops"),
        ts("gRPC latency p99 by method (unary)",
           (quantile(0.99, "xinhe_grpc_request_duration_seconds", "method",
                     'method!~"Connect|WatchJob|StreamLogs"'), "{{method}}"), unit="s"),
        ts("Store write latency p99 by operation",
           (quantile(0.99, "xinhe_store_write_duration_seconds", "operation"),
            "{{operation}}"), unit="s"),
        ts("Store errors per second",
           (f"sum by (operation, error) (rate(xinhe_store_errors_total[{RATE}]))",
            "{{operation}} {{error}}"),
           (f"sum(rate(xinhe_store_errors_total[{RATE}])) or vector(0)", "all"), unit="ops"),
    ], variables=())


def agents() -> Dashboard:
    dev = PF
    return Dashboard("xinhe-agents", "Xinhe / Agents and devices",
                     "Agent connectivity and per-device telemetry from the adapters.", [
        stat("Agents connected", "sum(xinhe_agents_connected)"),
        stat("Agent scrape targets up", 'sum(up{job="xinhe-agents"})'),
        stat("Unhealthy devices",
             f'sum(xinhe_accelerators{{state="unhealthy", {PF}}})',
             thresholds=((0.0, "green"), (1.0, "red"))),
        stat("Replicas running", "sum(xinhe_agent_replicas_running)"),
        ts("Nodes by status", (f"sum by (status) (xinhe_nodes{{{P}}})", "{{status}}"),
           stacked=True),
        ts("Agent stream connected", ("xinhe_agent_connected", "{{node}}"), unit="bool"),
        Panel("Device utilisation heat map",
              "heatmap", (Target(f"xinhe_device_utilization_ratio{{{dev}}}",
                                 "{{node}}/{{device}}"),), unit="percentunit", width=24,
              height=10),
        ts("Device temperature", (f"xinhe_device_temperature_celsius{{{dev}}}",
                                  "{{node}}/{{device}}"), unit="celsius"),
        ts("Device power", (f"xinhe_device_power_watts{{{dev}}}", "{{node}}/{{device}}"),
           unit="watt"),
        ts("Device memory used", (f"xinhe_device_memory_used_bytes{{{dev}}} / "
                                  f"xinhe_device_memory_bytes{{{dev}}}", "{{node}}/{{device}}"),
           unit="percentunit"),
        Panel("Device health (0 = unhealthy)", "table",
              (Target(f"sort(xinhe_device_healthy{{{dev}}})"),)),
    ], variables=("pool", "family"))


DASHBOARDS = (fleet, tenants, scheduler, agents)


# -- rendering ---------------------------------------------------------------
def referenced_metrics(expr: str) -> set[str]:
    """The xinhe_* series an expression names."""
    return set(IDENT.findall(expr))


def check_expr(expr: str) -> None:
    """ValueError unless every xinhe_* series in ``expr`` is defined."""
    unknown = referenced_metrics(expr) - metrics.series_names()
    if unknown:
        raise ValueError(f"undefined metric(s) {sorted(unknown)} in: {expr}")
    if not referenced_metrics(expr) and not any(e in expr for e in EXTERNAL):
        raise ValueError(f"expression names no known metric: {expr}")


def _field_config(panel: Panel) -> dict:
    defaults: dict = {"unit": panel.unit, "custom": {}}
    if panel.thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": c, "value": None if i == 0 else v}
            for i, (v, c) in enumerate(panel.thresholds)]}
        if panel.kind == "timeseries":
            defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    if panel.stacked:
        defaults["custom"]["stacking"] = {"mode": "normal", "group": "A"}
    if panel.kind == "timeseries":
        defaults["custom"].setdefault("fillOpacity", 10 if not panel.stacked else 40)
    return {"defaults": defaults, "overrides": []}


def _panel_json(panel: Panel, pid: int, pos: dict) -> dict:
    out = {
        "id": pid, "type": panel.kind, "title": panel.title, "datasource": DS,
        "gridPos": pos, "fieldConfig": _field_config(panel),
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": t.expr,
                     "legendFormat": t.legend or "__auto",
                     **({"format": "table", "instant": True} if panel.kind == "table" else {})}
                    for i, t in enumerate(panel.targets)],
    }
    if panel.description:
        out["description"] = panel.description
    if panel.kind == "heatmap":
        out["options"] = {"calculate": False, "yAxis": {"axisPlacement": "left"},
                          "color": {"mode": "scheme", "scheme": "Oranges", "min": 0, "max": 1},
                          "cellGap": 1}
    return out


def _variable(name: str) -> dict:
    source = {"tenant": "xinhe_jobs_submitted_total"}.get(name, "xinhe_accelerators")
    query = f"label_values({source}, {name})"
    return {"name": name, "label": name, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
            "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2,
            "current": {"text": "All", "value": "$__all"}, "sort": 1}


def render(dash: Dashboard) -> dict:
    """The dashboard as Grafana JSON (schema 39); checks every expression."""
    panels, x, y, row_height = [], 0, 0, 0
    for pid, panel in enumerate(dash.panels, start=1):
        for target in panel.targets:
            check_expr(target.expr)
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel_json(panel, pid, {"h": panel.height, "w": panel.width,
                                               "x": x, "y": y}))
        x, row_height = x + panel.width, max(row_height, panel.height)
    datasource = {"name": "datasource", "label": "Data source", "type": "datasource",
                  "query": "prometheus", "current": {}, "hide": 0}
    return {
        "uid": dash.uid, "title": dash.title, "description": dash.description,
        "tags": ["xinhe"], "timezone": "browser", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [datasource, *(_variable(v) for v in dash.variables)]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def rendered() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{d.uid.removeprefix('xinhe-')}.json": json.dumps(render(d), indent=2) + "\n"
            for d in (make() for make in DASHBOARDS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        path = OUT / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"stale dashboards: {', '.join(stale)}; run python deploy/grafana/generate.py")
        return 1
    print(("wrote " if stale else "up to date: ") + ", ".join(stale or rendered()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
