"""Per-round helpers that keep a queue of 100 000 jobs cheap to walk.

``ShapeRank``: the groups that could ever hold one job shape, fastest first
*for that shape* (the job's own speed factors included), computed once per
round. Every group fitting now starts at ``now``, so among them the fastest
finishes first whatever the job's runtime: a job walks the ranking and stops
at the first group that fits; only the faster, busy groups before it need an
estimate. A group that is both full for the shape and fully reserved can
never be chosen nor waited for again this round, so it is dropped.

``Holds``: backfill with reservations per group (EASY-style, a few deep). A
job that waits for a group holds it from its expected start ``start_s``; a
later job may use the group's devices only if it finishes by then or takes
no more than ``extra``, the devices the group will have beyond the reserved
jobs' needs at that time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controlplane.scheduler.core_estimate import job_speed
from controlplane.scheduler.core_fleet import CPU_FAMILY, Group, ShapeKey, StaticVerdict
from controlplane.scheduler.types import PendingJob

# What a job's ranking depends on: shape, host CPU and memory, own speed
# factors, then its objective and region (``Objectives.rank_extra``).
RankKey = tuple[ShapeKey, int, int, tuple[tuple[str, float], ...], tuple[object, ...]]


class ShapeRank:
    """``entries``: (speed, group), best first: by ``order`` (the job's
    objective, ``core_objective``) when given, then fastest; ties: plain CPU
    nodes first for CPU-only jobs, then the group key (determinism)."""

    __slots__ = ("entries",)

    def __init__(self, groups: Sequence[Group], job: PendingJob, speeds: dict[str, float],
                 order: Callable[[Group, float], tuple[float, float]] | None = None) -> None:
        cpu_only = job.devices_per_replica == 0
        rated = [(job_speed(job, g.model, speeds), g) for g in groups]
        keyed = sorted(
            ((order(g, s) if order else (), -s, cpu_only and g.family != CPU_FAMILY, g.key), s, g)
            for s, g in rated
        )
        self.entries: list[tuple[float, Group]] = [(s, g) for _, s, g in keyed]

    def drop(self, dead: Sequence[Group]) -> None:
        """Forget groups that can neither take nor reserve for this shape again."""
        gone = set(dead)
        self.entries = [e for e in self.entries if e[1] not in gone]


class JobKind:
    """What one round decided once for all jobs of one kind (same shape, host
    request, speed factors, objective and region fields): the objective,
    the static verdict (``vkey`` its cache key) and, unless the ranking
    depends on each job's runtime (``by_runtime``: a transfer penalty may
    apply), the shared ranking once a job of the kind got that far."""

    __slots__ = ("by_runtime", "objective", "rank", "verdict", "vkey")

    def __init__(self, objective: str, vkey: object, verdict: StaticVerdict,
                 by_runtime: bool) -> None:
        self.objective, self.vkey, self.verdict = objective, vkey, verdict
        self.by_runtime = by_runtime
        self.rank: ShapeRank | None = None


class Reservation:
    """One waiting job's hold on a group from ``start_s`` (see module doc)."""

    __slots__ = ("devices", "extra", "finish_s", "job_id", "start_s")

    def __init__(self, job_id: str, start_s: float, finish_s: float, devices: int,
                 extra: int) -> None:
        self.job_id, self.start_s, self.finish_s = job_id, start_s, finish_s
        self.devices, self.extra = devices, max(extra, 0)


class Holds:
    """The reservations stacked on one group, in queue order and so in start
    order (a later one never starts before an earlier one). Each later one
    counts the devices of those before it as still held, so its estimate is
    conservative."""

    __slots__ = ("devices", "last_finish_s", "queue")

    def __init__(self) -> None:
        self.queue: list[Reservation] = []
        self.devices = 0  # held by all of them together
        self.last_finish_s = 0.0  # when the last reserved job should be done

    def add(self, reservation: Reservation) -> None:
        self.queue.append(reservation)
        self.devices += reservation.devices
        self.last_finish_s = max(self.last_finish_s, reservation.finish_s)

    def admits(self, finish_s: float, devices: int) -> bool:
        """May a job of ``devices`` that would finish at ``finish_s`` start now
        without pushing back any reservation?"""
        for r in self.queue:  # in start order: stop at the first it ends before
            if finish_s <= r.start_s:
                return True
            if devices > r.extra:
                return False
        return True

    def charge(self, finish_s: float, devices: int) -> None:
        """Account for a job placed on the group: one outliving a reservation's
        start eats into that reservation's spare devices."""
        for r in self.queue:
            if finish_s <= r.start_s:
                break
            r.extra -= devices
