"""Tenant operations: submit, read, cancel, and follow a job's events and logs."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

from google.protobuf.duration_pb2 import Duration

from controlplane.api.errors import InvalidArgument, NotFound, PermissionDenied
from controlplane.model import states
from controlplane.model.spec import validate_spec
from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import ClusterSnapshot, Policy
from controlplane.services.allocations import Allocations
from controlplane.services.context import Context
from controlplane.services.limits import SubmissionLimiter
from controlplane.services.reconcile import FINAL
from controlplane.services.scheduling import model_speeds
from controlplane.services.submit_batch import SubmitBatcher
from controlplane.services.throughput import attach_progress
from controlplane.services.translate import node_views, pending_job
from controlplane.store.base import Transition
from xinhe.v1 import agent_pb2, common_pb2

J = common_pb2
MAX_CLIENT_KEY = 128
MAX_PAGE = 1000
FOLLOW_POLL_S = 0.5


FIT_CACHE_SIZE = 4096
# Valid specs remembered (see JobService._validate), and the largest kept.
VALID_SPEC_CACHE = 4096
VALID_SPEC_BYTES = 16 * 1024


def _shape(spec: common_pb2.JobSpec) -> tuple:
    """What decides whether a job can ever fit: queue, gang and resources,
    and the objective and region that may narrow where it goes."""
    return (spec.queue, spec.replicas, spec.resources.SerializeToString(deterministic=True),
            tuple(sorted(spec.variants)), spec.objective, spec.data_region, spec.latency_class)


def _inventory(nodes: list[common_pb2.Node]) -> tuple:
    """The fleet's structure (not its live telemetry or status)."""
    return tuple((n.name, n.pool, n.region, tuple((d.index, d.family, d.model, d.memory_bytes)
                                                  for d in n.devices)) for n in nodes)


def new_job_id() -> str:
    return "j-" + secrets.token_hex(6)


class JobService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.limiter = SubmissionLimiter(ctx.settings.submit_rate_per_tenant,
                                         ctx.settings.submit_burst_per_tenant, ctx.clock)
        # job shape -> why it never fits ("" = it can), valid for the fleet
        # inventory it was computed on: the core runs once per shape, not
        # once per submission, until a node's devices change.
        self._fit_cache: dict[tuple, str] = {}
        self._fit_inventory: tuple = ()
        # (fleet, its inventory_version) the cache was last checked against:
        # while it holds, a submission reads neither the nodes nor the cache's
        # inventory key.
        self._fit_stamp: tuple = ()
        self._fit_lock = threading.Lock()
        # Serialized specs that passed validation (validate_spec is pure):
        # a spec submitted again, or a batch of copies, is checked once.
        self._valid_specs: set[bytes] = set()
        # Concurrent submissions share one store transaction (group commit).
        self._batcher = SubmitBatcher(ctx.store, ctx.clock)

    # -- submit -------------------------------------------------------------
    def submit(self, spec: common_pb2.JobSpec, client_key: str,
               scope: str | None = None) -> tuple[common_pb2.Job, bool]:
        """Validate, check the job can ever fit the fleet, persist, wake the
        scheduler. Idempotent on (tenant, client_key). A caller scoped to a
        tenant may only submit to that tenant's queues (PermissionDenied)."""
        job = self.new_job(spec, client_key, scope)
        self.limiter.admit(job.tenant)
        existing = self.refused_unless_retry(job)
        if existing is not None:
            return existing, False
        stored, created = self._batcher.create(job)
        if created:
            self.announce()
        return stored, created

    def new_job(self, spec: common_pb2.JobSpec, client_key: str,
                scope: str | None = None) -> common_pb2.Job:
        """The QUEUED job ``spec`` makes, once validated (InvalidArgument
        naming the field) and authorised (PermissionDenied)."""
        if len(client_key) > MAX_CLIENT_KEY:
            raise InvalidArgument("client_key", f"longer than {MAX_CLIENT_KEY} characters")
        self._validate(spec)
        tenant = spec.queue.split("/", 1)[0]
        if scope is not None and tenant != scope:
            raise PermissionDenied(f"tenant {scope!r} may not submit to queue {spec.queue!r}")
        return J.Job(id=new_job_id(), tenant=tenant, client_key=client_key, spec=spec,
                     state=J.JOB_STATE_QUEUED, attempt=1)

    def _validate(self, spec: common_pb2.JobSpec) -> None:
        size = spec.ByteSize()
        raw = spec.SerializeToString(deterministic=True) if size <= VALID_SPEC_BYTES else b""
        if raw and raw in self._valid_specs:
            return
        validate_spec(spec, self.ctx.catalogue)
        if raw:
            if len(self._valid_specs) >= VALID_SPEC_CACHE:
                self._valid_specs.clear()
            self._valid_specs.add(raw)

    def refused_unless_retry(self, job: common_pb2.Job) -> common_pb2.Job | None:
        """None when ``job`` may be created; raises InvalidArgument when it can
        never fit the fleet, unless it retries an accepted key: then that job."""
        try:
            self._check_can_ever_fit(job)
        except InvalidArgument:
            # A retry of an accepted job still gets that job, even if the
            # fleet changed since. (No store read on the common path: the
            # store resolves the key atomically when it creates the job.)
            existing = self._existing(job.tenant, job.client_key) if job.client_key else None
            if existing is None:
                raise
            return existing
        return None

    def announce(self) -> None:
        """Jobs were created: wake the scheduler and the watchers."""
        self.ctx.wake.set()
        self.ctx.notifier.notify()

    def _existing(self, tenant: str, client_key: str) -> common_pb2.Job | None:
        # Only for a retry refused by the fit check; see submit().
        return self.ctx.store.find_job_by_key(tenant, client_key)

    def _check_can_ever_fit(self, job: common_pb2.Job) -> None:
        """Reject at submit a job no known node could ever hold. With no node
        known yet (fresh start) the job is accepted and waits."""
        fleet, key = self.ctx.fleet, _shape(job.spec)
        stamp = (fleet, fleet.inventory_version)  # read before the nodes: never newer
        with self._fit_lock:
            reason = self._fit_cache.get(key) if stamp == self._fit_stamp else None
        if reason is None:
            reason = self._fit_reason(job, key, stamp)
        if reason:
            raise InvalidArgument("spec.resources", f"can never be placed: {reason}")

    def _fit_reason(self, job: common_pb2.Job, key: tuple, stamp: tuple) -> str:
        """The cache's answer for ``key`` after checking it against the
        nodes, or the core's (then cached)."""
        nodes = stamp[0].nodes()
        if not nodes:
            return ""
        inventory = _inventory(nodes)
        with self._fit_lock:
            if inventory != self._fit_inventory:
                self._fit_cache, self._fit_inventory = {}, inventory
            self._fit_stamp = stamp
            reason = self._fit_cache.get(key)
        if reason is None:
            reason = self._never_fits(job, nodes)
            with self._fit_lock:
                if inventory == self._fit_inventory:  # not computed on a stale fleet
                    if len(self._fit_cache) >= FIT_CACHE_SIZE:
                        self._fit_cache.clear()
                    self._fit_cache[key] = reason
        return reason

    def _never_fits(self, job: common_pb2.Job, nodes: list[common_pb2.Node]) -> str:
        """Why the core finds no node that could ever hold ``job``; "" if one can."""
        for node in nodes:
            node.status = J.NODE_STATUS_READY  # assume every node up and empty
            for dev in node.devices:
                dev.healthy = True
        views = node_views(nodes, Allocations(), self.ctx.catalogue)
        snap = ClusterSnapshot(nodes=tuple(views), model_speed=model_speeds(self.ctx))
        decision = schedule(snap, [pending_job(job, 0, self.ctx.catalogue)], Policy(), 0.0)
        return next((w.reason for w in decision.waiting if w.never_fits), "")

    # -- read ---------------------------------------------------------------
    def get(self, job_id: str, scope: str | None = None) -> common_pb2.Job:
        """The job; NotFound also when it belongs to a tenant other than
        ``scope`` (another tenant's job ids are not even confirmed)."""
        if not job_id:
            raise InvalidArgument("job_id", "required")
        job = self.ctx.store.get_job(job_id)
        if job is None or (scope is not None and job.tenant != scope):
            raise NotFound(f"job {job_id} not found")
        return attach_progress(self._with_wait_reason(job), self.ctx.throughput)

    def list(self, request_states: list[int], queue: str, page_size: int,
             page_token: str, scope: str | None = None) -> tuple[list[common_pb2.Job], str]:
        if page_size > MAX_PAGE:
            raise InvalidArgument("page_size", f"at most {MAX_PAGE}")
        before = None
        if page_token:
            if not page_token.isdigit():
                raise InvalidArgument("page_token", "not a token from a previous page")
            before = int(page_token)
        jobs, cursor = self.ctx.store.list_jobs(
            tenant=scope, states=request_states, queue=queue or None, limit=page_size or 100,
            before_seq=before)
        return [self._with_wait_reason(j) for j in jobs], "" if cursor is None else str(cursor)

    def _with_wait_reason(self, job: common_pb2.Job) -> common_pb2.Job:
        """A queued job shows why it waits now (the last round's reason); why it
        came back to the queue (a failure, a lost node) stays in its events."""
        if job.state == J.JOB_STATE_QUEUED:
            reason = self.ctx.wait_reasons.get(job.id)
            if reason:
                job.state_reason = reason
        return job

    # -- cancel -------------------------------------------------------------
    def cancel(self, job_id: str, reason: str, scope: str | None = None) -> common_pb2.Job:
        """End a job. Queued jobs end at once; live replicas are told to stop
        and keep their devices until their agents report them stopped."""
        ctx = self.ctx
        with ctx.lock:
            job = self.get(job_id, scope)
            if states.is_terminal(job.state):
                return job
            message = reason or "cancelled by request"
            updated = ctx.store.apply([Transition(
                job_id=job.id, to_state=J.JOB_STATE_CANCELLED, kind="cancelled",
                message=message, expect_epoch=job.epoch,
                updates=J.Job(state_reason=message))], ctx.clock())[-1]
            rows = ctx.store.replicas(job.id, job.attempt) if job.placement.replicas else []
        self._stop(rows, message)
        ctx.wait_reasons.pop(job.id, None)
        ctx.notifier.notify()
        return updated

    def _stop(self, rows: list, reason: str) -> None:
        grace = Duration()
        grace.FromNanoseconds(int(self.ctx.settings.stop_grace_s * 1e9))
        for row in rows:
            if row.state in FINAL:
                continue
            ref = agent_pb2.ReplicaRef(job_id=row.job_id, attempt=row.attempt, rank=row.rank,
                                       epoch=row.epoch)
            self.ctx.fleet.send(row.node, agent_pb2.ControlMessage(
                stop=agent_pb2.StopReplica(ref=ref, reason=reason, grace=grace)))

    # -- follow -------------------------------------------------------------
    def watch(self, job_id: str, after: int, follow: bool, alive: callable,
              scope: str | None = None) -> Iterator[common_pb2.JobEvent]:
        """Events after ``after``; with follow, until the job ends."""
        self.get(job_id, scope)
        yield from self._follow(job_id, after, follow, alive,
                                lambda cursor: self.ctx.store.events(job_id, cursor))

    def logs(self, job_id: str, after: int, follow: bool, rank: int | None,
             alive: callable, scope: str | None = None) -> Iterator[common_pb2.LogChunk]:
        self.get(job_id, scope)
        yield from self._follow(job_id, after, follow, alive,
                                lambda cursor: self.ctx.store.logs(job_id, cursor, rank))

    def _follow(self, job_id: str, after: int, follow: bool, alive: callable,
                fetch: callable) -> Iterator:
        cursor, seen = after, self.ctx.notifier.generation
        while True:
            batch = fetch(cursor)
            for item in batch:
                cursor = item.sequence
                yield item
            if batch:
                continue
            job = self.ctx.store.get_job(job_id)
            if not follow or job is None or states.is_terminal(job.state):
                final = fetch(cursor)  # anything written between the reads
                yield from final
                if not final:
                    return
                cursor = final[-1].sequence
                continue
            if not alive():
                return
            seen = self.ctx.notifier.wait(seen, FOLLOW_POLL_S)
