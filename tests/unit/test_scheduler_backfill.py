"""Backfill with reservations: the first job that cannot start holds its
group from its expected start; later jobs use the held devices only when they
finish first or leave enough for it; a job never waits for a group another
job holds, it takes a free slower chip instead."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import Decisions, Policy, RunningView
from controlplane.sim.engine import simulate
from controlplane.sim.fleet import Fleet, make_pool
from controlplane.sim.policies import XinheCorePolicy
from controlplane.sim.speeds import Physics
from controlplane.sim.trace import TraceJob, classify
from tests.unit.builders import jobs, nodes, placed_ids, placement, running, snapshot, wait

NOW = 1_000_000.0
T = NOW + 1000  # when the running jobs free their devices
DEFAULT = Policy()
NO_RESERVATIONS = Policy(max_reservations_per_round=0)


def gang_behind(free_nodes: int, small_devices: int, small_runtime: float,
                busy: tuple[RunningView, ...], policy: Policy = DEFAULT) -> list[str]:
    """A 3x8 gang (the whole pool) first in the queue, one small job behind
    it; returns the placed ids."""
    fleet = nodes(3 - free_nodes, name="busy", free=()) + nodes(free_nodes, name="free")
    queue = jobs("gang", replicas=3, devices=8, runtime_s=3600) + jobs(
        "small", devices=small_devices, runtime_s=small_runtime, first_order=1)
    return placed_ids(schedule(snapshot(fleet, running=busy), queue, policy, NOW))


def busy_until(end: float, n: int = 2) -> tuple[RunningView, ...]:
    return tuple(running(f"r{i}", pool="p", model="910B", devices=8, end=end) for i in range(n))


@dataclass(frozen=True)
class BackfillCase:
    name: str
    free_nodes: int  # of 3 nodes x 8 devices; the others are busy until T
    small_devices: int
    small_runtime: float
    placed: tuple[str, ...]
    policy: Policy = DEFAULT


BACKFILL_CASES = [
    BackfillCase("a short job runs in the hole before the gang's start", 1, 1, 900, ("small-0",)),
    BackfillCase("a job that would outlive the hole waits", 1, 1, 1100, ()),
    BackfillCase("ending exactly at the reservation start is allowed", 1, 8, 1000, ("small-0",)),
    BackfillCase(
        "without reservations a long job takes the hole (the old behaviour)",
        1, 1, 1100, ("small-0",), NO_RESERVATIONS,
    ),
]


@pytest.mark.parametrize("case", BACKFILL_CASES, ids=lambda c: c.name)
def test_backfill_respects_the_reservation(case: BackfillCase) -> None:
    busy = busy_until(T, 3 - case.free_nodes)
    placed = gang_behind(case.free_nodes, case.small_devices, case.small_runtime, busy,
                         case.policy)
    assert tuple(placed) == case.placed


def test_spare_devices_at_the_reservation_may_be_used_by_long_jobs() -> None:
    # 4 nodes, 2 busy until T, 2 free (16 devices). A 3x8 gang needs 24 of
    # the 32 free at T: 8 spare, so two 4-device long jobs may run, not three
    # (though 8 devices would still be free now).
    fleet = nodes(2, name="busy", free=()) + nodes(2, name="free")
    busy = busy_until(T, 2)
    queue = jobs("gang", replicas=3, devices=8, runtime_s=3600) + jobs(
        "long", devices=4, runtime_s=99_999, n=3, first_order=1)
    decisions = schedule(snapshot(fleet, running=busy), queue, Policy(), NOW)
    assert placed_ids(decisions) == ["long-0", "long-1"]
    assert "reserved pool p (910B): expected start in 0:16:40" in wait(decisions, "gang-0").reason
    assert wait(decisions, "long-2").reason.startswith("waiting for capacity")


def fast_pool_busy_for_600s(policy: Policy, n: int = 2) -> Decisions:
    h100 = nodes(1, model="H100", family="nvidia", pool="h100", free=(), name="h")
    mlu = nodes(2, model="MLU370-X8", family="cambricon", pool="mlu", memory_gb=48, name="m")
    busy = (running("r", pool="h100", model="H100", devices=8, end=NOW + 600),)
    return schedule(snapshot(h100, mlu, running=busy),
                    jobs("a", devices=8, runtime_s=3600, n=n), policy, NOW)


def test_waiting_for_a_faster_pool_reserves_it_and_the_next_job_takes_the_slow_chip() -> None:
    decisions = fast_pool_busy_for_600s(Policy(max_reservations_per_round=1))
    assert wait(decisions, "a-0").reason.startswith("waiting for faster pool h100 (H100)")
    assert "devices reserved for it there" in wait(decisions, "a-0").reason
    assert placement(decisions, "a-1").pool == "mlu"  # not a second wait for the held H100


def test_stacked_reservations_push_later_estimates_back_until_the_slow_chip_wins() -> None:
    # a-1 counts a-0's 8 devices as held: the H100 frees 8 at +600 s, the
    # next 8 only after an assumed default runtime (+3600 s); a-2 after a-1
    # is done, and so on. Each waits while it still beats 3:14 on the MLU
    # (10x slower) by the margin; a-4 no longer does and starts on the MLU.
    decisions = fast_pool_busy_for_600s(Policy(), n=5)
    assert "(starts in 1:10:00)" in wait(decisions, "a-1").reason
    assert "(starts in 1:28:56)" in wait(decisions, "a-2").reason
    assert placed_ids(decisions) == ["a-4"]
    assert placement(decisions, "a-4").pool == "mlu"


def test_without_reservations_both_jobs_wait_for_the_fast_pool() -> None:
    assert fast_pool_busy_for_600s(NO_RESERVATIONS).placements == ()  # the old behaviour


# -- the gang is never delayed by backfill: whole runs on the simulator -------

ONE_POOL = Fleet((make_pool("a100", "east", "A100", 2, 4),))


def trace_job(job_id: str, t: float, devices: int, runtime: float,
              replicas: int = 1) -> TraceJob:
    families, models, first = classify((), default_catalogue())
    return TraceJob(job_id, t, "t", 0, replicas, devices, 0, families, models, runtime, (),
                    first, ())


def gang_start(smalls: list[tuple[float, int, float]], policy: Policy = DEFAULT) -> float:
    """Start of a 2x4 gang (the whole pool) queued behind a 4-device job, with ``smalls``
    (arrival after the gang, devices, runtime) arriving behind it."""
    jobs_ = [trace_job("head", 0, 4, 100), trace_job("gang", 1, 4, 100, replicas=2)]
    jobs_ += [trace_job(f"s{i}", 2 + t, d, r) for i, (t, d, r) in enumerate(smalls)]
    result = simulate(jobs_, Physics.of(ONE_POOL), XinheCorePolicy(policy))
    assert not result.unfinished
    return next(r.first_start for r in result.records if r.job.job_id == "gang")


def test_backfill_fills_the_hole_without_delaying_the_gang() -> None:
    smalls = [(0, 1, 50), (1, 2, 500), (2, 4, 90)]
    assert gang_start(smalls) == gang_start([]) == 100
    assert gang_start(smalls, NO_RESERVATIONS) > 100  # what reservations prevent


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 150), st.integers(1, 4), st.floats(1, 400)),
                max_size=8))
def test_no_backfilled_job_ever_delays_the_gang(smalls: list[tuple[float, int, float]]) -> None:
    assert gang_start(smalls) == gang_start([])
