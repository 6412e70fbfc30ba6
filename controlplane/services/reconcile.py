"""React to what agents report: replica states become job states.

Fencing: a report counts only when it matches the job's current attempt and
epoch. Anything else (an agent back from a partition, a replica of a job that
was requeued or cancelled) is answered with a stop, so no job runs twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from google.protobuf.duration_pb2 import Duration

from controlplane.model import states
from controlplane.services.context import Context
from controlplane.store.base import ReplicaRecord, ReplicaReport, ReportOutcome, Transition
from xinhe.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

J = common_pb2
R = agent_pb2
LIVE = frozenset({R.REPLICA_STATE_STARTING, R.REPLICA_STATE_RUNNING})
FINAL = frozenset({R.REPLICA_STATE_SUCCEEDED, R.REPLICA_STATE_FAILED, R.REPLICA_STATE_STOPPED})


@dataclass(frozen=True)
class Verdict:
    """What a replica report led to: stop it (stale), and/or a job change."""

    stop: bool = False
    job: common_pb2.Job | None = None


def next_transition(job: common_pb2.Job, rows: Sequence[ReplicaRecord]) -> list[Transition]:
    """The job-state change the replica rows of its current attempt call for.

    Pure: no store access. Returns [] when nothing changes, or a chain of
    transitions (a short job may go SCHEDULED -> STARTING -> SUCCEEDED at once).
    """
    if states.is_terminal(job.state) or not rows:
        return []
    if job.state == J.JOB_STATE_MIGRATING:
        return _migration_step(job, rows)
    if job.state == J.JOB_STATE_PREEMPTED:
        return _preemption_step(job, rows)
    replica_states = [r.state for r in rows]
    failed = [r for r in rows if r.state in (R.REPLICA_STATE_FAILED, R.REPLICA_STATE_STOPPED)]
    if failed:
        return [_failure(job, failed[0])]
    chain: list[Transition] = []
    current = job.state
    if current == J.JOB_STATE_SCHEDULED and any(s != R.REPLICA_STATE_UNSPECIFIED
                                                 for s in replica_states):
        chain.append(_to(job, J.JOB_STATE_STARTING, "started", "replica processes starting"))
        current = J.JOB_STATE_STARTING
    if all(s == R.REPLICA_STATE_SUCCEEDED for s in replica_states):
        chain.append(_to(job, J.JOB_STATE_SUCCEEDED, "succeeded", "every replica exited 0"))
    elif current == J.JOB_STATE_STARTING and all(
            s in (R.REPLICA_STATE_RUNNING, R.REPLICA_STATE_SUCCEEDED) for s in replica_states):
        chain.append(_to(job, J.JOB_STATE_RUNNING, "running", "every replica running"))
    return _unpinned(job, chain)


def _unpinned(job: common_pb2.Job, chain: list[Transition]) -> list[Transition]:
    """A migrated job that runs (or finished) on its target drops the pin: the
    pin steers the placement after the migration only, and a later requeue
    (preemption, retry) may go anywhere the spec allows again. The event
    keeps the history."""
    if not job.placement_target or not chain or chain[-1].to_state not in (
            J.JOB_STATE_RUNNING, J.JOB_STATE_SUCCEEDED):
        return chain
    last = chain[-1]
    where = f"{job.placement.family}/{job.placement.model}".strip("/")
    note = (f"{last.message}; on {where}, its migration target "
            f"{job.placement_target.replace(':', ' ')} (pin cleared)")
    return [*chain[:-1], replace(last, message=note, clear_placement_target=True)]


def _migration_step(job: common_pb2.Job, rows: Sequence[ReplicaRecord]) -> list[Transition]:
    """A MIGRATING job moves on once every replica has ended.

    Stopped replicas are the migration working (not a failure): the job goes
    back to the queue with a new attempt, pinned to its target, and resumes
    from its last complete checkpoint. A replica that failed by itself is a
    failure as usual; a job whose replicas all finished meanwhile succeeded.
    """
    if any(r.state not in FINAL for r in rows):
        return []
    failed = [r for r in rows if r.state == R.REPLICA_STATE_FAILED]
    if failed:
        return [_failure(job, failed[0])]
    if all(r.state == R.REPLICA_STATE_SUCCEEDED for r in rows):
        return [_to(job, J.JOB_STATE_SUCCEEDED, "succeeded",
                    "every replica exited 0 before the migration stopped it")]
    notes = "; ".join(f"rank {r.rank}: {r.message}" for r in rows if r.message)
    return [migrated(job, f"replicas stopped ({notes})")]


def _preemption_step(job: common_pb2.Job, rows: Sequence[ReplicaRecord]) -> list[Transition]:
    """A PREEMPTED job goes back to the queue once every replica has ended,
    however it ended (a process killed by the stop may exit non-zero): the
    eviction was the scheduler's choice, so it is never a failure and spends
    no retry. The state machine has no PREEMPTED -> SUCCEEDED edge; a job
    that finished just as it was evicted runs again (rare, and safe for a
    job that resumes from its checkpoint)."""
    if any(r.state not in FINAL for r in rows):
        return []
    notes = "; ".join(f"rank {r.rank}: {r.message}" for r in rows if r.message)
    return [requeued_after_preemption(job, f"replicas stopped ({notes})" if notes
                                      else "replicas stopped")]


def requeued_after_preemption(job: common_pb2.Job, what: str) -> Transition:
    """PREEMPTED -> QUEUED with a new attempt (no retry spent)."""
    resume = " from its last complete checkpoint" if job.spec.checkpoint_dir else ""
    message = f"{what}; requeued after preemption, resumes{resume} when devices free"
    # No state_reason: the queued job shows the scheduler's live wait reason.
    return Transition(job_id=job.id, to_state=J.JOB_STATE_QUEUED, kind="requeued",
                      message=message, expect_epoch=job.epoch, increment_attempt=True,
                      clear_placement=True)


def migrated(job: common_pb2.Job, what: str) -> Transition:
    """MIGRATING -> QUEUED with a new attempt: resume from the last complete
    checkpoint within the job's pin. Not a failure, so no retry is spent."""
    where = job.placement_target.replace(":", " ") or "any allowed chip"
    message = f"{what}; resuming on {where} from the last complete checkpoint"
    return Transition(job_id=job.id, to_state=J.JOB_STATE_QUEUED, kind="migrated",
                      message=message, expect_epoch=job.epoch, increment_attempt=True,
                      clear_placement=True, updates=common_pb2.Job(state_reason=message))


