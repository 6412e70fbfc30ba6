"""Migration on request: checkpoint a running job, stop it, re-place it on
another family, model or pool, and resume it from its checkpoint.

The control plane's half of the protocol (the agent's half is
``agents/checkpoint.py``):

1. ``migrate`` validates the request, moves the job RUNNING -> MIGRATING
   (event "migrating") and records the target as the job's
   ``placement_target`` pin, in one transaction;
2. then, outside the lock, sends each live replica's agent a
   ``CheckpointReplica``: the agent asks the job to checkpoint (request file
   + SIGUSR1), waits for ``.xinhe-checkpoint-done`` or the timeout, stops it;
3. when every replica has ended, the reconciler moves the job MIGRATING ->
   QUEUED with a new attempt (``reconcile.next_transition``); the scheduler
   places it only within the pin, and the relaunched job finds its
   checkpoint through ``resume_path()`` (the checkpoint dir is shared storage).

A checkpoint that does not complete in time does not strand the job: it is
stopped anyway and resumes from its last *complete* checkpoint, and the
event says so. Nothing before that checkpoint is ever lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.duration_pb2 import Duration

from controlplane.api.errors import FailedPrecondition, InvalidArgument
from controlplane.model import states
from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import ClusterSnapshot, Policy
from controlplane.services.allocations import Allocations
from controlplane.services.context import Context
from controlplane.services.jobs import JobService
from controlplane.services.migration_target import (
    Filters,
    Target,
    TargetError,
    narrow,
    resolve,
)
from controlplane.services.reconcile import FINAL
from controlplane.services.scheduling import model_speeds
from controlplane.services.translate import node_views, pending_job
from controlplane.store.base import ReplicaRecord, Transition
from xinhe.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

J = common_pb2
R = agent_pb2
# How long a job gets to finish the checkpoint it was asked for, by default
# and at most (a request may choose within that bound).
DEFAULT_CHECKPOINT_TIMEOUT_S = 120.0
MAX_CHECKPOINT_TIMEOUT_S = 3600.0
# A CheckpointReplica is sent again this often while replicas are still live
# (a lost message or an agent that reconnected); the agent ignores repeats.
RESEND_INTERVAL_S = 5.0


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class MigrationService:
    """Accepts migrations and drives their replicas to checkpoint and stop."""

    def __init__(self, ctx: Context, jobs: JobService,
                 checkpoint_timeout_s: float = DEFAULT_CHECKPOINT_TIMEOUT_S) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.checkpoint_timeout_s = checkpoint_timeout_s
        self._last_sent: dict[tuple[str, int], float] = {}
        self._timeouts: dict[tuple[str, int], float] = {}
        # Observer of each committed start, with its trigger ("request" |
        # "policy"): the metrics exporter; None = nobody.
        self.on_migrated: Callable[[common_pb2.Job, str], None] | None = None

    def migrate(self, job_id: str, target: str, reason: str, scope: str | None = None,
                checkpoint_timeout_s: float = 0.0) -> common_pb2.Job:
        """Start moving a RUNNING job to ``target``; returns it MIGRATING.

        InvalidArgument("target") for a name that is no family, model or pool
        (or "checkpoint_timeout" out of range); FailedPrecondition when the
        job is not RUNNING, has no checkpoint_dir, or the target is outside
        its spec or could never hold it.
        """
        if not 0 <= checkpoint_timeout_s <= MAX_CHECKPOINT_TIMEOUT_S:
            raise InvalidArgument("checkpoint_timeout",
                                  f"between 0 (default) and {MAX_CHECKPOINT_TIMEOUT_S:g}s")
        with self.ctx.lock:
            self.jobs.get(job_id, scope)  # NotFound (or not the tenant's) before the target
            resolved = self._resolve(target)
        return self.migrate_to(job_id, resolved, reason, scope, checkpoint_timeout_s)

    def migrate_to(self, job_id: str, resolved: Target, reason: str, scope: str | None = None,
                   checkpoint_timeout_s: float = 0.0,
                   trigger: str = "request") -> common_pb2.Job:
        """:meth:`migrate` to an already resolved target (the migration policy's
        proposals name a model, with ``trigger="policy"``); the same checks,
        the same protocol."""
        ctx = self.ctx
        with ctx.lock:
            job = self.jobs.get(job_id, scope)
            self._check_migratable(job, resolved)
            message = f"migrating to {resolved.kind} {resolved.name}"
            if reason:
                message += f": {reason}"
            updated = ctx.store.apply([Transition(
                job_id=job.id, to_state=J.JOB_STATE_MIGRATING, kind="migrating",
                message=message, expect_states=frozenset({J.JOB_STATE_RUNNING}),
                expect_epoch=job.epoch,
                updates=J.Job(placement_target=resolved.pin, state_reason=message))],
                ctx.clock())[-1]
            rows = ctx.store.replicas(job.id, job.attempt)
            self._timeouts[(job.id, job.attempt)] = (checkpoint_timeout_s
                                                     or self.checkpoint_timeout_s)
        log.info("job %s: %s", job.id, message)
        if self.on_migrated is not None:
            self.on_migrated(updated, trigger)
        self._send_checkpoints(rows, message)
        ctx.notifier.notify()
        return updated

    def resend_pending(self, now: float) -> int:
        """Re-send checkpoint requests of migrations whose replicas still run
        (a message lost to a disconnect). Called from the controller's loop."""
        with self.ctx.lock:
            migrating = self.ctx.store.jobs_in_states([J.JOB_STATE_MIGRATING])
            due = []
            for job in migrating:
                sent = self._last_sent.get((job.id, job.attempt))
                if sent is None or now - sent >= RESEND_INTERVAL_S:  # None: after a restart
                    due.append((job, self.ctx.store.replicas(job.id, job.attempt)))
            live = {(j.id, j.attempt) for j in migrating}
            for key in [k for k in self._last_sent if k not in live]:
                del self._last_sent[key]
                self._timeouts.pop(key, None)
        for job, rows in due:
            self._send_checkpoints(rows, job.state_reason)
        return len(due)

    # -- validation ---------------------------------------------------------
    def _resolve(self, target: str) -> Target:
        pools = {node.pool for node in self.ctx.fleet.nodes()}
        try:
            return resolve(target, self.ctx.catalogue, pools)
        except TargetError as err:
            raise InvalidArgument("target", str(err)) from err

    def _check_migratable(self, job: common_pb2.Job, target: Target) -> None:
        if job.state != J.JOB_STATE_RUNNING:
            raise FailedPrecondition(
                f"job {job.id} is {states.state_name(job.state)}: only a RUNNING job can be "
                f"migrated")
        if not job.spec.checkpoint_dir:
            raise FailedPrecondition("job has no checkpoint_dir: it cannot be migrated")
        unpinned = J.Job()
        unpinned.CopyFrom(job)
        unpinned.placement_target = ""  # the spec, not an earlier pin, bounds a new target
        spec_view = pending_job(unpinned, 0, self.ctx.catalogue)
        base = Filters(spec_view.families, spec_view.models)
        try:
            narrow(base, target, self.ctx.catalogue)
        except TargetError as err:
            raise FailedPrecondition(f"cannot migrate to {target.name}: {err}") from err
        self._check_can_ever_hold(job, target)

    def _check_can_ever_hold(self, job: common_pb2.Job, target: Target) -> None:
        """FailedPrecondition when no node of the target could hold the job
        even with the whole fleet up and idle."""
        nodes = self.ctx.fleet.nodes()
        for node in nodes:
            node.status = J.NODE_STATUS_READY
            for dev in node.devices:
                dev.healthy = True
        pinned = J.Job()
        pinned.CopyFrom(job)
        pinned.placement_target = target.pin
        views = node_views(nodes, Allocations(), self.ctx.catalogue)
        snap = ClusterSnapshot(nodes=tuple(views), model_speed=model_speeds(self.ctx))
        decision = schedule(snap, [pending_job(pinned, 0, self.ctx.catalogue)], Policy(), 0.0)
        for wait in decision.waiting:
            if wait.never_fits:
                raise FailedPrecondition(
                    f"{target.kind} {target.name} can never hold job {job.id}: {wait.reason}")

    # -- agent messages -----------------------------------------------------
    def request_checkpoints(self, rows: list[ReplicaRecord], reason: str) -> None:
        """Ask every live replica in ``rows`` to checkpoint, then stop: the
        migration protocol, reused by preemption (``services/preemption``)."""
        self._send_checkpoints(rows, reason)

    def _send_checkpoints(self, rows: list[ReplicaRecord], reason: str) -> None:
        grace = _duration(self.ctx.settings.stop_grace_s)
        for row in rows:
            if row.state in FINAL:
                continue
            timeout = _duration(self._timeouts.get((row.job_id, row.attempt),
                                                   self.checkpoint_timeout_s))
            self._last_sent[(row.job_id, row.attempt)] = self.ctx.clock()
            ref = R.ReplicaRef(job_id=row.job_id, attempt=row.attempt, rank=row.rank,
                               epoch=row.epoch)
            request = R.CheckpointReplica(ref=ref, timeout=timeout, grace=grace, reason=reason)
            if not self.ctx.fleet.send(row.node, R.ControlMessage(checkpoint=request)):
                log.warning("job %s rank %d: agent %s not connected; checkpoint request "
                            "will be sent again", row.job_id, row.rank, row.node)
