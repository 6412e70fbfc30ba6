"""The seeded Chinese-chip workload and the example files made from it."""

from __future__ import annotations

from pathlib import Path

from controlplane.sim.engine import simulate
from controlplane.sim.fleet import read_fleet
from controlplane.sim.policies import FifoFirstFit, XinheCorePolicy
from controlplane.sim.report import summarize
from controlplane.sim.speeds import Physics
from controlplane.sim.synth import chinese_fleet, synthetic_trace
from controlplane.sim.trace import read_trace, write_trace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sim"


def test_fleet_has_six_models_of_five_families() -> None:
    fleet = chinese_fleet()
    assert set(fleet.models()) == {"H100", "A100", "910B", "MLU370-X8", "K100_AI", "P800"}
    assert set(fleet.families()) == {"nvidia", "ascend", "cambricon", "hygon", "kunlunxin"}


def test_generator_is_seeded_and_every_job_fits_somewhere() -> None:
    jobs = synthetic_trace(300, seed=7)
    assert jobs == synthetic_trace(300, seed=7)
    assert jobs != synthetic_trace(300, seed=8)
    physics = Physics.of(chinese_fleet())
    assert all(physics.fitting_pools(j) for j in jobs)
    assert len({j.tenant for j in jobs}) >= 4
    # job types gain unequally from chips: H100/910B ratios differ between jobs
    ratios = {round(dict(j.speed)["H100"] / dict(j.speed)["910B"], 3) for j in jobs}
    assert len(ratios) > 5


def test_example_files_are_the_generator_output(tmp_path) -> None:
    assert read_fleet(EXAMPLES / "chinese-fleet.csv") == chinese_fleet()
    write_trace(synthetic_trace(1000, seed=0, load=1.2), tmp_path / "t.csv")
    assert read_trace(EXAMPLES / "chinese-trace.csv") == read_trace(tmp_path / "t.csv")


def test_xinhe_beats_agnostic_fifo_under_load() -> None:
    physics = Physics.of(chinese_fleet())
    jobs = synthetic_trace(250, seed=1, load=1.3)
    xinhe = summarize(simulate(jobs, physics, XinheCorePolicy()), physics)
    fifo = summarize(simulate(jobs, physics, FifoFirstFit()), physics)
    assert xinhe["avg_jct_s"] < fifo["avg_jct_s"]
    assert xinhe["fairness_jain"] > 0.5