def _to(job: common_pb2.Job, state: int, kind: str, message: str) -> Transition:
    return Transition(job_id=job.id, to_state=state, kind=kind, message=message,
                      expect_epoch=job.epoch)


def _failure(job: common_pb2.Job, row: ReplicaRecord) -> Transition:
    what = (f"replica {row.rank} on {row.node} "
            + ("was stopped" if row.state == R.REPLICA_STATE_STOPPED
               else f"exited with code {row.exit_code}"))
    if row.message:
        what += f": {row.message}"
    return failure_or_retry(job, what, row.exit_code)


def failure_or_retry(job: common_pb2.Job, what: str, exit_code: int = 0) -> Transition:
    """Requeue with a new attempt while the retry policy allows, else fail."""
    if job.attempt < max(1, job.spec.retry.max_attempts):
        return Transition(
            job_id=job.id, to_state=J.JOB_STATE_QUEUED, kind="retrying",
            message=f"{what}; retrying (attempt {job.attempt + 1} of "
                    f"{job.spec.retry.max_attempts})",
            expect_epoch=job.epoch, increment_attempt=True, clear_placement=True,
            updates=common_pb2.Job(state_reason=what),
        )
    return Transition(job_id=job.id, to_state=J.JOB_STATE_FAILED, kind="failed", message=what,
                      expect_epoch=job.epoch,
                      updates=common_pb2.Job(exit_code=exit_code, state_reason=what))


def decide_report(report: ReplicaReport, job: common_pb2.Job,
                  rows: Sequence[ReplicaRecord]) -> list[Transition]:
    """The job change a recorded report calls for (``Store.record_reports``'s
    ``decide``): only a report of the job's current attempt and epoch moves
    it. Pure."""
    return next_transition(job, rows) if _is_current(job, report.ref) else []


class Reconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_status(self, node: str, status: agent_pb2.ReplicaStatus) -> Verdict:
        """Record one replica report and move its job on. Durable on return.

        Only a replica placed on ``node`` (the reporting agent's) counts: a
        report on another node's replica changes nothing and, if live, is
        answered with a stop, like any stale report."""
        [outcome] = self.record([(node, status)])
        return self.settle(status, outcome)

    def on_statuses(self, node: str, statuses: Sequence[agent_pb2.ReplicaStatus]
                    ) -> list[Verdict]:
        """:meth:`on_status` of each (a returning agent's held replicas), in
        one store transaction; if the store refuses them together, one by
        one, so a refused report fails as it would alone."""
        if len(statuses) < 2:
            return [self.on_status(node, s) for s in statuses]
        try:
            outcomes = self.record([(node, s) for s in statuses])
        except Exception as exc:
            log.info("%d reports of %s refused together (%s); recording one by one",
                     len(statuses), node, exc)
            return [self.on_status(node, s) for s in statuses]
        return [self.settle(s, o) for s, o in zip(statuses, outcomes, strict=True)]

    def record(self, reports: Sequence[tuple[str, agent_pb2.ReplicaStatus]]
               ) -> list[ReportOutcome]:
        """Record (node, status) reports and their jobs' changes in ONE store
        transaction, in order, all or nothing (group commit; see
        ``agents.py``). Durable on return; :meth:`settle` each outcome."""
        ctx = self.ctx
        batch = [ReplicaReport(s.ref, s.state, s.exit_code, s.message, node=node)
                 for node, s in reports]
        with ctx.lock:
            outcomes = ctx.store.record_reports(batch, decide_report, ctx.clock())
            for report in batch:
                if report.state in FINAL:
                    ctx.allocations.release(report.ref.job_id, report.ref.attempt,
                                            node=report.node, rank=report.ref.rank)
        return outcomes

    def settle(self, status: agent_pb2.ReplicaStatus, outcome: ReportOutcome) -> Verdict:
        """The verdict on a recorded report, and its job change's side
        effects (outside the lock): a stale report is answered with a stop
        if its replica is live."""
        job = outcome.job
        if outcome.row is None or job is None or not _is_current(job, status.ref):
            return Verdict(stop=status.state in LIVE)
        if not outcome.changed:
            return Verdict()
        updated = outcome.changed[-1]
        self._after_change(job, updated)
        return Verdict(job=updated)

    def on_node_lost(self, node: str) -> list[common_pb2.Job]:
        """The node's agent has been gone past the timeout: its jobs are lost."""
        ctx = self.ctx
        changed = []
        with ctx.lock:
            for row in ctx.store.replicas_on_node(node, active_only=True):
                job = ctx.store.get_job(row.job_id)
                if job is None or states.is_terminal(job.state) or row.attempt != job.attempt:
                    continue
                what = f"node {node} lost (agent gone)"
                t = (migrated(job, what) if job.state == J.JOB_STATE_MIGRATING
                     else requeued_after_preemption(job, what)
                     if job.state == J.JOB_STATE_PREEMPTED
                     else failure_or_retry(job, what))
                changed.append((job, ctx.store.apply([t], ctx.clock())[-1]))
            for idx_hold in list(ctx.allocations.held_on(node).values()):
                ctx.allocations.release(idx_hold.job_id, idx_hold.attempt, node=node)
            ctx.fleet.forget_lost(node)
        for old, new in changed:
            self._after_change(old, new)
        return [new for _, new in changed]

    def _after_change(self, old: common_pb2.Job, new: common_pb2.Job) -> None:
        """Side effects of a job change, outside the lock: stop the other
        replicas of a failed or requeued attempt, wake the scheduler."""
        if new.state in (J.JOB_STATE_QUEUED, J.JOB_STATE_FAILED):
            self.stop_replicas(old, f"job {states.state_name(new.state).lower()}")
        if new.state != old.state:
            self.ctx.wake.set()
        self.ctx.notifier.notify()

    def stop_replicas(self, job: common_pb2.Job, reason: str) -> None:
        """Tell agents to stop every still-live replica of the job's attempt."""
        grace = Duration()
        grace.FromNanoseconds(int(self.ctx.settings.stop_grace_s * 1e9))
        for row in self.ctx.store.replicas(job.id, job.attempt):
            if row.state in FINAL:
                continue
            ref = R.ReplicaRef(job_id=job.id, attempt=row.attempt, rank=row.rank, epoch=row.epoch)
            stop = R.StopReplica(ref=ref, reason=reason, grace=grace)
            self.ctx.fleet.send(row.node, R.ControlMessage(stop=stop))


def _is_current(job: common_pb2.Job, ref: agent_pb2.ReplicaRef) -> bool:
    return (not states.is_terminal(job.state) and job.attempt == ref.attempt
            and job.epoch == ref.epoch)
