"""Invariants of the scheduler core over random small fleets and queues."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import (
    ClusterSnapshot,
    NodeView,
    PendingJob,
    Policy,
    RunningView,
)
from tests.unit.builders import GB, SPEEDS

NOW = 5_000.0

# (model, family, device memory GB)
CHIPS = [("H100", "nvidia", 80), ("910B", "ascend", 64), ("MLU370-X8", "cambricon", 48),
         ("CPU", "cpu", 16)]
POOLS = ["p", "q", "r"]
# Mostly "any", sometimes a filter; "x" is a family no node has.
FAMILY_FILTERS = [frozenset(), frozenset(), frozenset(), frozenset({"nvidia"}),
                  frozenset({"ascend", "cambricon"}), frozenset({"cpu"}), frozenset({"x"})]
MODEL_FILTERS = [frozenset(), frozenset(), frozenset({"H100"}), frozenset({"910B"})]


@st.composite
def node_views(draw: st.DrawFn, index: int) -> NodeView:
    model, family, memory_gb = draw(st.sampled_from(CHIPS))
    devices = draw(st.sampled_from([8, 8, 4, 2, 1, 0]))
    free = draw(st.sets(st.integers(0, max(devices - 1, 0)), max_size=devices))
    tracked = draw(st.booleans())
    return NodeView(
        name=f"n{index:02d}",
        pool=draw(st.sampled_from(POOLS)),
        region="r",
        family=family,
        model=model,
        device_memory_bytes=memory_gb * GB,
        total_devices=devices,
        free_devices=tuple(sorted(free)) if devices else (),
        cpu_free_millis=draw(st.integers(1, 8)) * 1000 if tracked else 0,
        memory_free_bytes=draw(st.integers(1, 8)) * 10 * GB if tracked else 0,
        schedulable=draw(st.sampled_from([True, True, False])),
    )


@st.composite
def fleets(draw: st.DrawFn) -> tuple[NodeView, ...]:
    count = draw(st.integers(0, 10))
    return tuple(draw(node_views(i)) for i in range(count))


@st.composite
def pending_jobs(draw: st.DrawFn, index: int) -> PendingJob:
    return PendingJob(
        job_id=f"j{index:02d}",
        tenant=draw(st.sampled_from(["a", "b"])),
        queue="q",
        priority=draw(st.integers(0, 2)),
        order=draw(st.integers(0, 5)),  # ties on purpose
        replicas=draw(st.sampled_from([1, 1, 2, 4])),
        devices_per_replica=draw(st.sampled_from([0, 1, 1, 2, 3, 4, 8])),
        min_device_memory_bytes=draw(st.sampled_from([0, 0, 0, 40, 64, 96])) * GB,
        cpu_millis=draw(st.sampled_from([0, 0, 1000, 3000])),
        memory_bytes=draw(st.sampled_from([0, 0, 20 * GB])),
        families=draw(st.sampled_from(FAMILY_FILTERS)),
        models=draw(st.sampled_from(MODEL_FILTERS)),
        reference_runtime_s=draw(st.sampled_from([0.0, 600.0, 36_000.0])),
    )


@st.composite
def queues(draw: st.DrawFn) -> tuple[PendingJob, ...]:
    count = draw(st.integers(0, 10))
    return tuple(draw(pending_jobs(i)) for i in range(count))


@st.composite
def snapshots(draw: st.DrawFn) -> ClusterSnapshot:
    fleet = draw(fleets())
    runs = tuple(
        RunningView(f"r{i}", draw(st.sampled_from(POOLS)), draw(st.sampled_from(CHIPS))[0],
                    draw(st.integers(1, 8)),
                    draw(st.one_of(st.none(), st.floats(0, 2 * NOW))))
        for i in range(draw(st.integers(0, 3)))
    )
    return ClusterSnapshot(fleet, runs, tuple(sorted(SPEEDS.items())))


policies = st.builds(
    Policy,
    default_runtime_s=st.sampled_from([60.0, 3600.0]),
    wait_for_faster_margin=st.sampled_from([1.0, 1.1, 3.0]),
    max_placements_per_round=st.integers(0, 4),
)


def qualifies(node: NodeView, job: PendingJob) -> bool:
    """The documented filter rules, restated independently of the core."""
    if job.families or job.models:
        if node.family not in job.families and node.model not in job.models:
            return False
    elif job.devices_per_replica and node.family == "cpu":
        return False
    return not job.devices_per_replica or (
        node.device_memory_bytes >= job.min_device_memory_bytes
    )


@settings(max_examples=150, deadline=None)
@given(snapshots(), queues(), policies)
def test_every_job_gets_exactly_one_decision(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy
) -> None:
    decisions = schedule(snap, queue, policy, NOW)
    decided = [p.job_id for p in decisions.placements] + [w.job_id for w in decisions.waiting]
    assert Counter(decided) == Counter(j.job_id for j in queue)
    if policy.max_placements_per_round:
        assert len(decisions.placements) <= policy.max_placements_per_round


@settings(max_examples=150, deadline=None)
@given(snapshots(), queues(), policies)
def test_only_free_devices_and_never_twice(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy
) -> None:
    decisions = schedule(snap, queue, policy, NOW)
    free = {(n.name, d) for n in snap.nodes if n.schedulable for d in n.free_devices}
    used = [(r.node, d) for p in decisions.placements for r in p.replicas
            for d in r.device_indices]
    assert len(used) == len(set(used))
    assert set(used) <= free


@settings(max_examples=150, deadline=None)
@given(snapshots(), queues(), policies)
def test_gangs_are_whole_and_in_one_qualifying_group(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy
) -> None:
    decisions = schedule(snap, queue, policy, NOW)
    by_name = {n.name: n for n in snap.nodes}
    by_id = {j.job_id: j for j in queue}
    for p in decisions.placements:
        job = by_id[p.job_id]
        assert [r.rank for r in p.replicas] == list(range(job.replicas))
        for replica in p.replicas:
            node = by_name[replica.node]
            assert len(replica.device_indices) == job.devices_per_replica
            assert (node.pool, node.model, node.family) == (p.pool, p.model, p.family)
            assert node.schedulable and qualifies(node, job)


@settings(max_examples=150, deadline=None)
@given(snapshots(), queues(), policies)
def test_host_cpu_and_memory_respected_where_tracked(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy
) -> None:
    decisions = schedule(snap, queue, policy, NOW)
    by_id = {j.job_id: j for j in queue}
    cpu: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    for p in decisions.placements:
        for replica in p.replicas:
            cpu[replica.node] += by_id[p.job_id].cpu_millis
            memory[replica.node] += by_id[p.job_id].memory_bytes
    for node in snap.nodes:
        if node.cpu_free_millis or node.memory_free_bytes:
            assert cpu[node.name] <= node.cpu_free_millis
            assert memory[node.name] <= node.memory_free_bytes


@settings(max_examples=100, deadline=None)
@given(snapshots(), queues(), policies, st.randoms(use_true_random=False))
def test_same_input_same_decisions_whatever_the_input_order(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy, rnd: object
) -> None:
    first = schedule(snap, queue, policy, NOW)
    assert schedule(snap, queue, policy, NOW) == first
    nodes, jobs, runs = list(snap.nodes), list(queue), list(snap.running)
    for items in (nodes, jobs, runs):
        rnd.shuffle(items)  # type: ignore[attr-defined]
    shuffled = dataclasses.replace(snap, nodes=tuple(nodes), running=tuple(runs))
    assert schedule(shuffled, tuple(jobs), policy, NOW) == first


@settings(max_examples=100, deadline=None)
@given(snapshots(), queues())
def test_never_fits_means_not_even_on_an_empty_fleet(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...]
) -> None:
    decisions = schedule(snap, queue, Policy(), NOW)
    empty = ClusterSnapshot(tuple(
        dataclasses.replace(n, free_devices=tuple(range(n.total_devices)), schedulable=True,
                            cpu_free_millis=0, memory_free_bytes=0)
        for n in snap.nodes
    ))
    by_id = {j.job_id: j for j in queue}
    for verdict in decisions.waiting:
        if verdict.never_fits:
            alone = schedule(empty, (by_id[verdict.job_id],), Policy(), NOW)
            assert alone.placements == ()
        else:
            job = by_id[verdict.job_id]
            assert schedule(empty, (job,), Policy(), NOW).placements, verdict.reason


# -- increment 2: reservations, backfill and fair share keep the invariants --

policies_v2 = st.builds(
    Policy,
    default_runtime_s=st.sampled_from([60.0, 3600.0]),
    wait_for_faster_margin=st.sampled_from([1.0, 1.5, 3.0]),
    max_placements_per_round=st.integers(0, 4),
    max_reservations_per_round=st.sampled_from([0, 1, 2, 1024]),
    fair_share=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(snapshots(), queues(), policies_v2)
def test_reservations_and_fair_share_never_double_book(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy
) -> None:
    decisions = schedule(snap, queue, policy, NOW)
    decided = [p.job_id for p in decisions.placements] + [w.job_id for w in decisions.waiting]
    assert Counter(decided) == Counter(j.job_id for j in queue)
    free = {(n.name, d) for n in snap.nodes if n.schedulable for d in n.free_devices}
    used = [(r.node, d) for p in decisions.placements for r in p.replicas
            for d in r.device_indices]
    assert len(used) == len(set(used)) and set(used) <= free
    assert schedule(snap, queue, policy, NOW) == decisions


@settings(max_examples=150, deadline=None)
@given(snapshots(), queues(), policies_v2)
def test_backfill_never_overdraws_a_reservation(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy
) -> None:
    from controlplane.scheduler.core import RoundState, order_queue

    state = RoundState(snap, policy, NOW)
    for job in order_queue(queue):
        state.decide(job)
    assert state.reservations <= policy.max_reservations_per_round
    for holds in state.reserved.values():
        starts = [r.start_s for r in holds.queue]
        assert starts == sorted(starts)  # queue order is start order
        assert all(r.extra >= 0 for r in holds.queue)
        assert holds.devices == sum(r.devices for r in holds.queue)


@settings(max_examples=100, deadline=None)
@given(snapshots(), queues())
def test_explanations_name_the_chosen_pool(
    snap: ClusterSnapshot, queue: tuple[PendingJob, ...]
) -> None:
    for p in schedule(snap, queue, Policy(), NOW).placements:
        chosen = p.candidates[p.chosen_index]
        assert (chosen.pool, chosen.model, chosen.fits_now) == (p.pool, p.model, True)
        assert p.explanation.startswith(f"chose pool {p.pool} ({p.model})")
        assert chosen.finish_s == min(c.finish_s for c in p.candidates)  or any(
            not c.fits_now for c in p.candidates if c.finish_s < chosen.finish_s)
