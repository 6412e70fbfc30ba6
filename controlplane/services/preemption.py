"""Acting on the scheduler's preemptions: evict, checkpoint, stop, requeue.

The core (``scheduler/core_preempt.py``) only names victims. For each one
this module

1. moves the job SCHEDULED/STARTING/RUNNING -> PREEMPTED (event
   "preempted", naming the job it makes room for) and records
   ``last_preempted_at``, so the core's cooldown keeps it from thrashing;
2. then, outside the lock, asks its replicas to checkpoint and stop when the
   job has a ``checkpoint_dir`` (the migration protocol,
   ``MigrationService.request_checkpoints``), else simply to stop;
3. when every replica has ended, the reconciler moves it PREEMPTED -> QUEUED
   with a new attempt (``reconcile.requeued_after_preemption``): not a
   failure, no retry spent.

The victim's devices stay held until its replicas report stopped (as for a
cancel), so the job it made room for is placed only once they are free.
Requests still unanswered are sent again every ``RESEND_INTERVAL_S`` (a
message lost to a disconnect); agents ignore repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from controlplane.model import states
from controlplane.scheduler.types import PreemptionDecision
from controlplane.services.context import Context
from controlplane.services.migration import RESEND_INTERVAL_S, MigrationService
from controlplane.services.reconcile import FINAL, Reconciler, next_transition
from controlplane.store.base import ConflictError, ReplicaRecord, Transition
from controlplane.store.transitions import timestamp
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)

J = common_pb2


class PreemptionService:
    """Evicts the jobs the scheduler chose and drives them back to the queue."""

    def __init__(self, ctx: Context, reconciler: Reconciler,
                 migrations: MigrationService) -> None:
        self.ctx = ctx
        self.reconciler = reconciler
        self.migrations = migrations
        self._last_sent: dict[tuple[str, int], float] = {}

    def apply(self, preemptions: Sequence[PreemptionDecision], now: float) -> list[J.Job]:
        """Preempt each victim still active; returns the jobs now PREEMPTED
        (or already requeued, when none of their replicas was live). A
        victim that changed meanwhile (finished, cancelled) is skipped."""
        evicted: list[tuple[J.Job, list[ReplicaRecord], str]] = []
        with self.ctx.lock:
            for decision in preemptions:
                job = self._evict(decision, now)
                if job is not None:
                    rows = self.ctx.store.replicas(job.id, job.attempt)
                    evicted.append((job, rows, _message(decision)))
        for job, rows, message in evicted:
            self._signal(job, rows, now, message)
        if evicted:
            self.ctx.notifier.notify()
        return [job for job, _, _ in evicted]

    def resend_pending(self, now: float) -> int:
        """Send the stop (or checkpoint) requests again for PREEMPTED jobs
        whose replicas still run. Called from the controller's loop."""
        due = []
        with self.ctx.lock:
            jobs = self.ctx.store.jobs_in_states([states.PREEMPTED])
            for job in jobs:
                sent = self._last_sent.get((job.id, job.attempt))
                if sent is None or now - sent >= RESEND_INTERVAL_S:  # None: after a restart
                    due.append((job, self.ctx.store.replicas(job.id, job.attempt)))
            live = {(j.id, j.attempt) for j in jobs}
            for key in [k for k in self._last_sent if k not in live]:
                del self._last_sent[key]
        for job, rows in due:
            self._signal(job, rows, now, "preempted (request repeated)")
        return len(due)

    def _evict(self, decision: PreemptionDecision, now: float) -> J.Job | None:
        """The PREEMPTED transition (under the lock); None when the victim is
        no longer active. Requeues at once when no replica is left live."""
        store = self.ctx.store
        job = store.get_job(decision.job_id)
        if job is None or job.state not in states.ACTIVE:
            return None
        message = _message(decision)
        # No state_reason: once requeued, the job shows the scheduler's live
        # wait reason ("quota: ..."); the event keeps why it was evicted.
        updates = J.Job()
        updates.last_preempted_at.CopyFrom(timestamp(now))
        try:
            job = store.apply([Transition(
                job_id=job.id, to_state=states.PREEMPTED, kind="preempted", message=message,
                expect_states=states.ACTIVE, expect_epoch=job.epoch, updates=updates)],
                now)[-1]
        except ConflictError:
            log.info("job %s changed before it could be preempted; skipped", job.id)
            return None
        log.info("job %s: %s", job.id, message)
        chain = next_transition(job, store.replicas(job.id, job.attempt))
        if chain:  # every replica had already ended: nothing to stop
            job = store.apply(chain, now)[-1]
            self.ctx.wake.set()
        return job

    def _signal(self, job: J.Job, rows: list[ReplicaRecord], now: float,
                reason: str) -> None:
        """Checkpoint-then-stop (with a checkpoint_dir) or stop the live
        replicas of the job's attempt."""
        if job.state != states.PREEMPTED or all(r.state in FINAL for r in rows):
            return
        self._last_sent[(job.id, job.attempt)] = now
        if job.spec.checkpoint_dir:
            self.migrations.request_checkpoints(rows, reason)
        else:
            self.reconciler.stop_replicas(job, reason)


def _message(decision: PreemptionDecision) -> str:
    return f"preempted for job {decision.for_job}: {decision.reason}"
