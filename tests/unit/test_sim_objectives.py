"""`xinhe simulate --objective`: the same core, a different objective for
every job, and the report's cost and energy that show the trade-off."""

from __future__ import annotations

import json

import pytest

from controlplane.cli.main import main
from controlplane.model.catalogue import default_catalogue
from controlplane.sim.engine import simulate
from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import Fleet, make_pool, write_fleet
from controlplane.sim.knobs import with_objective
from controlplane.sim.policies import FifoFirstFit, XinheCorePolicy
from controlplane.sim.report import summarize
from controlplane.sim.speeds import Physics
from controlplane.sim.trace import TraceJob, classify, write_trace

# Near: fast and dear. Far: half the speed at a fifth of the price.
TWO_REGIONS = Fleet((make_pool("h100-east", "east", "H100", 2, 8, 5.0),
                     make_pool("910b-west", "west", "910B", 2, 8, 1.0)))
SPEED = (("H100", 2.0), ("910B", 1.0))


def trace(n: int = 24) -> list[TraceJob]:
    families, models, first = classify((), default_catalogue())
    return [TraceJob(f"j{i:02d}", i * 1200.0, f"t{i % 2}", 0, 1, 4, 0, families, models,
                     3600.0, SPEED, first, ()) for i in range(n)]


def run(objective: str) -> dict:
    policy = XinheCorePolicy()
    with_objective([policy, FifoFirstFit()], objective)
    physics = Physics.of(TWO_REGIONS)
    result = simulate(trace(), physics, policy)
    assert not result.unfinished
    return summarize(result, physics)


def test_cost_objective_lowers_total_cost_against_fastest() -> None:
    fastest, cost = run("fastest"), run("cost")
    # Light load: every job fits on either pool when it arrives, so fastest
    # takes the dear H100 (4 x 0.5 h x 5) and cost the cheap 910B (4 x 1 h x 1).
    assert (fastest["cost"], cost["cost"]) == (pytest.approx(24 * 10), pytest.approx(24 * 4))
    assert cost["avg_jct_s"] >= fastest["avg_jct_s"]  # the trade-off: slower chips
    # Every job holds 4 devices; its runtime is 1 h on 910B, 0.5 h on H100.
    for summary in (fastest, cost):
        pools = summary["by_pool"]
        assert summary["cost"] == pytest.approx(
            pools["h100-east"]["device_hours"] * 5 + pools["910b-west"]["device_hours"])
        assert summary["device_hours"] == pytest.approx(
            sum(p["device_hours"] for p in pools.values()))
    assert cost["by_pool"]["910b-west"]["device_hours"] > fastest["by_pool"]["910b-west"][
        "device_hours"]


def test_energy_is_device_hours_times_chip_power() -> None:
    summary = run("fastest")
    cat = default_catalogue()
    pools = summary["by_pool"]
    assert summary["energy_kwh"] == pytest.approx(
        pools["h100-east"]["device_hours"] * cat.power_w("H100") / 1000
        + pools["910b-west"]["device_hours"] * cat.power_w("910B") / 1000)


def test_an_unknown_objective_is_refused() -> None:
    with pytest.raises(SimInputError, match="--objective must be one of"):
        with_objective([XinheCorePolicy()], "pinned")


def test_cli_objective_flag_reports_cost_and_energy(tmp_path, capsys) -> None:
    fleet, jobs = tmp_path / "fleet.csv", tmp_path / "trace.csv"
    write_fleet(TWO_REGIONS, fleet)
    write_trace(trace(12), jobs)
    out = tmp_path / "report.json"
    assert main(["simulate", "--fleet", str(fleet), "--trace", str(jobs), "--objective",
                 "cost", "--policies", "xinhe,fifo", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["inputs"]["objective"] == "cost"
    assert {p["policy"] for p in report["policies"]} == {"xinhe", "fifo"}
    assert all(p["cost"] > 0 and p["energy_kwh"] > 0 for p in report["policies"])
    assert "cost" in capsys.readouterr().out.splitlines()[0]
