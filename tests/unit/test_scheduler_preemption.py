"""Preemption in the core: who may be preempted, which victims are chosen,
the rate limits, and the reservation the preemptor holds. Table-driven cases
plus hypothesis properties."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import (
    ClusterSnapshot,
    NodeView,
    PendingJob,
    Policy,
    Quota,
    RunningView,
)
from tests.unit.builders import jobs, nodes, placed_ids, snapshot, wait

NOW = 10_000.0


def held(job_id: str, on: dict[str, int], *, tenant: str = "t", priority: int = 0,
         borrowed: bool = False, lost_s: float = 60.0, preempted_at: float | None = None,
         preemptible: bool = True, pool: str = "p", model: str = "910B") -> RunningView:
    """A running job holding ``on`` = {node: devices} for ``lost_s`` since its checkpoint."""
    return RunningView(
        job_id, pool, model, sum(on.values()), NOW + 3600, tenant=tenant, priority=priority,
        borrowed=borrowed, seconds_since_checkpoint=lost_s, last_preempted_at=preempted_at,
        preemptible=preemptible, nodes=tuple(sorted(on.items())))


def fleet_for(running: tuple[RunningView, ...], n: int = 2, devices: int = 8) -> ClusterSnapshot:
    """``n`` nodes p-000.. whose free devices are what ``running`` leaves."""
    used: dict[str, int] = {}
    for run in running:
        for node, count in run.nodes:
            used[node] = used.get(node, 0) + count
    views: list[NodeView] = []
    for node in nodes(n, devices=devices):
        free = tuple(range(used.get(node.name, 0), devices))
        views.append(replace(node, free_devices=free))
    return snapshot(views, running=running)


def job(job_id: str, *, devices: int = 8, replicas: int = 1, priority: int = 1,
        tenant: str = "hi", order: int = 0) -> PendingJob:
    return replace(jobs(tenant, devices=devices, replicas=replicas, priority=priority,
                        first_order=order)[0], job_id=job_id)


A, B = "p-000", "p-001"
DEFAULT = Policy()


@dataclass(frozen=True)
class Case:
    name: str
    running: tuple[RunningView, ...]
    pending: tuple[PendingJob, ...]
    victims: tuple[str, ...]  # preempted, in decision order
    policy: Policy = DEFAULT


CASES = [
    Case("higher priority preempts lower",
         (held("low", {A: 8}), held("low2", {B: 8})), (job("j"),), ("low",)),
    Case("equal priority never preempts",
         (held("same", {A: 8, B: 8}, priority=1),), (job("j"),), ()),
    Case("higher priority is never a victim",
         (held("top", {A: 8, B: 8}, priority=5),), (job("j"),), ()),
    Case("least lost work first",
         (held("old", {A: 8}, lost_s=500), held("fresh", {B: 8}, lost_s=5)), (job("j"),),
         ("fresh",)),
    Case("lowest priority before less lost work",
         (held("p0", {A: 8}, priority=0, lost_s=500), held("p-1", {B: 8}, priority=-1,
                                                            lost_s=900)),
         (job("j"),), ("p-1",)),
    Case("borrowed first",
         (held("own", {A: 8}, lost_s=1), held("lent", {B: 8}, borrowed=True, lost_s=900)),
         (job("j"),), ("lent",)),
    Case("only the victims the gang needs (pruned)",
         (held("a1", {A: 4}, lost_s=10), held("a2", {A: 4}, lost_s=1000),
          held("b1", {B: 8}, lost_s=400)), (job("j"),), ("b1",)),
    Case("a victim gang frees all its nodes",
         (held("gang", {A: 8, B: 8}),), (job("j", replicas=2),), ("gang",)),
    Case("cooldown protects a recently preempted job",
         (held("recent", {A: 8}, preempted_at=NOW - 100), held("long-ago", {B: 8},
                                                                lost_s=9999,
                                                                preempted_at=NOW - 400)),
         (job("j"),), ("long-ago",)),
    Case("not preemptible is never a victim",
         (held("pinned", {A: 8}, preemptible=False), held("ok", {B: 8}, lost_s=999)),
         (job("j"),), ("ok",)),
    Case("never for a job that could never fit",
         (held("low", {A: 8}),), (job("huge", devices=16),), ()),
    Case("at most max_preemptions_per_round victims",
         (held("l1", {A: 8}), held("l2", {B: 8})),
         (job("j1", order=0), job("j2", order=1)), ("l1",),
         Policy(max_preemptions_per_round=1)),
    Case("0 disables preemption",
         (held("low", {A: 8}),), (job("j"),), (), Policy(max_preemptions_per_round=0)),
    Case("not when the job fits now",
         (held("low", {A: 8}),), (job("j"),), ()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_preemption_rules(case: Case) -> None:
    n = 3 if case.name == "not when the job fits now" else 2
    decisions = schedule(fleet_for(case.running, n), case.pending, case.policy, now=NOW)
    assert tuple(p.job_id for p in decisions.preemptions) == case.victims
    for p in decisions.preemptions:
        assert wait(decisions, p.for_job).reason.startswith("preempting ")
        assert p.job_id in wait(decisions, p.for_job).reason


def test_preemptor_waits_and_holds_the_freed_group() -> None:
    """The victims still hold their devices: the preemptor waits with a
    reservation, and a later small job may not take the free devices the
    plan counted on."""
    running = (held("low", {A: 4}), held("other", {B: 8}, priority=9))
    pending = (job("big", devices=8, priority=1, order=0),
               job("small", devices=4, priority=0, order=1, tenant="lo"))
    decisions = schedule(fleet_for(running), pending, Policy(), now=NOW)
    assert [p.job_id for p in decisions.preemptions] == ["low"]
    assert decisions.preemptions[0].for_job == "big"
    assert "higher-priority job big (priority 1 > 0)" in decisions.preemptions[0].reason
    assert wait(decisions, "big").reason.startswith("preempting low to make room on pool p")
    assert placed_ids(decisions) == []
    # Next round the victim has stopped: the preemptor starts there.
    after = schedule(fleet_for(running[1:]), pending, Policy(), now=NOW + 5)
    assert placed_ids(after)[0] == "big" and not after.preemptions


QUOTA = (Quota("lab-a", "ascend", 8, 0), Quota("lab-b", "ascend", 0, None))


def test_owner_reclaims_borrowed_capacity_at_equal_priority() -> None:
    running = (held("b-1", {A: 8}, tenant="lab-b", borrowed=True),
               held("b-2", {B: 8}, tenant="lab-b", borrowed=True, lost_s=1))
    pending = (job("a-1", tenant="lab-a", priority=0),)
    decisions = schedule(fleet_for(running), pending, Policy(quotas=QUOTA), now=NOW)
    assert [p.job_id for p in decisions.preemptions] == ["b-2"]
    assert "reclaimed by tenant lab-a" in decisions.preemptions[0].reason


def test_no_reclaim_beyond_nominal_or_of_own_jobs() -> None:
    running = (held("a-old", {A: 8}, tenant="lab-a"),
               held("b-1", {B: 8}, tenant="lab-b", borrowed=True))
    pending = (job("a-1", tenant="lab-a", priority=0),)  # would be 16 > nominal 8
    quotas = (Quota("lab-a", "ascend", 8, None), Quota("lab-b", "ascend", 0, None))
    decisions = schedule(fleet_for(running), pending, Policy(quotas=quotas), now=NOW)
    assert decisions.preemptions == ()
    unowned = schedule(fleet_for(running[1:]), (job("c-1", tenant="lab-c", priority=0),),
                       Policy(quotas=quotas), now=NOW)
    assert unowned.preemptions == ()  # no quota there: nothing to reclaim


def test_running_job_without_nodes_is_never_a_victim() -> None:
    running = (RunningView("blind", "p", "910B", 16, None, priority=0),)
    snap = snapshot([replace(n, free_devices=()) for n in nodes(2)], running=running)
    assert schedule(snap, (job("j"),), Policy(), now=NOW).preemptions == ()


run_st = st.tuples(st.integers(-1, 2), st.booleans(), st.sampled_from(["lab-a", "lab-b"]),
                   st.sampled_from([1, 2, 4, 8]), st.integers(0, 3), st.floats(0, 1000),
                   st.booleans())
pend_st = st.tuples(st.integers(-1, 3), st.sampled_from(["lab-a", "lab-b"]),
                    st.sampled_from([1, 2, 4, 8]), st.integers(1, 2))


def place_running(specs) -> tuple[RunningView, ...]:
    """Running jobs packed first-fit on 4 nodes of 8 devices (skip what does not fit)."""
    free = [8, 8, 8, 8]
    out: list[RunningView] = []
    for i, (prio, borrowed, tenant, devices, node, lost, cooled) in enumerate(specs):
        if free[node] < devices:
            continue
        free[node] -= devices
        out.append(held(f"r{i}", {f"p-{node:03d}": devices}, tenant=tenant, priority=prio,
                        borrowed=borrowed, lost_s=lost,
                        preempted_at=NOW - 10 if cooled else None))
    return tuple(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(run_st, max_size=10), st.lists(pend_st, min_size=1, max_size=8),
       st.integers(0, 3))
def test_preemption_properties(run_specs, pend_specs, limit) -> None:
    running = place_running(run_specs)
    pending = tuple(job(f"j{i}", priority=p, tenant=t, devices=d, replicas=r, order=i)
                    for i, (p, t, d, r) in enumerate(pend_specs))
    policy = Policy(max_preemptions_per_round=limit,
                    quotas=(Quota("lab-a", "ascend", 16, None),
                            Quota("lab-b", "ascend", 8, None)))
    snap = fleet_for(running, 4)
    decisions = schedule(snap, pending, policy, now=NOW)
    assert decisions == schedule(snap, pending, policy, now=NOW)  # deterministic
    assert len(decisions.preemptions) <= limit
    victims = [p.job_id for p in decisions.preemptions]
    assert len(victims) == len(set(victims))
    by_id = {r.job_id: r for r in running}
    jobs_by_id = {j.job_id: j for j in pending}
    placed = set(placed_ids(decisions))
    for p in decisions.preemptions:
        victim, for_job = by_id[p.job_id], jobs_by_id[p.for_job]
        assert victim.last_preempted_at is None  # cooldown respected
        assert p.for_job not in placed
        assert victim.priority < for_job.priority or (
            victim.borrowed and victim.tenant != for_job.tenant), (victim, for_job)
