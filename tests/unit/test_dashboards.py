"""The committed Grafana dashboards are what the generator makes, and every
panel queries only metrics the code defines: a renamed metric fails here."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from controlplane.observability import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "xinhe-alerts.yml"


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "xinhe_grafana_generate", ROOT / "deploy" / "grafana" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


generate = load_generator()


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panel_exprs(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def test_committed_dashboards_are_generated_and_fresh() -> None:
    expected = generate.rendered()
    assert set(expected) == {p.name for p in DASHBOARDS.glob("*.json")}
    for name, text in expected.items():
        assert (DASHBOARDS / name).read_text() == text, (
            f"{name} is stale: run python deploy/grafana/generate.py")


def test_the_four_dashboards_exist() -> None:
    titles = {d["title"] for d in dashboards().values()}
    assert titles == {"Xinhe / Fleet overview", "Xinhe / Tenants and queues",
                      "Xinhe / Scheduler and API", "Xinhe / Agents and devices"}


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_every_panel_uses_defined_metrics_and_the_datasource_variable(name: str) -> None:
    dash = dashboards()[name]
    known = metrics.series_names() | generate.EXTERNAL
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${datasource}"
            named = set(re.findall(r"\b(xinhe_[a-z0-9_]+)\b", expr))
            assert named <= known, f"{panel['title']}: undefined {named - known}"
            for var in re.findall(r"\$(\w+)", expr):
                assert var.startswith("__") or var in variables, f"${var} not defined"


def test_layout_has_unique_ids_and_no_overlap() -> None:
    for dash in dashboards().values():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for p in dash["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{p['title']} overlaps another panel"
            cells |= mine


def test_fleet_overview_shows_the_60_and_90_percent_lines() -> None:
    fleet = dashboards()["fleet.json"]
    panel = next(p for p in fleet["panels"] if p["title"].startswith("Utilisation per family"))
    steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.6, 0.9]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


def test_a_renamed_metric_is_refused_by_the_generator() -> None:
    with pytest.raises(ValueError, match="xinhe_accelerators_free"):
        generate.check_expr("sum(xinhe_accelerators_free)")
    broken = generate.Dashboard("x", "x", "x", [generate.ts("t", "rate(xinhe_nope_total[5m])")])
    with pytest.raises(ValueError, match="xinhe_nope_total"):
        generate.render(broken)


def test_every_metric_is_shown_or_alerted_on() -> None:
    used = set()
    for dash in dashboards().values():
        for _title, expr in panel_exprs(dash):
            used |= set(re.findall(r"\b(xinhe_[a-z0-9_]+)\b", expr))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\b(xinhe_[a-z0-9_]+)\b", rule["expr"]))
    unused = [d.name for d in metrics.DEFINITIONS
              if not set(d.series_names()) & used and not d.name.endswith("_build_info")]
    assert not unused, f"defined but on no dashboard and in no rule: {unused}"
