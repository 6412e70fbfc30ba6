"""Completion-time estimates per candidate group.

Runtime on a group is the job's reference runtime divided by the model's
speed relative to the reference chip (Gavel-style prior; the job's own
factor wins). Start is ``now`` when the gang fits now; otherwise the moment
enough devices in the group free up, read off the running jobs' expected
ends (a device count, not a simulation of fragmentation: a simple, cheap
estimate).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate

from controlplane.scheduler.types import (
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
    return reference / job_speed(job, model, speeds)


def job_speed(job: PendingJob, model: str, speeds: dict[str, float]) -> float:
    """The divisor of the reference runtime on ``model`` (1.0 for CPU-only jobs)."""
    if job.devices_per_replica == 0:
        return 1.0
    for own_model, factor in job.speed:
        if own_model == model and factor > 0:
            return factor
    return speeds.get(model, 1.0)


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

    @property
    def total(self) -> int:
        """Devices the running jobs free in all."""
        return self.freed[-1] if self.freed else 0

    def freed_by(self, t: float) -> int:
        """Devices the running jobs will have freed by time ``t``."""
        i = bisect_right(self.ends, t)
        return self.freed[i - 1] if i else 0


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
