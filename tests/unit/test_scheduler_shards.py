"""Sharded rounds (pure split and merge, no Ray): cases that read like the
rules in ``controlplane/scheduler/shards.py``, and hypothesis properties: no
device double-booked, no job placed twice, quotas never exceeded, and with
one shard exactly the core's decisions."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler.core import schedule
from controlplane.scheduler.host import ShardedInlineHost
from controlplane.scheduler.shards import (
    ShardedRound,
    run_inline,
    schedule_sharded,
    shard_of,
    split_budget,
)
from controlplane.scheduler.types import (
    ClusterSnapshot,
    Decisions,
    NodeView,
    PendingJob,
    Policy,
    Quota,
    RunningView,
)
from tests.unit.builders import GB, SPEEDS, jobs, nodes, placed_ids, placement, snapshot, wait

NOW = 5_000.0
# Pool names and their shards: with 2 shards "asc" and "d" are shard 0,
# "nv" and "mlu" shard 1; with 3 shards "asc"/"d" 0, "nv" 1, "mlu" 2.
POOLS = ["asc", "nv", "mlu", "d"]


DEFAULT = Policy()


def sharded(snap: ClusterSnapshot, queue: tuple[PendingJob, ...], policy: Policy = DEFAULT,
            shards: int = 2) -> Decisions:
    return schedule_sharded(snap, queue, policy, NOW, shards, run_inline)


def test_pool_shards_are_stable_and_in_range() -> None:
    assert [shard_of(p, 2) for p in POOLS] == [0, 1, 1, 0]
    assert [shard_of(p, 3) for p in POOLS] == [0, 1, 2, 0]
    assert all(shard_of(f"pool-{i}", 1) == 0 for i in range(20))
    assert {shard_of(f"pool-{i}", 4) for i in range(64)} == {0, 1, 2, 3}


@pytest.mark.parametrize(("total", "shards", "parts"), [
    (8, 3, [3, 3, 2]), (2, 4, [1, 1, 0, 0]), (0, 3, [0, 0, 0]), (1024, 1, [1024])])
def test_budgets_are_split_without_exceeding_the_total(total: int, shards: int,
                                                       parts: list[int]) -> None:
    assert [split_budget(total, shards, s) for s in range(shards)] == parts


def test_a_job_whose_home_shard_is_full_spills_to_the_next() -> None:
    # H100 (fast, shard 1) is full; the 910B pool of shard 0 is free.
    snap = snapshot(nodes(1, model="H100", family="nvidia", pool="nv", free=()),
                    nodes(1, model="910B", family="ascend", pool="asc"))
    decisions = sharded(snap, jobs("a", devices=4))
    assert placement(decisions, "a-0").pool == "asc"


def test_a_job_waiting_for_a_faster_pool_at_home_does_not_spill() -> None:
    # Shard 1 has a busy H100 pool freeing soon and a free slow MLU pool; the
    # core waits for the H100 rather than start on the MLU or the free 910B
    # of shard 0, and so does the sharded round.
    snap = snapshot(
        nodes(1, model="H100", family="nvidia", pool="nv", free=()),
        nodes(1, model="MLU370-X8", family="cambricon", pool="mlu", memory_gb=48),
        nodes(1, model="910B", family="ascend", pool="asc"),
        running=[RunningView("r", "nv", "H100", 8, NOW + 60)])
    queue = jobs("a", devices=8, runtime_s=36_000)
    assert wait(schedule(snap, queue, Policy(), NOW), "a-0").reason.startswith(
        "waiting for faster pool nv")
    assert wait(sharded(snap, queue), "a-0").reason.startswith("waiting for faster pool nv")


def test_a_spilled_job_still_waits_for_a_faster_pool_it_left_behind() -> None:
    # Home (shard 1) is one busy H100 pool, freeing soon; the job spills to
    # shard 0, whose MLU pool is free but far slower. Seeing the H100 pool
    # as a shadow there, it waits for it, as the unsharded core does.
    snap = snapshot(
        nodes(1, model="H100", family="nvidia", pool="nv", free=()),
        nodes(1, model="MLU370-X8", family="cambricon", pool="asc", memory_gb=48),
        running=[RunningView("r", "nv", "H100", 8, NOW + 60)])
    queue = jobs("a", devices=8, runtime_s=36_000)
    assert placed_ids(schedule(snap, queue, Policy(), NOW)) == placed_ids(
        sharded(snap, queue)) == []
    # A short job gains little from waiting: it starts on the MLU at once.
    short = jobs("b", devices=8, runtime_s=10)
    assert placement(sharded(snap, short), "b-0").pool == "asc"


def test_a_spilled_job_does_not_take_a_gang_reservation() -> None:
    # Shard 0: a 2x8 gang waits for the busy node of pool asc and reserves
    # it. A long 8-device job from shard 1 (full) spills into asc: it would
    # push the gang back, so it waits, as in the unsharded core.
    snap = snapshot(
        nodes(1, pool="asc", name="asc-free"),
        nodes(1, pool="asc", name="asc-busy", free=()),
        nodes(1, model="H100", family="nvidia", pool="nv", free=()),
        running=[RunningView("r1", "asc", "910B", 8, NOW + 100),
                 RunningView("r2", "nv", "H100", 8, NOW + 50_000)])
    queue = (jobs("g", replicas=2, devices=8, families=["ascend"])
             + jobs("s", devices=8, runtime_s=36_000, first_order=1))
    decisions = sharded(snap, queue)
    assert placed_ids(decisions) == placed_ids(schedule(snap, queue, Policy(), NOW)) == []


def test_the_merge_keeps_a_quota_two_shards_admitted_at_once() -> None:
    # Each job's own speed sends it to a different shard; both shards admit
    # it (8 of a nominal 8, no borrowing); the merge keeps the first only.
    snap = snapshot(nodes(1, model="910B", pool="asc"), nodes(1, model="910B4", pool="nv"))
    fast_here = [dataclasses.replace(j, speed=(("910B", 2.0),)) for j in jobs("lab", devices=8)]
    fast_there = [dataclasses.replace(j, job_id="lab-1", order=1, speed=(("910B4", 2.0),))
                  for j in jobs("lab", devices=8)]
    policy = Policy(quotas=(Quota("lab", "ascend", 8, 0),))
    decisions = sharded(snap, (*fast_here, *fast_there), policy)
    assert placed_ids(decisions) == ["lab-0"]
    assert wait(decisions, "lab-1").reason.startswith("quota: tenant lab uses 8/8 ascend")


def test_the_merge_enforces_the_round_bound() -> None:
    # Each shard places its job in the same pass; the bound keeps one.
    snap = snapshot(nodes(1, pool="asc"), nodes(1, model="H100", family="nvidia", pool="nv"))
    queue = jobs("a", devices=8, families=["ascend"]) + jobs(
        "b", devices=8, families=["nvidia"], first_order=1)
    decisions = sharded(snap, queue, Policy(max_placements_per_round=1))
    assert placed_ids(decisions) == ["a-0"]
    assert wait(decisions, "b-0").reason.startswith("round limit: 1 placements")


def test_never_fits_is_judged_on_the_whole_fleet() -> None:
    snap = snapshot(nodes(1, pool="asc"), nodes(1, model="H100", family="nvidia", pool="nv"))
    queue = jobs("a", families=["mthreads"]) + jobs("b", replicas=3, devices=8, first_order=1)
    assert sharded(snap, queue).waiting == schedule(snap, queue, Policy(), NOW).waiting


def test_the_inline_host_runs_the_sharded_round() -> None:
    snap = snapshot(nodes(2, pool="asc"), nodes(2, model="H100", family="nvidia", pool="nv"))
    queue = jobs("a", devices=4, n=9)
    assert ShardedInlineHost(2).schedule(snap, queue, Policy(), NOW) == sharded(snap, queue)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        ShardedInlineHost(0)


# -- properties -------------------------------------------------------------

CHIPS = [("H100", "nvidia", 80), ("910B", "ascend", 64), ("MLU370-X8", "cambricon", 48),
         ("CPU", "cpu", 16)]


@st.composite
def node_views(draw: st.DrawFn, index: int) -> NodeView:
    model, family, memory_gb = draw(st.sampled_from(CHIPS))
    devices = draw(st.sampled_from([8, 8, 4, 2, 0]))
    free = draw(st.sets(st.integers(0, max(devices - 1, 0)), max_size=devices))
    tracked = draw(st.booleans())
    return NodeView(
        name=f"n{index:02d}", pool=draw(st.sampled_from(POOLS)), region="r", family=family,
        model=model, device_memory_bytes=memory_gb * GB, total_devices=devices,
        free_devices=tuple(sorted(free)) if devices else (),
        cpu_free_millis=draw(st.integers(1, 8)) * 1000 if tracked else 0,
        memory_free_bytes=draw(st.integers(1, 8)) * 10 * GB if tracked else 0,
        schedulable=draw(st.sampled_from([True, True, False])))


@st.composite
def pending_jobs(draw: st.DrawFn, index: int) -> PendingJob:
    return PendingJob(
        job_id=f"j{index:02d}", tenant=draw(st.sampled_from(["a", "b"])), queue="q",
        priority=draw(st.integers(0, 2)), order=draw(st.integers(0, 5)),
        replicas=draw(st.sampled_from([1, 1, 2])),
        devices_per_replica=draw(st.sampled_from([0, 1, 2, 4, 8])),
        cpu_millis=draw(st.sampled_from([0, 0, 1000, 3000])),
        families=draw(st.sampled_from([frozenset(), frozenset(), frozenset({"nvidia"}),
                                       frozenset({"ascend", "cambricon"}), frozenset({"x"})])),
        reference_runtime_s=draw(st.sampled_from([0.0, 600.0, 36_000.0])),
        speed=draw(st.sampled_from([(), (("910B", 4.0),)])))


@st.composite
def rounds(draw: st.DrawFn) -> tuple[ClusterSnapshot, tuple[PendingJob, ...]]:
    fleet = tuple(draw(node_views(i)) for i in range(draw(st.integers(0, 10))))
    by_pool_model = sorted({(n.pool, n.model) for n in fleet if n.total_devices})
    runs = tuple(
        RunningView(f"r{i}", pool, model, draw(st.integers(1, 8)),
                    draw(st.one_of(st.none(), st.floats(0, 2 * NOW))),
                    tenant=draw(st.sampled_from(["a", "b"])), priority=draw(st.integers(0, 1)),
                    borrowed=draw(st.booleans()),
                    nodes=((next(n.name for n in fleet if (n.pool, n.model) == (pool, model)),
                            1),))
        for i, (pool, model) in enumerate(by_pool_model[:draw(st.integers(0, 3))]))
    queue = tuple(draw(pending_jobs(i)) for i in range(draw(st.integers(0, 10))))
    return ClusterSnapshot(fleet, runs, tuple(sorted(SPEEDS.items()))), queue


policies = st.builds(
    Policy,
    default_runtime_s=st.sampled_from([60.0, 3600.0]),
    max_placements_per_round=st.integers(0, 4),
    max_reservations_per_round=st.sampled_from([0, 1, 1024]),
    max_preemptions_per_round=st.sampled_from([0, 1, 8]),
    fair_share=st.booleans(),
    quotas=st.sampled_from([(), (Quota("a", "ascend", 4, 0),),
                            (Quota("a", "nvidia", 8, 4), Quota("b", "910B", 2, None))]),
)


@settings(max_examples=40, deadline=None)
@given(rounds(), policies, st.sampled_from([2, 3]))
def test_sharded_rounds_keep_the_invariants(
    inputs: tuple[ClusterSnapshot, tuple[PendingJob, ...]], policy: Policy, shards: int
) -> None:
    snap, queue = inputs
    decisions = sharded(snap, queue, policy, shards)
    decided = placed_ids(decisions) + [w.job_id for w in decisions.waiting]
    assert Counter(decided) == Counter(j.job_id for j in queue)  # one decision each
    free = {(n.name, d) for n in snap.nodes if n.schedulable for d in n.free_devices}
    used = [(r.node, d) for p in decisions.placements for r in p.replicas
            for d in r.device_indices]
    assert len(used) == len(set(used)) and set(used) <= free  # never double-booked
    by_id, by_name = {j.job_id: j for j in queue}, {n.name: n for n in snap.nodes}
    cpu: Counter[str] = Counter()
    for p in decisions.placements:
        assert len({by_name[r.node].pool for r in p.replicas}) == 1  # a gang in one pool
        assert len(p.replicas) == by_id[p.job_id].replicas
        for r in p.replicas:
            cpu[r.node] += by_id[p.job_id].cpu_millis
    for node in snap.nodes:
        if node.cpu_free_millis or node.memory_free_bytes:
            assert cpu[node.name] <= node.cpu_free_millis
    if policy.max_placements_per_round:
        assert len(decisions.placements) <= policy.max_placements_per_round
    victims = [v.job_id for v in decisions.preemptions]
    assert len(victims) == len(set(victims)) <= policy.max_preemptions_per_round
    assert_quotas_kept(snap, decisions, policy, by_id)
    assert sharded(snap, queue, policy, shards) == decisions  # deterministic


def assert_quotas_kept(snap: ClusterSnapshot, decisions: Decisions, policy: Policy,
                       by_id: dict[str, PendingJob]) -> None:
    """Usage (running + placed) within nominal + borrow limit wherever the
    placements added to it, and ``borrowed`` exactly when beyond nominal."""
    family_of = {n.model: n.family for n in snap.nodes}
    used: Counter[tuple[str, str]] = Counter()
    for run in snap.running:
        for q in policy.quotas:
            if q.tenant == run.tenant and q.family_or_model in (run.model,
                                                               family_of.get(run.model)):
                used[(q.tenant, q.family_or_model)] += run.devices
    for p in decisions.placements:
        job = by_id[p.job_id]
        need, beyond = job.replicas * job.devices_per_replica, False
        for q in policy.quotas:
            if q.tenant == job.tenant and q.family_or_model in (p.model, p.family):
                used[(q.tenant, q.family_or_model)] += need
                total = used[(q.tenant, q.family_or_model)]
                beyond = beyond or total > q.devices
                assert q.borrow_limit is None or total <= q.devices + q.borrow_limit
        assert p.borrowed == beyond


@settings(max_examples=40, deadline=None)
@given(rounds(), policies)
def test_one_shard_is_exactly_the_core(
    inputs: tuple[ClusterSnapshot, tuple[PendingJob, ...]], policy: Policy
) -> None:
    snap, queue = inputs
    assert sharded(snap, queue, policy, 1) == schedule(snap, queue, policy, NOW)


@settings(max_examples=25, deadline=None)
@given(rounds(), policies)
def test_pools_all_in_one_shard_is_exactly_the_core(
    inputs: tuple[ClusterSnapshot, tuple[PendingJob, ...]], policy: Policy
) -> None:
    snap, queue = inputs
    one_shard = ClusterSnapshot(
        tuple(dataclasses.replace(n, pool="asc" + n.pool) for n in snap.nodes
              if shard_of("asc" + n.pool, 2) == 0),
        snap.running, snap.model_speed)
    assert ShardedRound(one_shard, queue, policy, NOW, 2).first_pass()[0].pending == queue
    assert sharded(one_shard, queue, policy, 2) == schedule(one_shard, queue, policy, NOW)
