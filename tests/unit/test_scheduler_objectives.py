"""Placement objectives and regions in the core, case by case
(``controlplane/scheduler/core_objective.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import Decisions, NodeView, PendingJob, Policy
from tests.unit.builders import jobs, nodes, placement, running, snapshot, wait

NOW = 1_000_000.0
# Near: fast and dear. Far: the reference speed, cheap.
NEAR_H100 = nodes(1, model="H100", family="nvidia", pool="h100-near", region="near", cost=10.0)
FAR_910B = nodes(1, model="910B", family="ascend", pool="910b-far", region="far", cost=1.0)
NEAR_910B = nodes(1, model="910B", family="ascend", pool="910b-near", region="near", cost=1.0)
FAR_H100 = nodes(1, model="H100", family="nvidia", pool="h100-far", region="far", cost=10.0)
# H100 burns more per device but is fast; the 910B figure here is made low
# so that it is the efficient chip of these cases.
POWER = {"H100": 700.0, "910B": 150.0, "MLU370-X8": 250.0}


def penalty(seconds: float) -> Policy:
    return Policy(transfer_penalty_s=(("near", "far", seconds),))


@dataclass(frozen=True)
class ObjectiveCase:
    name: str
    fleet: tuple[NodeView, ...]
    job: PendingJob
    pool: str | None  # where it is placed; None = it waits
    policy: Policy = field(default_factory=Policy)
    reason: str = ""  # part of the wait reason when it waits
    power: Mapping[str, float] = field(default_factory=lambda: POWER)


def one(**kwargs: object) -> PendingJob:
    base: dict[str, object] = {"devices": 8, "runtime_s": 3600}
    return jobs("a", **{**base, **kwargs})[0]  # type: ignore[arg-type]


CASES = [
    ObjectiveCase("fastest (default) takes the fast near chip",
                  NEAR_H100 + FAR_910B, one(data_region="near"), "h100-near", penalty(600)),
    ObjectiveCase("batch cost: the cheap far region wins, transfer paid",
                  NEAR_H100 + FAR_910B, one(objective="cost", data_region="near"), "910b-far",
                  penalty(600)),
    ObjectiveCase("batch cost: a transfer dearer than the saving keeps it near",
                  NEAR_H100 + FAR_910B, one(objective="cost", data_region="near"), "h100-near",
                  penalty(40 * 3600)),
    ObjectiveCase("cost without a data region: no transfer, cheapest pool",
                  NEAR_H100 + FAR_910B, one(objective="cost"), "910b-far",
                  Policy(default_transfer_penalty_s=10**6)),
    ObjectiveCase("batch fastest: far fast chip wins when the transfer is short",
                  NEAR_910B + FAR_H100, one(data_region="near"), "h100-far", penalty(600)),
    ObjectiveCase("batch fastest: a long transfer makes the near slow chip finish first",
                  NEAR_910B + FAR_H100, one(data_region="near"), "910b-near", penalty(3000)),
    ObjectiveCase("the default penalty applies to pairs the policy does not name",
                  NEAR_910B + FAR_H100, one(data_region="near"), "910b-near",
                  Policy(default_transfer_penalty_s=3000)),
    ObjectiveCase("a pair given one way applies both ways",
                  NEAR_910B + FAR_H100, one(data_region="far", models={"910B"}), "910b-near",
                  penalty(600)),
    ObjectiveCase("interactive stays in its data region even when slower",
                  NEAR_910B + FAR_H100,
                  one(data_region="near", latency_class="interactive"), "910b-near"),
    ObjectiveCase("interactive with no data region may go anywhere",
                  NEAR_910B + FAR_H100, one(latency_class="interactive"), "h100-far"),
    ObjectiveCase("interactive with no pool in its region never fits",
                  FAR_H100, one(data_region="near", latency_class="interactive"), None,
                  reason="keeps the job in its data region 'near'"),
    ObjectiveCase("energy picks the efficient chip over the fast one",
                  NEAR_H100 + NEAR_910B, one(objective="energy"), "910b-near"),
    ObjectiveCase("energy without power figures falls back to the fastest",
                  NEAR_H100 + NEAR_910B, one(objective="energy"), "h100-near", power={}),
    ObjectiveCase("pinned never leaves its first family, even for a free fast chip",
                  NEAR_H100 + nodes(1, model="910B", family="ascend", pool="910b", free=()),
                  one(objective="pinned", families={"ascend", "nvidia"},
                      first_family="ascend"), None),
    ObjectiveCase("pinned to a family the fleet lacks never fits",
                  NEAR_H100, one(objective="pinned", first_family="ascend"), None,
                  reason="objective pinned keeps the job on family 'ascend'"),
    ObjectiveCase("pinned without a first family is not narrowed",
                  NEAR_H100 + NEAR_910B, one(objective="pinned"), "h100-near"),
    ObjectiveCase("the queue's default objective applies to a job without one",
                  NEAR_H100 + FAR_910B, one(),
                  "910b-far", Policy(queue_objectives=(("a/default", "cost"),))),
    ObjectiveCase("the job's own objective overrides its queue's",
                  NEAR_H100 + FAR_910B, one(objective="fastest"),
                  "h100-near", Policy(queue_objectives=(("a/default", "cost"),))),
    ObjectiveCase("the policy's default objective applies to every other queue",
                  NEAR_H100 + FAR_910B, one(), "910b-far",
                  Policy(default_objective="cost", queue_objectives=(("b/x", "fastest"),))),
]


def run(fleet: tuple[NodeView, ...], queue: tuple[PendingJob, ...], policy: Policy,
        power: Mapping[str, float] = POWER, **snapshot_args: object) -> Decisions:
    snap = snapshot(fleet, power_w=power, **snapshot_args)  # type: ignore[arg-type]
    return schedule(snap, queue, policy, NOW)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_objective_and_region(case: ObjectiveCase) -> None:
    decisions = run(case.fleet, (case.job,), case.policy, case.power)
    if case.pool is None:
        assert decisions.placements == ()
        assert case.reason in wait(decisions, "a-0").reason
    else:
        assert placement(decisions, "a-0").pool == case.pool


def test_explanation_names_objective_and_figures() -> None:
    decision = placement(run(NEAR_H100 + FAR_910B, (one(objective="cost", data_region="near"),),
                             penalty(600)), "a-0")
    assert decision.objective == "cost"
    # 8 devices x (1 h + 10 min transfer) x 1.00; H100: 8 x 3600/3.17 s x 10.00.
    assert decision.explanation == (
        "chose pool 910b-far (910B): est. finish 1:10:00, cost 9.33, 1.4 kWh, incl. 0:10:00 "
        "data transfer; others: h100-near (H100) 0:18:56, cost 25.24, 1.8 kWh"
        "; objective: lowest cost"
    )
    cheap = decision.candidates[decision.chosen_index]
    assert (cheap.cost, cheap.transfer_s) == (pytest.approx(8 * 70 / 60), 600)
    assert cheap.runtime_s == 4200  # the devices are held while the data moves


def test_fastest_explanation_is_unchanged_without_prices_or_power() -> None:
    decision = placement(run(NEAR_910B[:0] + nodes(1, model="H100", family="nvidia", pool="h"),
                             (one(),), Policy(), power={}), "a-0")
    assert decision.objective == ""
    assert decision.explanation == "chose pool h (H100): est. finish 0:18:56; no other candidates"


@pytest.mark.parametrize(("frees_in_s", "placed"), [(60, None), (20 * 3600, "h100-near")])
def test_cost_waits_for_a_cheaper_busy_pool_only_within_the_margin(
        frees_in_s: float, placed: str | None) -> None:
    busy_cheap = nodes(1, model="910B", family="ascend", pool="910b-far", region="far",
                       cost=1.0, free=())
    ends = (running("r", pool="910b-far", model="910B", devices=8, end=NOW + frees_in_s),)
    decisions = run(NEAR_H100 + busy_cheap, (one(objective="cost"),), Policy(), running=ends)
    if placed is None:
        assert decisions.placements == ()
        reason = wait(decisions, "a-0").reason
        assert reason.startswith("waiting for cheaper pool 910b-far (910B)"), reason
        assert "; objective: lowest cost" in reason
    else:
        assert placement(decisions, "a-0").pool == placed


def test_a_backlog_of_cost_jobs_fills_the_cheap_pool_then_overflows() -> None:
    """Cost jobs stack on the cheap pool while waiting there stays within the
    margin; later ones would wait too long and take the dear pool now."""
    cheap = nodes(1, model="910B", family="ascend", pool="cheap", devices=2, cost=1.0)
    dear = nodes(1, model="910B", family="ascend", pool="dear", devices=2, cost=5.0)
    queue = jobs("a", devices=1, n=6, runtime_s=3600, objective="cost")
    decisions = run(cheap + dear, queue, Policy())
    pools = {p.job_id: p.pool for p in decisions.placements}
    assert [pools.get(f"a-{i}") for i in range(6)] == [
        "cheap", "cheap", "dear", "dear", None, None]
