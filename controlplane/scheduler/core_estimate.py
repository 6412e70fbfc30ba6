"""Completion-time estimates per candidate group, and the choice between them.

Runtime on a group is the job's reference runtime scaled by the model's
speed relative to the reference chip (Gavel-style prior). Start is ``now``
when the gang fits now; otherwise the moment enough devices in the group
free up, read off the running jobs' expected ends (a device count, not a
simulation of fragmentation: a simple, cheap estimate). The earliest finish
wins, except that a job only waits for a busy pool when that pool finishes
it clearly sooner than a pool free now (``Policy.wait_for_faster_margin``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import NamedTuple

from controlplane.scheduler.core_fleet import CPU_FAMILY, Group
from controlplane.scheduler.types import (
    Candidate,
    ClusterSnapshot,
    PendingJob,
    Policy,
    RunningView,
)


def speed_table(snapshot: ClusterSnapshot) -> dict[str, float]:
    """Model -> relative speed; non-positive figures are ignored (1.0 used)."""
    return {model: speed for model, speed in snapshot.model_speed if speed > 0}


def runtime_s(job: PendingJob, model: str, speeds: dict[str, float], policy: Policy) -> float:
    """Expected runtime on ``model``; CPU-only jobs do not scale with the chip.

    The job's own factor for ``model`` (``PendingJob.speed``) wins over the
    model's prior: jobs gain unequally from a faster chip.
    """
    reference = job.reference_runtime_s or policy.default_runtime_s
    if job.devices_per_replica == 0:
        return reference
    for own_model, factor in job.speed:
        if own_model == model and factor > 0:
            return reference / factor
    return reference / speeds.get(model, 1.0)


class ReleaseSchedule:
    """When devices of one (pool, model) free up, from the running jobs."""

    __slots__ = ("ends", "freed")

    def __init__(self, ends: Sequence[tuple[float, int]]) -> None:
        ordered = sorted(ends)
        self.ends = [end for end, _ in ordered]
        self.freed = list(accumulate(devices for _, devices in ordered))

    def start_s(self, deficit: int, now: float, fallback_s: float) -> float:
        """First time ``deficit`` more devices are free; when the running jobs
        never free enough, assume ``fallback_s`` after the last of them."""
        i = bisect_left(self.freed, max(deficit, 1))
        if i < len(self.ends):
            return max(now, self.ends[i])
        last = self.ends[-1] if self.ends else now
        return max(now, last) + fallback_s


NO_RELEASES = ReleaseSchedule(())


def release_schedules(
    running: Sequence[RunningView], now: float, policy: Policy
) -> dict[tuple[str, str], ReleaseSchedule]:
    """Per (pool, model): an unknown end counts as ``now + default_runtime_s``;
    an overdue one as ``now`` (it should end any moment)."""
    ends: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for run in running:
        end = now + policy.default_runtime_s if run.expected_end is None else run.expected_end
        ends.setdefault((run.pool, run.model), []).append((max(end, now), run.devices))
    return {key: ReleaseSchedule(value) for key, value in ends.items()}


class Option(NamedTuple):
    """A candidate group with its estimate for one job."""

    group: Group
    candidate: Candidate


RankKey = tuple[float, bool, bool, tuple[str, str, str, int]]


def rank_key(option: Option, job: PendingJob) -> RankKey:
    """Earliest finish; on ties, free now, then (CPU-only jobs) plain CPU
    nodes before accelerator nodes, then the group key for determinism."""
    group, cand = option
    off_cpu = job.devices_per_replica == 0 and group.family != CPU_FAMILY
    return (cand.finish_s, not cand.fits_now, off_cpu, group.key)


@dataclass(frozen=True)
class Choice:
    """Where to place now (``place``), or the busy faster pool to wait for
    (``wait_for``); both None when nothing fits now at all."""

    ranked: tuple[Option, ...]
    place: Option | None = None
    wait_for: Option | None = None
    free_now: Option | None = None


def choose(options: Sequence[Option], job: PendingJob, now: float, margin: float) -> Choice:
    """Pick by earliest finish, waiting for a busy pool only when the best
    pool free now would finish more than ``margin`` times later (measured
    from now)."""
    ranked = tuple(sorted(options, key=lambda o: rank_key(o, job)))
    best = ranked[0]
    if best.candidate.fits_now:
        return Choice(ranked, place=best)
    free_now = next((o for o in ranked if o.candidate.fits_now), None)
    if free_now is None:
        return Choice(ranked)
    if free_now.candidate.finish_s - now > margin * (best.candidate.finish_s - now):
        return Choice(ranked, wait_for=best, free_now=free_now)
    return Choice(ranked, place=free_now)


def clock(seconds: float) -> str:
    """A duration as H:MM:SS (hours may exceed 24)."""
    total = max(round(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def describe(option: Option, now: float) -> str:
    """``pool (model) H:MM:SS`` with a note when it does not fit now."""
    cand = option.candidate
    busy = "" if cand.fits_now else f" (busy, starts in {clock(cand.start_s - now)})"
    return f"{cand.pool} ({cand.model}) {clock(cand.finish_s - now)}{busy}"


# How many runner-up candidates an explanation names; the rest are counted.
EXPLAIN_OTHERS = 3


def explain_placement(chosen: Option, ranked: Sequence[Option], now: float) -> str:
    """"chose pool p (M): est. finish 0:10:05; others: q (N) 0:31:40, ..."."""
    cand = chosen.candidate
    head = f"chose pool {cand.pool} ({cand.model}): est. finish {clock(cand.finish_s - now)}"
    others = [o for o in ranked if o is not chosen]
    if not others:
        return f"{head}; no other candidates"
    named = ", ".join(describe(o, now) for o in others[:EXPLAIN_OTHERS])
    more = len(others) - EXPLAIN_OTHERS
    return f"{head}; others: {named}" + (f" (+{more} more)" if more > 0 else "")


def explain_wait_for_faster(choice: Choice, now: float) -> str:
    """Why a job stays queued although some pool could take it now."""
    assert choice.wait_for is not None and choice.free_now is not None
    fast, slow = choice.wait_for.candidate, choice.free_now.candidate
    return (
        f"waiting for faster pool {fast.pool} ({fast.model}): est. finish "
        f"{clock(fast.finish_s - now)} there (starts in {clock(fast.start_s - now)}) "
        f"vs {clock(slow.finish_s - now)} if started now on pool {slow.pool} ({slow.model})"
    )
