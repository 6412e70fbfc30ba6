"""`xinhe bench api`, smoke-sized: the real server, agents and client
processes run, the report has every figure, and nothing was lost."""

from __future__ import annotations

import pytest

from controlplane.bench.api import bench_api, targets_met
from controlplane.cli.main import main


def test_tiny_run_reports_figures_and_verifies_the_store() -> None:
    report = bench_api(clients=1, threads=2, duration_s=1.0, agents=1, latency_jobs=3)
    load, latency, checks = report["load"], report["submit_to_running"], report["verification"]
    assert load["submissions"] > 0 and load["submissions_per_s"] > 0 and not load["errors"]
    assert 0 < load["submit_p50_ms"] <= load["submit_p99_ms"]
    assert load["gets"] > 0 and load["get_p50_ms"] > 0
    assert latency["never_running"] == 0 and 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert checks["acknowledged"] == load["submissions"] == checks["stored"]
    assert checks["lost"] == checks["duplicated_keys"] == 0
    assert checks["stored_but_never_acknowledged"] == 0
    assert checks["consistency"]["ok"], checks["consistency"]["violations"]
    assert report["server_memory"]["rss_mb"] > 10
    assert report["targets"]["zero_lost_or_duplicated"] and report["targets"]["store_consistent"]


def test_targets_fail_when_figures_are_missing_or_bad() -> None:
    assert not any(targets_met({}).values())
    report = {"load": {"submissions_per_s": 2500, "submit_p99_ms": 60},
              "submit_to_running": {"p99_ms": 40},
              "verification": {"lost": 0, "duplicated_keys": 0,
                               "stored_but_never_acknowledged": 1,
                               "consistency": {"ok": True}}}
    met = targets_met(report)
    assert met["submissions_per_s"] and met["submit_to_running_p99_ms"]
    assert not met["submit_p99_ms"] and not met["zero_lost_or_duplicated"]


def test_cli_refuses_nonsense_flags() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "api", "--clients", "0"])
    assert "--clients" in str(exc.value.code)
