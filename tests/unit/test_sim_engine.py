"""The discrete-event engine and its policies, on cases small enough to
compute by hand. Speeds are the jobs' own: H100 = 2, MLU370-X8 = 0.5, so a
100 s reference job runs 50 s on H100 and 200 s on MLU370-X8."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.model.catalogue import default_catalogue
from controlplane.sim.engine import simulate
from controlplane.sim.fleet import Fleet, make_pool
from controlplane.sim.policies import FifoFirstFit, PinnedFamily, XinheCorePolicy, pin
from controlplane.sim.report import jain, percentile, summarize
from controlplane.sim.speeds import Physics
from controlplane.sim.state import RoundResult, RoundView, SimPlacement
from controlplane.sim.synth import chinese_fleet, synthetic_trace
from controlplane.sim.trace import TraceJob, classify

SPEED = (("H100", 2.0), ("MLU370-X8", 0.5))
# Fleet order puts the slow pool first: what a first-fit baseline walks first.
TWO_CHIPS = Fleet((make_pool("slow", "west", "MLU370-X8", 1, 1),
                   make_pool("fast", "east", "H100", 1, 1)))


def job(job_id: str, t: float, *, devices: int = 1, runtime: float = 100.0,
        named: tuple[str, ...] = (), speed=SPEED, tenant: str = "t") -> TraceJob:
    families, models, first = classify(named, default_catalogue())
    return TraceJob(job_id, t, tenant, 0, 1, devices, 0, families, models, runtime,
                    speed, first, named)


def jcts(fleet: Fleet, jobs: list[TraceJob], policy) -> dict[str, float]:
    result = simulate(jobs, Physics.of(fleet), policy)
    assert not result.unfinished
    return {r.job.job_id: r.finish - r.job.submit_time_s for r in result.records}


@dataclass(frozen=True)
class Case:
    name: str
    fleet: Fleet
    jobs: tuple[TraceJob, ...]
    xinhe: dict[str, float]
    fifo: dict[str, float]


CASES = [
    Case("one job: xinhe takes the fast chip, first-fit the first pool",
         TWO_CHIPS, (job("a", 0),), {"a": 50}, {"a": 200}),
    Case("xinhe waits 40 s for the fast chip rather than 200 s on the slow one",
         TWO_CHIPS, (job("a", 0), job("b", 10)), {"a": 50, "b": 90}, {"a": 200, "b": 50}),
    Case("strict FIFO blocks the small job behind a waiting gang; the core backfills",
         Fleet((make_pool("a100", "east", "A100", 1, 4),)),
         (job("a", 0, devices=2, speed=()), job("b", 1, devices=4, speed=()),
          job("c", 2, speed=())),
         # the gang holds a reservation from t=100: c (100 s) would delay it, so c waits
         {"a": 100, "b": 199, "c": 298}, {"a": 100, "b": 199, "c": 298}),
    Case("backfill: a job that ends before the gang's reservation runs in the hole",
         Fleet((make_pool("a100", "east", "A100", 1, 4),)),
         (job("a", 0, devices=2, speed=()), job("b", 1, devices=4, speed=()),
          job("c", 2, runtime=50, speed=())),
         {"a": 100, "b": 199, "c": 50}, {"a": 100, "b": 199, "c": 248}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_policies_by_hand(case: Case) -> None:
    assert jcts(case.fleet, list(case.jobs), XinheCorePolicy()) == pytest.approx(case.xinhe)
    assert jcts(case.fleet, list(case.jobs), FifoFirstFit()) == pytest.approx(case.fifo)


def test_pinned_keeps_a_job_on_its_first_family() -> None:
    jobs = [job("a", 0, named=("cambricon", "nvidia"))]
    assert jcts(TWO_CHIPS, jobs, PinnedFamily()) == {"a": 200}
    assert jcts(TWO_CHIPS, jobs, XinheCorePolicy()) == {"a": 50}


def test_pinned_pins_to_a_model_on_a_single_family_fleet() -> None:
    fleet = Fleet((make_pool("v", "g", "V100", 4, 4), make_pool("k", "g", "K80", 4, 4)))
    physics = Physics.of(fleet)
    pins = {pin(job(f"j{i}", 0), physics) for i in range(40)}
    assert pins == {(frozenset(), frozenset({"V100"})), (frozenset(), frozenset({"K80"}))}


def test_summary_of_the_wait_for_faster_case() -> None:
    physics = Physics.of(TWO_CHIPS)
    result = simulate([job("a", 0), job("b", 10, tenant="u")], physics, XinheCorePolicy())
    summary = summarize(result, physics)
    assert summary["avg_jct_s"] == pytest.approx(70)
    assert summary["lower_bound_avg_jct_s"] == pytest.approx(50)
    assert summary["avg_wait_s"] == pytest.approx(20)  # b waits 10 -> 50
    assert summary["makespan_s"] == pytest.approx(100)
    # b waits from 10 to 50 while the H100 is busy and the MLU idle.
    assert summary["utilisation_while_waiting"] == {"cambricon": 0.0, "nvidia": 1.0}
    assert summary["utilisation"]["nvidia"] == pytest.approx(1.0)
    # tenant t: 50/50 = 1.0; tenant u: 50/90: Jain of (1, 5/9).
    assert summary["fairness_jain"] == pytest.approx(jain([1.0, 50 / 90]))
    assert summary["preemptions"] == 0


@dataclass
class ScriptedPreemptor:
    """Places jobs on the single device; preempts 'low' when 'high' arrives."""

    name: str = "scripted"

    def round(self, view: RoundView) -> RoundResult:
        queued = {q.job.job_id for q in view.queue}
        running = {r.queued.job.job_id for r in view.running}
        if "high" in queued and "low" in running:
            return RoundResult((SimPlacement("high", 0, ((0, 1),)),), ("low",))
        if queued and not running:
            return RoundResult((SimPlacement(sorted(queued)[0], 0, ((0, 1),)),))
        return RoundResult()


def test_preemption_keeps_progress_and_is_counted() -> None:
    fleet = Fleet((make_pool("a100", "east", "A100", 1, 1),))
    jobs = [job("low", 0, speed=()), job("high", 10, runtime=30, speed=())]
    physics = Physics.of(fleet)
    result = simulate(jobs, physics, ScriptedPreemptor(), checkpoint_every_s=0)
    finish = {r.job.job_id: r.finish for r in result.records}
    # low: 10 s done, preempted, resumes at 40 with 90 s left.
    assert finish == pytest.approx({"low": 130, "high": 40})
    assert result.preemptions == 1
    assert summarize(result, physics)["preemptions"] == 1
    assert result.lost_device_s["t"] == 0


def test_preemption_loses_work_since_the_last_checkpoint() -> None:
    fleet = Fleet((make_pool("a100", "east", "A100", 1, 1),))
    jobs = [job("low", 0, speed=()), job("high", 10, runtime=30, speed=())]
    result = simulate(jobs, Physics.of(fleet), ScriptedPreemptor(), checkpoint_every_s=4)
    finish = {r.job.job_id: r.finish for r in result.records}
    # low: checkpoint at 8 s, preempted at 10 s: 2 s lost, 92 s left from 40.
    assert finish == pytest.approx({"low": 132, "high": 40})
    assert result.lost_device_s["t"] == pytest.approx(2)


def test_same_input_same_result() -> None:
    jobs = synthetic_trace(120, seed=3, load=1.5)
    physics = Physics.of(chinese_fleet())
    first = summarize(simulate(jobs, physics, XinheCorePolicy()), physics)
    second = summarize(simulate(jobs, physics, XinheCorePolicy()), physics)
    assert first == second and first["jobs"] == 120


def test_percentile_and_jain() -> None:
    assert percentile([3, 1, 2, 4], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([], 99) == 0.0
    assert jain([2, 2, 2]) == pytest.approx(1.0)
    assert jain([1, 0]) == pytest.approx(0.5)
