"""Group commit for submissions: concurrent SubmitJob calls share one store
transaction (one fsync) instead of queueing for the store one by one.

No background thread: the first caller to find no commit in progress becomes
the leader and commits everything queued so far (its own job included) with
``Store.create_jobs``; callers arriving meanwhile queue up and form the next
batch, committed by the next leader. Batches therefore grow with the load by
themselves, and a lone submission commits at once (no added latency).

Contract per caller: ``create(job)`` returns exactly what
``store.create_job(job, now)`` would have (idempotency on (tenant,
client_key) included, also for a key repeated inside one batch), or raises
that call's error. A batch the store refuses as a whole (e.g. a duplicate job
id) is retried job by job, so one bad job fails only its own caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controlplane.services.group_commit import MAX_BATCH, GroupCommit
from controlplane.store.base import Store
from xinhe.v1 import common_pb2

__all__ = ["MAX_BATCH", "SubmitBatcher"]


class SubmitBatcher:
    """Creates jobs in the store, batching concurrent callers (see module):
    a :class:`GroupCommit` of ``Store.create_jobs``."""

    def __init__(self, store: Store, clock: Callable[[], float],
                 max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.clock = clock
        self._group: GroupCommit[common_pb2.Job, tuple[common_pb2.Job, bool]] = GroupCommit(
            self._commit, max_batch=max_batch, what="submissions")

    @property
    def max_batch(self) -> int:
        return self._group.max_batch

    @property
    def batches(self) -> int:
        """Batches committed (observability, tests)."""
        return self._group.batches

    @property
    def largest_batch(self) -> int:
        return self._group.largest_batch

    @property
    def _queued(self) -> list:
        return self._group._queued

    def create(self, job: common_pb2.Job) -> tuple[common_pb2.Job, bool]:
        """``store.create_job(job, clock())``, committed with whatever other
        submissions are queued at the same time."""
        return self._group.submit(job)

    def _commit(self, jobs: Sequence[common_pb2.Job]) -> list[tuple[common_pb2.Job, bool]]:
        now = self.clock()
        if len(jobs) == 1:
            return [self.store.create_job(jobs[0], now)]
        return self.store.create_jobs(jobs, now)
