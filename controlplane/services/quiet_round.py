"""Rounds that can change nothing but words: explain only what is new.

When no node is schedulable (every node cordoned, draining or disconnected)
a round can neither place nor preempt anything: every queued job waits,
whatever the order of the queue. Explaining the waits of a long queue every
round is then pure cost (it competes with submissions for the GIL), so such
a round explains only the jobs that have no reason yet, and the others keep
the reason they were given, as long as the situation it was computed in
(the nodes, the running jobs and the policy) is the same. Any change to it,
or any schedulable node, brings back full rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Policy


def can_place_nothing(snap: ClusterSnapshot) -> bool:
    """No placement (and so no preemption, which only makes room for one)
    is possible on a fleet without a schedulable node."""
    return not any(view.schedulable for view in snap.nodes)


def situation(snap: ClusterSnapshot, policy: Policy) -> tuple:
    """What a wait reason depends on besides the queue: nodes, running jobs
    (not their ageing checkpoints) and the policy."""
    running = tuple(replace(r, seconds_since_checkpoint=0.0) for r in snap.running)
    return (snap.nodes, running, snap.model_speed, snap.model_power_w, policy)


class QueueSource(Protocol):
    """The queue as a round reads it: all of it, or what joined since a stamp
    (``PendingQueue``; ``ListSource`` for a plain list)."""

    def __len__(self) -> int: ...

    def pending_marked(self) -> tuple[list[PendingJob], int]: ...

    def since(self, mark: int) -> tuple[list[PendingJob], int]: ...


@dataclass(frozen=True)
class ListSource:
    """A queue without stamps: ``since`` is the whole list."""

    jobs: Sequence[PendingJob]

    def __len__(self) -> int:
        return len(self.jobs)

    def pending_marked(self) -> tuple[list[PendingJob], int]:
        return list(self.jobs), 0

    def since(self, mark: int) -> tuple[list[PendingJob], int]:
        return list(self.jobs), 0


@dataclass
class WaitMemo:
    """The situation the kept wait reasons were computed in (None = none),
    and the queue stamp they are current to."""

    explained_in: tuple | None = None
    mark: int = 0

    def forget(self) -> None:
        """The next round explains every job (e.g. the last one failed)."""
        self.explained_in = None

    def to_explain(self, snap: ClusterSnapshot, policy: Policy,
                   pending: Sequence[PendingJob] | QueueSource,
                   reasons: Mapping[str, str]) -> Sequence[PendingJob]:
        """The jobs this round must hand to the core: all of them, unless
        nothing can be placed and the situation is unchanged, then only
        those without a reason yet among the jobs queued since the last
        round (so a quiet round costs what is new, not the queue's length)."""
        source = ListSource(pending) if isinstance(pending, Sequence) else pending
        if not can_place_nothing(snap):
            self.explained_in = None
            return source.pending_marked()[0]
        now_in = situation(snap, policy)
        if now_in != self.explained_in:
            self.explained_in = now_in
            jobs, self.mark = source.pending_marked()
            return jobs
        fresh, self.mark = source.since(self.mark)
        return [job for job in fresh if job.job_id not in reasons]
