"""`xinhe bench api`, smoke-sized: the real server, agents and client
processes run, the report has every figure, and nothing was lost."""

from __future__ import annotations

import pytest

from controlplane.bench.api import bench_api, targets_met
from controlplane.cli.main import main


def test_tiny_run_reports_figures_and_verifies_the_store() -> None:
    report = bench_api(clients=1, threads=2, duration_s=1.0, agents=1, latency_jobs=3, batch=5)
    load, latency, checks = report["load"], report["submit_to_running"], report["verification"]
    assert load["submissions"] > 0 and load["submissions_per_s"] > 0 and not load["errors"]
    assert 0 < load["submit_p50_ms"] <= load["submit_p99_ms"]
    assert load["gets"] > 0 and load["get_p50_ms"] > 0
    assert latency["never_running"] == 0 and 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert checks["acknowledged"] == checks["stored"]
    assert checks["acknowledged"] == load["submissions"] + report["load_batched"]["submissions"]
    assert checks["lost"] == checks["duplicated_keys"] == 0
    assert checks["stored_but_never_acknowledged"] == 0
    assert checks["consistency"]["ok"], checks["consistency"]["violations"]
    assert report["server_memory"]["rss_mb"] > 10
    assert report["targets"]["zero_lost_or_duplicated"] and report["targets"]["store_consistent"]
    cpu = load["cpu_ms_per_submission"]
    assert cpu["control_plane"] > 0 and cpu["clients"] > 0 and cpu["front_ends"] == 0
    assert cpu["total"] == pytest.approx(cpu["control_plane"] + cpu["clients"], abs=0.002)
    check_batched(report)


def test_tiny_run_through_api_front_ends() -> None:
    """SubmitJob and GetJob through a front end process: same checks, and
    the front end's CPU is counted apart from the control plane's."""
    report = bench_api(clients=2, threads=2, duration_s=1.0, agents=1, latency_jobs=2,
                       api_workers=1)
    load, checks = report["load"], report["verification"]
    assert report["setup"]["api_workers"] == 1
    assert load["submissions"] > 0 and not load["errors"] and load["gets"] > 0
    assert report["submit_to_running"]["never_running"] == 0
    assert checks["acknowledged"] == checks["stored"] == load["submissions"]
    assert checks["lost"] == checks["duplicated_keys"] == 0
    assert checks["stored_but_never_acknowledged"] == 0 and checks["consistency"]["ok"]
    cpu = load["cpu_ms_per_submission"]
    assert cpu["front_ends"] > 0 and cpu["control_plane"] > 0 and cpu["clients"] > 0


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
    with pytest.raises(SystemExit) as exc:
        main(["bench", "api", "--api-workers", "-1"])
    assert "--api-workers" in str(exc.value.code)


def check_batched(report: dict) -> None:
    """The batched half of a run with batch=5: its figures and the ratios."""
    single, batched = report["load"], report["load_batched"]
    assert single["batch"] == 1 and batched["batch"] == 5 and not batched["errors"]
    assert batched["submissions"] == 5 * batched["calls"] > 0
    assert 0 < batched["item_p99_ms"] < batched["submit_p99_ms"]
    ratios = report["batched_vs_single"]
    assert ratios["submissions_per_s_single"] == single["submissions_per_s"]
    assert ratios["throughput_ratio"] == round(
        batched["submissions_per_s"] / single["submissions_per_s"], 2)
    assert report["targets"]["submissions_per_s_batched"] is not None


def test_targets_say_which_mode_met_the_rate() -> None:
    report = {"load": {"submissions_per_s": 900, "submit_p99_ms": 30},
              "load_batched": {"submissions_per_s": 2500, "submit_p99_ms": 80}}
    met = targets_met(report)
    assert not met["submissions_per_s"] and met["submissions_per_s_batched"]
    assert met["submit_p99_ms"] and not met["submit_p99_ms_batched"]
    assert targets_met({"load": {}})["submissions_per_s_batched"] is None


@pytest.mark.parametrize("batch", ["0", "1001"])
def test_cli_refuses_a_batch_out_of_range(batch: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "api", "--batch", batch])
    assert "--batch" in str(exc.value.code)
