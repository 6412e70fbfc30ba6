"""The scheduler core, case by case: each table row is one rule users expect."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.scheduler.core import order_queue, schedule
from controlplane.scheduler.types import Decisions, NodeView, PendingJob, Policy
from tests.unit.builders import (
    GB,
    jobs,
    nodes,
    placed_ids,
    placement,
    running,
    snapshot,
    wait,
)

NOW = 1_000_000.0
DEFAULT_POLICY = Policy()

H100 = nodes(1, model="H100", family="nvidia", pool="h100-east", memory_gb=80)
MLU = nodes(1, model="MLU370-X8", family="cambricon", pool="mlu-west", memory_gb=48)
ASCEND = nodes(1, model="910B", family="ascend", pool="910b-west", memory_gb=64)
CPU_NODES = nodes(2, model="CPU", family="cpu", pool="cpu", devices=4, memory_gb=16)


def run(
    fleet: tuple[NodeView, ...],
    queue: tuple[PendingJob, ...],
    policy: Policy = DEFAULT_POLICY,
    **snapshot_args: object,
) -> Decisions:
    return schedule(snapshot(fleet, **snapshot_args), queue, policy, NOW)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PlacementCase:
    name: str
    fleet: tuple[NodeView, ...]
    queue: tuple[PendingJob, ...]
    placed: tuple[tuple[str, str], ...]  # (job id, pool), in placement order
    waiting: tuple[str, ...] = ()


PLACEMENT_CASES = [
    PlacementCase("one job on an idle node", ASCEND, jobs("a"), (("a-0", "910b-west"),)),
    PlacementCase(
        "family filter picks the named family",
        H100 + ASCEND, jobs("a", families={"ascend"}), (("a-0", "910b-west"),),
    ),
    PlacementCase(
        "model filter picks the named model",
        ASCEND + H100, jobs("a", models={"H100"}), (("a-0", "h100-east"),),
    ),
    PlacementCase(
        "memory minimum skips small-memory chips",
        nodes(1, model="A100", family="nvidia", pool="a100-40", memory_gb=40)
        + nodes(1, model="A100", family="nvidia", pool="a100-80", memory_gb=80),
        jobs("a", memory_gb=64), (("a-0", "a100-80"),),
    ),
    PlacementCase(
        "higher priority goes first",
        nodes(1, devices=1),
        jobs("low") + jobs("high", priority=5, first_order=1),
        (("high-0", "p"),), waiting=("low-0",),
    ),
    PlacementCase(
        "submission order breaks priority ties",
        nodes(1, devices=2), jobs("a", n=3), (("a-0", "p"), ("a-1", "p")), waiting=("a-2",),
    ),
    PlacementCase(
        "a gang never spans pools: two half-free pools hold nothing",
        nodes(1, pool="p", free=range(4)) + nodes(1, pool="q", free=range(4)),
        jobs("g", replicas=2, devices=4), (), waiting=("g-0",),
    ),
    PlacementCase(
        "a gang that does not fit leaves room for the small job behind it",
        nodes(1, free=range(4)),
        jobs("big", replicas=2, devices=4) + jobs("small", devices=4, first_order=1),
        (("small-0", "p"),), waiting=("big-0",),
    ),
    PlacementCase(
        "CPU-only job prefers plain CPU nodes",
        ASCEND + CPU_NODES, jobs("etl", devices=0), (("etl-0", "cpu"),),
    ),
    PlacementCase(
        "CPU-only job may use a busy accelerator node",
        nodes(1, free=()), jobs("etl", devices=0), (("etl-0", "p"),),
    ),
    PlacementCase(
        "accelerator job naming cpu may use CPU slots",
        CPU_NODES, jobs("a", families={"cpu"}), (("a-0", "cpu"),),
    ),
    PlacementCase(
        "an accelerator job with no filter skips CPU slots",
        CPU_NODES + ASCEND, jobs("a", n=2), (("a-0", "910b-west"), ("a-1", "910b-west")),
    ),
    PlacementCase(
        "host CPU is charged per replica on nodes that track it",
        nodes(1, model="CPU", family="cpu", devices=0, cpu_millis=4000, memory_bytes=8 * 10**9),
        jobs("etl", devices=0, cpu_millis=3000, n=2), (("etl-0", "p"),), waiting=("etl-1",),
    ),
    PlacementCase(
        "zero host CPU and memory means untracked: always fits",
        nodes(1, devices=2), jobs("a", cpu_millis=64_000, memory_bytes=10**12, n=2),
        (("a-0", "p"), ("a-1", "p")),
    ),
]


@pytest.mark.parametrize("case", PLACEMENT_CASES, ids=lambda c: c.name)
def test_placement(case: PlacementCase) -> None:
    decisions = run(case.fleet, case.queue)
    assert [(p.job_id, p.pool) for p in decisions.placements] == list(case.placed)
    assert [w.job_id for w in decisions.waiting] == list(case.waiting)


@dataclass(frozen=True)
class LayoutCase:
    name: str
    fleet: tuple[NodeView, ...]
    job: PendingJob
    layout: tuple[tuple[str, tuple[int, ...]], ...]  # per rank: (node, devices)


LAYOUT_CASES = [
    LayoutCase(
        "gang of 4x2 on 8-device nodes lands on one node",
        nodes(2), jobs("g", replicas=4, devices=2)[0],
        (("p-000", (0, 1)), ("p-000", (2, 3)), ("p-000", (4, 5)), ("p-000", (6, 7))),
    ),
    LayoutCase(
        "gang of 4x8 spans a 2-node pool, ranks in node order",
        nodes(2, devices=16), jobs("g", replicas=4, devices=8)[0],
        (("p-000", tuple(range(8))), ("p-000", tuple(range(8, 16))),
         ("p-001", tuple(range(8))), ("p-001", tuple(range(8, 16)))),
    ),
    LayoutCase(
        "best fit: the node with the fewest free devices that holds the replica",
        nodes(1, name="roomy") + nodes(1, name="snug", free=(5, 6)),
        jobs("a", devices=2)[0], (("snug-000", (5, 6)),),
    ),
    LayoutCase(
        "packing beats best fit: one roomy node rather than three snug ones",
        nodes(1, name="a", free=(0, 1)) + nodes(1, name="b", free=(0, 1))
        + nodes(1, name="c"),
        jobs("g", replicas=3, devices=2)[0],
        (("c-000", (0, 1)), ("c-000", (2, 3)), ("c-000", (4, 5))),
    ),
    LayoutCase(
        "cordoned nodes are skipped",
        nodes(1, name="cordoned", schedulable=False) + nodes(1, name="ok"),
        jobs("a", devices=8)[0], (("ok-000", tuple(range(8))),),
    ),
    LayoutCase(
        "a node without host CPU left is passed over",
        nodes(1, name="a", cpu_millis=500, memory_bytes=GB)
        + nodes(1, name="b", cpu_millis=4000, memory_bytes=GB),
        jobs("x", cpu_millis=1000)[0], (("b-000", (0,)),),
    ),
    LayoutCase(
        "devices are contiguous when possible",
        nodes(1, free=(0, 2, 3, 5, 6, 7)), jobs("a", devices=3)[0], (("p-000", (5, 6, 7)),),
    ),
    LayoutCase(
        "lowest devices when no contiguous run exists",
        nodes(1, free=(1, 3, 5, 7)), jobs("a", devices=2)[0], (("p-000", (1, 3)),),
    ),
]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: c.name)
def test_gang_layout(case: LayoutCase) -> None:
    decision = placement(run(case.fleet, (case.job,)), case.job.job_id)
    assert [r.rank for r in decision.replicas] == list(range(len(case.layout)))
    assert [(r.node, r.device_indices) for r in decision.replicas] == list(case.layout)


@dataclass(frozen=True)
class NeverCase:
    name: str
    fleet: tuple[NodeView, ...]
    job: PendingJob
    reason: str


A100_EAST = nodes(2, model="A100", family="nvidia", pool="a100-east", memory_gb=80)

NEVER_CASES = [
    NeverCase(
        "more devices per replica than any node has",
        A100_EAST, jobs("a", devices=16)[0],
        "needs 16 devices per replica; the largest qualifying node has 8 (pool a100-east)",
    ),
    NeverCase(
        "a family nobody offers",
        A100_EAST, jobs("a", families={"mthreads"})[0], "no pool offers family 'mthreads'",
    ),
    NeverCase("a model nobody offers", A100_EAST, jobs("a", models={"B200"})[0],
              "no pool offers model 'B200'"),
    NeverCase(
        "more device memory than any chip has",
        H100, jobs("a", memory_gb=96)[0],
        "needs >= 96 GB device memory; largest qualifying is 80 GB (H100)",
    ),
    NeverCase(
        "a gang larger than any pool",
        A100_EAST, jobs("g", replicas=3, devices=8)[0],
        "needs 3x8 devices in one pool; the largest qualifying pool holds 2 such replicas",
    ),
    NeverCase("a gang of no replicas", A100_EAST, jobs("a", replicas=0)[0],
              "invalid job shape: 0 replicas x 1 devices"),
    NeverCase(
        "an accelerator job on a CPU-only fleet",
        CPU_NODES, jobs("a")[0], "no pool offers accelerators",
    ),
]


@pytest.mark.parametrize("case", NEVER_CASES, ids=lambda c: c.name)
def test_never_fits(case: NeverCase) -> None:
    decisions = run(case.fleet, (case.job,))
    assert decisions.placements == ()
    verdict = wait(decisions, case.job.job_id)
    assert verdict.never_fits
    assert case.reason in verdict.reason


def test_capacity_on_cordoned_nodes_counts_statically_and_is_named() -> None:
    fleet = nodes(1, name="busy", free=()) + nodes(1, name="cordoned", schedulable=False)
    verdict = wait(run(fleet, jobs("a", devices=8)), "a-0")
    assert not verdict.never_fits
    assert "waiting for capacity: needs 1x8 devices of 910B" in verdict.reason
    assert "most free in one pool: 0 (pool p)" in verdict.reason
    assert "8 more devices are on unschedulable (cordoned or disconnected) nodes" in verdict.reason


def test_a_gang_that_runs_out_of_host_cpu_takes_nothing() -> None:
    fleet = nodes(2, cpu_millis=4000, memory_bytes=GB)
    queue = jobs("gang", replicas=3, cpu_millis=3000) + jobs("small", first_order=1)
    decisions = run(fleet, queue)
    assert placed_ids(decisions) == ["small-0"]
    small = placement(decisions, "small-0").replicas[0]
    assert (small.node, small.device_indices) == ("p-000", (0,))  # the gang's take was undone
    assert wait(decisions, "gang-0").reason == (
        "waiting for capacity: needs 3x1 devices of 910B; most free in one pool: 16 (pool p); "
        "each replica also needs 3000m CPU; reserved pool p (910B): expected start in 1:00:00, "
        "est. finish 2:00:00"
    )


def test_33_one_device_jobs_on_32_devices_never_double_book() -> None:
    decisions = run(nodes(4), jobs("tenant-a", n=33))
    assert placed_ids(decisions) == [f"tenant-a-{i}" for i in range(32)]
    assert [w.job_id for w in decisions.waiting] == ["tenant-a-32"]
    used = [(r.node, d) for p in decisions.placements for r in p.replicas for d in r.device_indices]
    assert len(used) == len(set(used)) == 32


def test_waiting_reason_names_the_most_free_pool() -> None:
    h100 = {"model": "H100", "family": "nvidia", "pool": "h100-east"}
    fleet = nodes(1, name="a", free=range(6), **h100) + nodes(1, name="b", free=(), **h100)
    verdict = wait(run(fleet + ASCEND, jobs("a", replicas=2, devices=8, models={"H100"})), "a-0")
    assert verdict.reason == (
        "waiting for capacity: needs 2x8 devices of H100; most free in one pool: 6 (pool h100-east)"
        "; reserved pool h100-east (H100): expected start in 1:00:00, est. finish 1:18:56"
    )


def test_fragmented_free_devices_are_named() -> None:
    fleet = nodes(2, free=range(4))
    verdict = wait(run(fleet, jobs("a", devices=8)), "a-0")
    assert "most free in one pool: 8 (pool p)" in verdict.reason
    assert "fragmented: at most 4 on one node" in verdict.reason


@dataclass(frozen=True)
class ChipCase:
    name: str
    h100_free: tuple[int, ...]
    h100_frees_in_s: float | None  # when the running H100 job ends; None = unknown
    placed_on: str | None  # pool, or None when the job waits
    reason: str = ""


CHIP_CASES = [
    ChipCase("both free: the fast chip wins", tuple(range(8)), None, "h100-east"),
    ChipCase(
        "fast pool frees soon: wait for it rather than start 10x slower",
        (), 600, None,
        "waiting for faster pool h100-east (H100): est. finish 0:28:56 there",
    ),
    ChipCase("fast pool frees far in the future: take the slow chip now", (), 72_000, "mlu-west"),
    ChipCase(
        "unknown end counts as the default runtime: still worth waiting",
        (), None, None, "vs 3:13:33 if started now on pool mlu-west (MLU370-X8)",
    ),
]


@pytest.mark.parametrize("case", CHIP_CASES, ids=lambda c: c.name)
def test_heterogeneous_choice(case: ChipCase) -> None:
    fleet = nodes(1, model="H100", family="nvidia", pool="h100-east", free=case.h100_free) + MLU
    busy = () if case.h100_free else (
        running("r", pool="h100-east", model="H100", devices=8,
                end=None if case.h100_frees_in_s is None else NOW + case.h100_frees_in_s),
    )
    decisions = run(fleet, jobs("a", devices=8, runtime_s=3600), running=busy)
    if case.placed_on is None:
        assert decisions.placements == ()
        assert case.reason in wait(decisions, "a-0").reason
    else:
        assert placement(decisions, "a-0").pool == case.placed_on


def test_placement_explains_candidates_and_estimates() -> None:
    decision = placement(run(H100 + MLU, jobs("a", devices=8, runtime_s=3600)), "a-0")
    assert decision.explanation == (
        "chose pool h100-east (H100): est. finish 0:18:56; others: mlu-west (MLU370-X8) 3:13:33"
    )
    assert [(c.pool, c.fits_now) for c in decision.candidates] == [
        ("h100-east", True), ("mlu-west", True),
    ]
    assert decision.estimated_runtime_s == pytest.approx(3600 / 3.17)
    assert (decision.family, decision.model, decision.region) == ("nvidia", "H100", "r")


def test_missing_model_speed_defaults_to_reference() -> None:
    decision = placement(run(ASCEND, jobs("a", runtime_s=100), speeds={}), "a-0")
    assert decision.estimated_runtime_s == 100


def test_round_limit_bounds_placements() -> None:
    decisions = run(nodes(1), jobs("a", n=5), Policy(max_placements_per_round=2))
    assert placed_ids(decisions) == ["a-0", "a-1"]
    assert [w.job_id for w in decisions.waiting] == ["a-2", "a-3", "a-4"]
    assert all(w.reason.startswith("round limit") for w in decisions.waiting)


def test_every_job_gets_exactly_one_decision() -> None:
    queue = jobs("a", n=10) + jobs("b", devices=16, n=2, first_order=10)
    decisions = run(nodes(1), queue)
    ids = placed_ids(decisions) + [w.job_id for w in decisions.waiting]
    assert sorted(ids) == sorted(j.job_id for j in queue)


def test_same_input_same_decisions() -> None:
    fleet = H100 + MLU + ASCEND + nodes(3, pool="q", free=(1, 2, 5))
    queue = jobs("a", n=6, devices=2) + jobs("b", replicas=2, devices=4, n=3, first_order=6)
    assert run(fleet, queue) == run(fleet, queue)
    assert run(fleet, queue) == run(tuple(reversed(fleet)), tuple(reversed(queue)))


def test_order_queue_is_priority_then_submission() -> None:
    queue = jobs("a", n=2) + jobs("b", priority=1, n=2, first_order=2)
    assert [j.job_id for j in order_queue(queue)] == ["b-0", "b-1", "a-0", "a-1"]


def test_custom_ordering_seam() -> None:
    decisions = schedule(
        snapshot(nodes(1, devices=1)), jobs("a", n=2), Policy(), NOW,
        ordering=lambda queue: sorted(queue, key=lambda j: -j.order),
    )
    assert placed_ids(decisions) == ["a-1"]


@dataclass(frozen=True)
class OwnSpeedCase:
    name: str
    speed: tuple[tuple[str, float], ...]
    pool: str  # where the job lands
    runtime_s: float  # estimated runtime there


# H100 prior 3.17, MLU370-X8 prior 0.31 (builders.SPEEDS); reference runtime 1000 s.
OWN_SPEED_CASES = [
    OwnSpeedCase("no own factors: the priors decide", (), "h100-east", 1000 / 3.17),
    OwnSpeedCase(
        "own factor overrides the prior and flips the choice",
        (("H100", 0.2), ("MLU370-X8", 0.5)), "mlu-west", 1000 / 0.5,
    ),
    OwnSpeedCase(
        "a model without an own factor keeps its prior",
        (("MLU370-X8", 2.0),), "h100-east", 1000 / 3.17,
    ),
    OwnSpeedCase(
        "non-positive own factors are ignored",
        (("H100", 0.0), ("MLU370-X8", -1.0)), "h100-east", 1000 / 3.17,
    ),
]


@pytest.mark.parametrize("case", OWN_SPEED_CASES, ids=lambda c: c.name)
def test_job_own_speed(case: OwnSpeedCase) -> None:
    job = PendingJob(
        job_id="j", tenant="t", queue="t/default", priority=0, order=0, replicas=1,
        devices_per_replica=1, reference_runtime_s=1000, speed=case.speed,
    )
    decision = placement(run(H100 + MLU, (job,)), "j")
    assert decision.pool == case.pool
    assert decision.estimated_runtime_s == pytest.approx(case.runtime_s)
