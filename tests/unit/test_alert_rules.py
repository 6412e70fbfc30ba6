"""The alert rules are valid, carry runbook text, use only defined metrics,
and behave as their promtool unit tests say (real promtool)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from controlplane.observability import metrics
from controlplane.observability.promlocal import find_tool

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "xinhe-alerts.yml"
REQUIRED = {"XinheAgentDisconnected", "XinheDeviceUnhealthy", "XinhePoolIdleWhileJobsWait",
            "XinheQueueWaitAboveObjective", "XinheSchedulerRoundSlow",
            "XinheControlPlaneNotReady", "XinheStoreErrors"}


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = find_tool("promtool")
    if tool is None:
        pytest.skip("promtool not installed: run bash scripts/tools/prometheus.sh")
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_the_required_alerts_exist_with_runbooks() -> None:
    found = {r["alert"]: r for r in rules()}
    assert set(found) >= REQUIRED
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule.get("for"), f"{name} fires on a single bad sample"
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        assert len(notes["runbook"].split()) >= 15, f"{name}: runbook text too thin"


def test_rules_use_only_defined_metrics() -> None:
    known = metrics.series_names() | {"up"}
    for rule in rules():
        named = set(re.findall(r"\b(xinhe_[a-z0-9_]+)\b", rule["expr"]))
        assert named or "up{" in rule["expr"], rule["alert"]
        assert named <= known, f"{rule['alert']}: undefined {named - known}"


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((PROM / "tests" / "xinhe-alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"]
             if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"]
             if not case["exp_alerts"]}
    every = {r["alert"] for r in rules()}
    assert fired == every, f"never shown firing: {every - fired}"
    assert quiet >= REQUIRED, f"never shown quiet: {REQUIRED - quiet}"


def test_promtool_checks_rules_config_and_unit_tests() -> None:
    for args in (("check", "rules", str(RULES)),
                 ("check", "config", str(PROM / "prometheus.yml")),
                 ("test", "rules", str(PROM / "tests" / "xinhe-alerts.test.yml"))):
        result = promtool(*args)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout
