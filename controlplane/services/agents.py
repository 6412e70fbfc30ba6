"""Agent sessions: Register reconciles what a returning agent holds, Connect
carries heartbeats, replica reports and logs in, launches and stops out."""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence

from google.protobuf.duration_pb2 import Duration

from controlplane.api.errors import FailedPrecondition, InvalidArgument
from controlplane.services.context import Context
from controlplane.services.fleet import AgentSession
from controlplane.services.group_commit import GroupCommit
from controlplane.services.limits import LogBatcher
from controlplane.services.log_acks import AckingRateLimiter, LogAcks
from controlplane.services.reconcile import Reconciler
from controlplane.services.replica_owner import ReplicaOwnership
from controlplane.services.throughput import job_type
from controlplane.services.translate import launch_messages
from controlplane.store.base import ReportOutcome
from xinhe.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

R = agent_pb2
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
SUPPORTED = {R.PROTOCOL_VERSION_1}
# A replica report as received: the reporting agent's node and its status.
Received = tuple[str, agent_pb2.ReplicaStatus]
MAX_DEVICES = 1024


def validate_register(req: agent_pb2.RegisterRequest) -> None:
    if req.protocol_version not in SUPPORTED:
        raise FailedPrecondition(
            f"protocol_version {req.protocol_version} not supported (server speaks 1)")
    for field, value in (("node_name", req.node_name), ("pool", req.pool),
                         ("region", req.region)):
        if not NAME.fullmatch(value):
            raise InvalidArgument(field, "required; letters, digits, '.', '_', '-'")
    if len(req.devices) > MAX_DEVICES:
        raise InvalidArgument("devices", f"more than {MAX_DEVICES}")
    if len({d.index for d in req.devices}) != len(req.devices):
        raise InvalidArgument("devices", "device indices must be unique")


class AgentSessions:
    def __init__(self, ctx: Context, reconciler: Reconciler) -> None:
        self.ctx = ctx
        self.reconciler = reconciler
        # Logs are acknowledged to agents once stored (log_acks.py).
        self.log_acks = LogAcks(ctx.store.append_logs)
        limiter = AckingRateLimiter(ctx.settings.log_rate_bytes_per_job,
                                    self.log_acks.acknowledge)
        self.logs = LogBatcher(self.log_acks.write, limiter, ctx.clock,
                               on_flush=ctx.notifier.notify)
        self.owners = ReplicaOwnership(ctx.store.replicas)
        # Replica reports from every stream share store transactions
        # (group_commit.py): a report is acknowledged once its batch committed.
        self.reports: GroupCommit[Received, ReportOutcome] = GroupCommit(
            self._record_reports, what="replica reports")

    def register(self, req: agent_pb2.RegisterRequest) -> agent_pb2.RegisterResponse:
        validate_register(req)
        session = self.ctx.fleet.register(req, self.ctx.clock())
        verdicts = self.reconciler.on_statuses(req.node_name, list(req.replicas))
        stop = [s.ref for s, v in zip(req.replicas, verdicts, strict=True) if v.stop]
        interval = Duration()
        interval.FromNanoseconds(int(self.ctx.settings.heartbeat_interval_s * 1e9))
        self.ctx.wake.set()
        log.info("agent %s registered (pool %s, %d devices, %d replicas held, %d to stop)",
                 req.node_name, req.pool, len(req.devices), len(req.replicas), len(stop))
        return R.RegisterResponse(session_id=session.session_id, heartbeat_interval=interval,
                                  stop=stop)

    def connect(self, requests: Iterator[agent_pb2.AgentMessage], alive: callable,
                authorize: Callable[[str], None] = lambda node: None,
                ) -> Iterator[agent_pb2.ControlMessage]:
        """Serve one Connect stream: a reader thread handles agent messages,
        this generator writes the session's outbox. ``authorize(node)``
        raises when the caller may not act as the session's node; it runs
        before the stream attaches, so a refused caller disturbs nothing."""
        first = next(requests, None)
        if first is None or not first.session_id:
            raise InvalidArgument("session_id", "the first message must carry the session id")
        node = self.ctx.fleet.node_of(first.session_id)
        if node is not None:
            authorize(node)
        session = self.ctx.fleet.attach(first.session_id)
        if session is None:
            raise FailedPrecondition("session superseded or unknown; register again")
        self._handle(session, first)
        self._resend_launches(session)
        reader = threading.Thread(target=self._read, args=(session, requests),
                                  name=f"agent-{session.node}", daemon=True)
        reader.start()
        try:
            yield from self._write(session, alive)
        finally:
            if self.ctx.fleet.detach(session, self.ctx.clock()):
                log.warning("agent %s disconnected", session.node)
                self.ctx.wake.set()

    def _write(self, session: AgentSession, alive: callable) -> Iterator[agent_pb2.ControlMessage]:
        while alive() and not session.closed:
            try:
                message = session.outbox.get(timeout=1.0)
            except queue.Empty:
                continue
            if message is None:
                return
            yield message

    def _read(self, session: AgentSession, requests: Iterator[agent_pb2.AgentMessage]) -> None:
        try:
            for message in requests:
                if session.closed:
                    return
                self._handle(session, message)
        except Exception as exc:  # stream broken: the writer side ends the session
            log.debug("agent %s stream ended: %s", session.node, exc)
        finally:
            session.close()

    def _handle(self, session: AgentSession, message: agent_pb2.AgentMessage) -> None:
        kind = message.WhichOneof("body")
        now = self.ctx.clock()
        if kind == "heartbeat":
            if self.ctx.fleet.heartbeat(session, list(message.heartbeat.devices), now):
                self.ctx.wake.set()
        elif kind == "inventory":
            self.ctx.fleet.heartbeat(session, list(message.inventory.devices), now)
            self.ctx.wake.set()
        elif kind == "status":
            self._on_status(session, message.status)
        elif kind == "logs":
            self._on_logs(session, message.logs, now)
        elif kind == "progress":
            self._on_progress(session, message.progress, now)

    def _on_progress(self, session: AgentSession, progress: agent_pb2.Progress,
                     now: float) -> None:
        """Rank 0 of the job's current assignment: remember it as the job's
        progress (and its last checkpoint's time, for preemption) and learn
        its type's speed on the placed model. Reports of
        other attempts, epochs, ranks or nodes are dropped (best effort, no ack)."""
        table, ref = self.ctx.throughput, progress.ref
        if table is None or ref.rank != 0:
            return
        if not self.owners.owns(session.node, ref.job_id, ref.attempt, ref.rank):
            log.warning("agent %s sent progress of %s, not placed on it; dropped",
                        session.node, ref.job_id)
            return
        job = self.ctx.store.get_job(ref.job_id)
        if job is None or (job.attempt, job.epoch) != (ref.attempt, ref.epoch):
            return
        if progress.HasField("last_checkpoint"):
            table.note_checkpoint(job.id, progress.last_checkpoint.ToNanoseconds() / 1e9)
        if not progress.HasField("time"):
            return  # a checkpoint time only: no progress to note or learn from
        table.note_progress(job.id, progress.step, progress.steps_per_second, now)
        table.record(job_type(job.spec), job.placement.model, progress.steps_per_second, now)

    def _on_status(self, session: AgentSession, status: agent_pb2.ReplicaStatus) -> None:
        # Blocks this stream's reader until the report is committed, so a
        # stream's reports are recorded (and acknowledged) in the order sent.
        outcome = self.reports.submit((session.node, status))
        verdict = self.reconciler.settle(status, outcome)
        if verdict.stop:
            session.send(R.ControlMessage(stop=R.StopReplica(
                ref=status.ref, reason="superseded: not the job's current assignment")))
        session.send(R.ControlMessage(ack=R.Ack(agent_sequence=status.agent_sequence)))

    def _record_reports(self, batch: Sequence[Received]) -> list[ReportOutcome]:
        """One batch of (node, status) reports, in one store transaction."""
        # An agent sends a replica's output before its final status: write
        # buffered logs first, so a job that ended has all its logs stored.
        self.logs.flush()
        return self.reconciler.record(batch)

    def _on_logs(self, session: AgentSession, chunk: common_pb2.LogChunk, now: float) -> None:
        # Buffered and rate-limited; written in batches (one fsync per batch),
        # acknowledged to the session once written.
        self.log_acks.received(session, chunk)
        if not self.owners.owns(session.node, chunk.job_id, chunk.attempt, chunk.rank):
            # Another node's replica: never stored; acknowledged so an agent
            # that holds it (a bug, or a forger) stops resending it.
            log.warning("agent %s sent logs of %s, not placed on it; dropped",
                        session.node, chunk.job_id)
            self.log_acks.acknowledge([chunk])
            return
        self.logs.add([chunk])

    def _resend_launches(self, session: AgentSession) -> None:
        """Launches the agent may never have received (sent while it was away,
        or lost in a control-plane restart). The agent ignores duplicates."""
        rows = self.ctx.store.replicas_on_node(session.node, active_only=True)
        pending = {r.job_id for r in rows if r.state == R.REPLICA_STATE_UNSPECIFIED}
        for job_id in sorted(pending):
            job = self.ctx.store.get_job(job_id)
            if job is None:
                continue
            for node, message in launch_messages(job):
                if node == session.node:
                    session.send(message)
