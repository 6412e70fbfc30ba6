"""The control plane's event-driven instruments: counters and histograms
incremented where things happen (committed job transitions, scheduling
rounds, gRPC calls, store writes), in a registry of their own.

Gauges about the fleet and the queue are not kept here: the scrape-time
collector (``collector.py``) computes them from live state, so they cannot
drift from what the control plane knows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane import __version__
from controlplane.model import states
from controlplane.observability import metrics as m
from controlplane.store.base import Transition
from xinhe.v1 import common_pb2

# Which counter a committed transition into a state increments.
STATE_COUNTERS = {
    states.SUCCEEDED: "xinhe_jobs_succeeded_total",
    states.FAILED: "xinhe_jobs_failed_total",
    states.CANCELLED: "xinhe_jobs_cancelled_total",
    states.PREEMPTED: "xinhe_jobs_preempted_total",
}
RETRIED = "xinhe_jobs_retried_total"
# Counted by the migration service, which knows why a job moves (the store
# sees only RUNNING -> MIGRATING): see :meth:`ControlPlaneMetrics.job_migrated`.
MIGRATED = "xinhe_jobs_migrated_total"


class RoundLike(Protocol):
    """What a scheduling round reports (services.scheduling.RoundResult)."""

    pending: int
    placed: int
    seconds: float


def job_family(job: common_pb2.Job) -> str:
    """The family label of a job: where it is placed, else the one family it
    asked for, else 'any' (a bounded label, never a job id)."""
    if job.placement.family:
        return job.placement.family
    families = list(job.spec.resources.families)
    return families[0] if len(families) == 1 else "any"


def _instrument(defn: m.MetricDef, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    args = {"name": defn.base_name, "documentation": defn.help,
            "labelnames": defn.labels, "registry": registry}
    if defn.kind is m.Kind.COUNTER:
        return Counter(**args)
    if defn.kind is m.Kind.HISTOGRAM:
        return Histogram(buckets=defn.buckets, **args)
    return Gauge(**args)


class ControlPlaneMetrics:
    """Counters and histograms of one control plane, in ``registry``.

    Every method is thread-safe and cheap: they are called from gRPC worker
    threads, the controller loop and the store wrapper.
    """

    INSTRUMENTED = (
        "xinhe_controlplane_build_info", "xinhe_controlplane_ready",
        "xinhe_api_frontends", "xinhe_api_frontend_restarts_total",
        "xinhe_jobs_submitted_total", *STATE_COUNTERS.values(), RETRIED, MIGRATED,
        "xinhe_job_queue_wait_seconds", "xinhe_job_run_duration_seconds",
        "xinhe_scheduler_round_duration_seconds", "xinhe_scheduler_round_placements",
        "xinhe_scheduler_placements_total", "xinhe_grpc_requests_total",
        "xinhe_grpc_request_duration_seconds", "xinhe_store_write_duration_seconds",
        "xinhe_store_errors_total",
    )

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._m = {name: _instrument(m.get(name), self.registry) for name in self.INSTRUMENTED}
        self._m["xinhe_controlplane_build_info"].labels(version=__version__).set(1)
        self._lock = threading.Lock()
        # When each requeued job re-entered the queue (absent: since creation).
        self._queued_since: dict[str, float] = {}
        # (service, method, code) -> the gRPC metrics' labelled children.
        self._rpc_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def __getitem__(self, name: str) -> Counter | Gauge | Histogram:
        return self._m[name]

    def set_ready(self, ready: bool) -> None:
        self._m["xinhe_controlplane_ready"].set(1 if ready else 0)

    def frontends(self, configured: int, running: int, restarted: bool = False) -> None:
        """The API front ends' count (and one more restart, when ``restarted``)."""
        self._m["xinhe_api_frontends"].labels(state="configured").set(configured)
        self._m["xinhe_api_frontends"].labels(state="running").set(running)
        if restarted:
            self._m["xinhe_api_frontend_restarts_total"].inc()

    # -- jobs ----------------------------------------------------------------
    def job_submitted(self, job: common_pb2.Job) -> None:
        self._m["xinhe_jobs_submitted_total"].labels(tenant=job.tenant).inc()

    def jobs_changed(self, transitions: Sequence[Transition], jobs: Sequence[common_pb2.Job],
                     now: float) -> None:
        """Count committed transitions (``jobs`` are the store's results, in
        order) and observe queue waits and run times."""
        for t, job in zip(transitions, jobs, strict=False):
            labels = {"tenant": job.tenant, "family": job_family(job)}
            if t.to_state == states.SCHEDULED:
                self._observe_wait(job, now, labels)
            elif t.to_state == states.QUEUED:
                with self._lock:
                    self._queued_since[job.id] = now
                if t.kind == "retrying":
                    self._m[RETRIED].labels(**labels).inc()
            counter = STATE_COUNTERS.get(t.to_state)
            if counter is not None:
                self._m[counter].labels(**labels).inc()
            if states.is_terminal(t.to_state):
                self._finished(job, labels)

    def job_migrated(self, job: common_pb2.Job, trigger: str) -> None:
        """Count a committed RUNNING -> MIGRATING move of ``job``; ``trigger``
        is one of ``metrics.MIGRATION_TRIGGERS`` (ValueError otherwise, so the
        label stays bounded)."""
        if trigger not in m.MIGRATION_TRIGGERS:
            raise ValueError(f"migration trigger {trigger!r} is not one of "
                             f"{', '.join(m.MIGRATION_TRIGGERS)}")
        self._m[MIGRATED].labels(tenant=job.tenant, family=job_family(job),
                                 trigger=trigger).inc()

    def _observe_wait(self, job: common_pb2.Job, now: float, labels: dict[str, str]) -> None:
        with self._lock:
            since = self._queued_since.pop(job.id, None)
        if since is None:
            since = job.created_at.ToNanoseconds() / 1e9
        self._m["xinhe_job_queue_wait_seconds"].labels(**labels).observe(max(0.0, now - since))

    def _finished(self, job: common_pb2.Job, labels: dict[str, str]) -> None:
        with self._lock:
            self._queued_since.pop(job.id, None)
        # A short job may end before every replica reported running: then its
        # run time counts from placement.
        started = job.started_at.ToNanoseconds() or job.scheduled_at.ToNanoseconds()
        finished = job.finished_at.ToNanoseconds()
        if started and finished >= started:
            state = states.state_name(job.state)
            self._m["xinhe_job_run_duration_seconds"].labels(state=state, **labels).observe(
                (finished - started) / 1e9)

    # -- scheduler, API, store -------------------------------------------------
    def round_finished(self, result: RoundLike) -> None:
        """Observe a scheduling round; rounds with an empty queue are skipped
        (they cost nothing and would drown the distribution)."""
        if result.pending <= 0:
            return
        self._m["xinhe_scheduler_round_duration_seconds"].observe(result.seconds)
        self._m["xinhe_scheduler_round_placements"].observe(result.placed)
        self._m["xinhe_scheduler_placements_total"].inc(result.placed)

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        # The labelled children, looked up once per (method, code): the label
        # values are bounded by the protos and the status codes.
        key = (service, method, code)
        children = self._rpc_children.get(key)
        if children is None:
            children = self._rpc_children[key] = (
                self._m["xinhe_grpc_requests_total"].labels(
                    service=service, method=method, code=code),
                self._m["xinhe_grpc_request_duration_seconds"].labels(
                    service=service, method=method))
        children[0].inc()
        children[1].observe(seconds)

    def store_write(self, operation: str, seconds: float) -> None:
        self._m["xinhe_store_write_duration_seconds"].labels(operation=operation).observe(seconds)

    def store_error(self, operation: str, error: str) -> None:
        self._m["xinhe_store_errors_total"].labels(operation=operation, error=error).inc()
