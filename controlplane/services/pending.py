"""The pending queue kept in memory, so a scheduling round neither re-reads
nor re-translates every QUEUED job from the store.

The store stays the source of truth. :class:`PendingTrackingStore` wraps it
and feeds every committed change into :class:`PendingQueue` *after* the
commit (a created job, each job an ``apply`` returned), whichever service
made it, so no call site can forget to. ``resync`` rebuilds the queue from
the store; the controller calls it at start, after a ConflictError in a
round (a sign the queue was stale) and now and then as a safety net.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from controlplane.model import states
from controlplane.model.catalogue import Catalogue
from controlplane.scheduler.types import PendingJob
from controlplane.services.throughput import ThroughputTable, job_type
from controlplane.services.translate import pending_job
from controlplane.store.base import (
    ReplicaReport,
    ReportDecision,
    ReportOutcome,
    Store,
    Transition,
)
from xinhe.v1 import common_pb2


class PendingQueue:
    """QUEUED jobs with their translated :class:`PendingJob`, and the
    submission rank (``order``) of every non-terminal job, so a job that
    returns to the queue (requeue, migration) keeps its place."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._lock = threading.Lock()
        self._queued: dict[str, PendingJob] = {}
        self._order: dict[str, int] = {}
        self._next = 0
        # Queued job id -> the stamp of its last (re)queueing, oldest first:
        # what was queued after a stamp is found from the end (``since``).
        self._stamps: dict[str, int] = {}
        self._stamp = 0
        # Learned speeds; a queued job carries its type's factors.
        self.throughput: ThroughputTable | None = None
        self._types: dict[str, str] = {}  # queued job id -> job type
        # While a resync reads the store: what was observed meanwhile, to be
        # applied again on top of the rebuilt queue (None = no resync).
        self._replay: list[common_pb2.Job] | None = None
        self._refreshed: set[str] = set()
        self._resync_lock = threading.Lock()

    def refresh_speed(self, kind: str) -> None:
        """The learned factors of ``kind`` changed: re-stamp its queued jobs
        (a field swap, no re-translation)."""
        if self.throughput is None:
            return
        speed = self.throughput.speed(kind)
        with self._lock:
            if self._replay is not None:
                self._refreshed.add(kind)
            for job_id, job_kind in self._types.items():
                if job_kind == kind and job_id in self._queued:
                    self._queued[job_id] = dataclasses.replace(self._queued[job_id],
                                                               speed=speed)

    def resync(self, store: Store) -> None:
        """Rebuild from the store. The store is read and the queue rebuilt
        without holding the queue's lock (a long queue takes seconds, and
        every submission observes into the queue); whatever is observed
        meanwhile is recorded and applied again on top of the rebuilt queue,
        so a change committed during the read is never overwritten by it."""
        with self._resync_lock:  # one rebuild at a time: one replay log
            with self._lock:
                self._replay, self._refreshed = [], set()
            try:
                fresh = self._rebuilt(store)
            except BaseException:
                with self._lock:
                    self._replay = None
                raise
            with self._lock:
                replay, refreshed, self._replay = self._replay, self._refreshed, None
                self._queued, self._order = fresh._queued, fresh._order
                self._next, self._types = fresh._next, fresh._types
                # Every rebuilt job counts as newly queued (stamps only grow).
                base = self._stamp
                self._stamps = {job_id: base + s for job_id, s in fresh._stamps.items()}
                self._stamp = base + fresh._stamp
                for job in replay:
                    self._observe(job)
        for kind in refreshed:  # learned speeds that changed during the read
            self.refresh_speed(kind)

    def _rebuilt(self, store: Store) -> PendingQueue:
        fresh = PendingQueue(self.catalogue)
        fresh.throughput = self.throughput
        live = store.jobs_in_states(states.NON_TERMINAL)
        fresh._order = {job.id: i for i, job in enumerate(live)}
        fresh._next = len(live)
        for job in live:
            fresh._observe(job)
        return fresh

    def observe(self, jobs: Iterable[common_pb2.Job]) -> None:
        """Record committed jobs: QUEUED ones are (re)translated and queued,
        others leave the queue; terminal ones are forgotten."""
        with self._lock:
            for job in jobs:
                self._observe(job)
                if self._replay is not None:
                    self._replay.append(job)

    def _observe(self, job: common_pb2.Job) -> None:
        if states.is_terminal(job.state):
            self._queued.pop(job.id, None)
            self._order.pop(job.id, None)
            self._types.pop(job.id, None)
            self._stamps.pop(job.id, None)
            return
        order = self._order.get(job.id)
        if order is None:
            order = self._order[job.id] = self._next
            self._next += 1
        if job.state == states.QUEUED:
            kind = self._types[job.id] = job_type(job.spec)
            speed = self.throughput.speed(kind) if self.throughput is not None else ()
            self._queued[job.id] = pending_job(job, order, self.catalogue, speed)
            self._stamps.pop(job.id, None)  # re-inserted last: newest stamp
            self._stamp += 1
            self._stamps[job.id] = self._stamp
        else:
            self._queued.pop(job.id, None)
            self._types.pop(job.id, None)
            self._stamps.pop(job.id, None)

    def pending(self) -> list[PendingJob]:
        """The queued jobs, as the scheduler core takes them (its ``order``
        field ranks them by submission)."""
        with self._lock:
            return list(self._queued.values())

    def pending_marked(self) -> tuple[list[PendingJob], int]:
        """``pending()`` and the stamp it is current to (see ``since``)."""
        with self._lock:
            return list(self._queued.values()), self._stamp

    def since(self, mark: int) -> tuple[list[PendingJob], int]:
        """The jobs (re)queued after stamp ``mark``, oldest first, and the
        current stamp: costs what was queued since, not the queue's length."""
        with self._lock:
            fresh = []
            for job_id, stamp in reversed(self._stamps.items()):
                if stamp <= mark:
                    break
                fresh.append(self._queued[job_id])
            fresh.reverse()
            return fresh, self._stamp

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queued


class PendingTrackingStore(Store):
    """Forwards to ``inner``; reports committed job changes to ``queue``."""

    def __init__(self, inner: Store, queue: PendingQueue) -> None:
        self.inner = inner
        self.queue = queue

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def create_job(self, job: common_pb2.Job, now: float) -> tuple[common_pb2.Job, bool]:
        stored, created = self.inner.create_job(job, now)
        if created:
            self.queue.observe([stored])
        return stored, created

    def create_jobs(self, jobs: Sequence[common_pb2.Job],
                    now: float) -> list[tuple[common_pb2.Job, bool]]:
        results = self.inner.create_jobs(jobs, now)
        self.queue.observe(stored for stored, created in results if created)
        return results

    def apply(self, transitions: Sequence[Transition], now: float) -> list[common_pb2.Job]:
        jobs = self.inner.apply(transitions, now)
        self.queue.observe(jobs)
        return jobs

    def record_reports(self, reports: Sequence[ReplicaReport], decide: ReportDecision,
                       now: float) -> list[ReportOutcome]:
        outcomes = self.inner.record_reports(reports, decide, now)
        self.queue.observe(job for outcome in outcomes for job in outcome.changed)
        return outcomes


def _forwarder(name: str) -> Callable[..., Any]:
    def forward(self: PendingTrackingStore, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    forward.__name__ = name
    forward.__doc__ = getattr(Store, name).__doc__
    return forward


for _name in sorted(Store.__abstractmethods__):
    if _name not in vars(PendingTrackingStore):
        setattr(PendingTrackingStore, _name, _forwarder(_name))
PendingTrackingStore.__abstractmethods__ = frozenset()
