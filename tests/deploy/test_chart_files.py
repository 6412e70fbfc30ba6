"""The chart ships copies of files it does not own (Helm cannot read outside
the chart): the Grafana dashboards, the Prometheus alert rules and the chip
catalogue. The copies must be the sources, byte for byte and file for file;
scripts/sync-chart-files.sh makes them so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import CHART, CRD_APIS, NAMESPACE, RELEASE, ROOT, helm, of_kind, render

SYNC = "run `bash scripts/sync-chart-files.sh`"
MIRRORS = [
    ("deploy/grafana/dashboards", "files/dashboards", ("*.json",)),
    ("deploy/prometheus/rules", "files/rules", ("*.yml", "*.yaml")),
]


def listing(folder: Path, patterns: tuple[str, ...]) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for pattern in patterns for p in folder.glob(pattern)}


@pytest.mark.parametrize(("source", "copy", "patterns"), MIRRORS, ids=[m[0] for m in MIRRORS])
def test_chart_copies_are_byte_identical_to_their_sources(
        source: str, copy: str, patterns: tuple[str, ...]) -> None:
    sources, copies = listing(ROOT / source, patterns), listing(CHART / copy, patterns)
    if not (ROOT / source).is_dir():
        assert not copies, f"the chart holds {sorted(copies)} but {source} is gone: {SYNC}"
        return
    assert sorted(copies) == sorted(sources), f"{copy} is not the file set of {source}: {SYNC}"
    drifted = sorted(name for name in sources if copies[name] != sources[name])
    assert not drifted, f"chart copies differ from {source}: {drifted}: {SYNC}"


def test_chart_catalogue_is_the_packaged_catalogue() -> None:
    packaged = (ROOT / "controlplane" / "model" / "chips.yaml").read_bytes()
    assert (CHART / "files" / "chips.yaml").read_bytes() == packaged, SYNC


def rendered_dashboards(docs: tuple[dict, ...]) -> dict[str, str]:
    return {name: text for cm in of_kind(docs, "ConfigMap")
            if cm["metadata"]["labels"].get("grafana_dashboard") == "1"
            for name, text in cm["data"].items()}


def test_dashboard_configmaps_are_the_dashboards_of_deploy_grafana() -> None:
    sources = {p.name: p.read_text() for p in (ROOT / "deploy/grafana/dashboards").glob("*.json")}
    shipped = rendered_dashboards(render())
    assert sorted(shipped) == sorted(sources), SYNC
    for name, text in sources.items():
        assert shipped[name] == text.rstrip("\n"), f"{name} differs: {SYNC}"
        assert json.loads(shipped[name]) == json.loads(text)


def test_prometheus_rule_carries_the_alert_rules_of_deploy_prometheus() -> None:
    folder = ROOT / "deploy/prometheus/rules"
    files = sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]) if folder.is_dir() else []
    groups = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    rules = of_kind(render(api_versions=CRD_APIS), "PrometheusRule")
    assert [g for r in rules for g in r["spec"]["groups"]] == groups, SYNC


def test_sync_script_mirrors_the_sources_and_the_chart_ships_them(tmp_path: Path) -> None:
    """On a scratch tree: sources in, stale copy out, then the chart renders
    the dashboard ConfigMap and the PrometheusRule from the copies."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/sync-chart-files.sh", tmp_path / "scripts")
    shutil.copytree(CHART, tmp_path / "deploy/helm/xinhe")
    (tmp_path / "controlplane/model").mkdir(parents=True)
    shutil.copy(ROOT / "controlplane/model/chips.yaml", tmp_path / "controlplane/model")
    dashboards, rules = tmp_path / "deploy/grafana/dashboards", tmp_path / "deploy/prometheus/rules"
    dashboards.mkdir(parents=True)
    rules.mkdir(parents=True)
    dashboard = '{\n  "title": "Xinhe fleet",\n  "panels": [{"expr": "sum(xinhe_up)"}]\n}\n'
    (dashboards / "xinhe_fleet.json").write_text(dashboard)
    rule = {"groups": [{"name": "xinhe", "rules": [{"alert": "XinheDown", "expr": "up == 0"}]}]}
    (rules / "xinhe.yml").write_text(yaml.safe_dump(rule))
    stale = tmp_path / "deploy/helm/xinhe/files/dashboards/removed.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("{}")

    subprocess.run(["bash", str(tmp_path / "scripts/sync-chart-files.sh")], check=True,
                   capture_output=True, timeout=30)

    files = tmp_path / "deploy/helm/xinhe/files"
    assert sorted(p.name for p in (files / "dashboards").iterdir()) == ["xinhe_fleet.json"]
    assert (files / "rules/xinhe.yml").read_bytes() == (rules / "xinhe.yml").read_bytes()
    result = helm("template", RELEASE, "--namespace", NAMESPACE,
                  *(f"--api-versions={a}" for a in CRD_APIS), chart=tmp_path / "deploy/helm/xinhe")
    assert result.returncode == 0, result.stderr
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    assert rendered_dashboards(docs) == {"xinhe_fleet.json": dashboard.rstrip("\n")}
    assert of_kind(docs, "PrometheusRule")[0]["spec"]["groups"] == rule["groups"]
