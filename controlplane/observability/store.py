"""A Store decorator that measures writes and counts committed job changes.

Wrapping the store, rather than hooking each service, puts the job counters
where a change becomes true: a transition is counted only once the store has
committed it, whichever service asked (scheduler, reconciler, cancel, node
loss), and a refused or rolled-back batch counts nothing.

Every method of :class:`Store` is forwarded; the ones not listed in
``READS`` are timed as writes, so a method added to the interface later is
measured without touching this file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from controlplane.observability.instruments import ControlPlaneMetrics
from controlplane.store.base import (
    ConflictError,
    NotFoundError,
    ReplicaReport,
    ReportDecision,
    ReportOutcome,
    Store,
    Transition,
)
from xinhe.v1 import common_pb2

READS = frozenset({
    "get_job", "find_job_by_key", "list_jobs", "jobs_in_states", "count_jobs_by_state",
    "events", "replicas", "replicas_on_node", "logs", "get_node", "list_nodes", "close",
    "find_token", "list_tokens", "tokens_exist", "audit_events", "load_throughput",
})
# Outcomes the callers expect and handle (a lost compare-and-set, an unknown
# name): not store failures, so they do not feed the store-errors alert.
EXPECTED = (ConflictError, NotFoundError)


class InstrumentedStore(Store):
    """Forwards to ``inner``; times writes, counts errors and job changes."""

    def __init__(self, inner: Store, metrics: ControlPlaneMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def __getattr__(self, name: str) -> Any:
        # Implementation extras (e.g. SqliteStore.path) stay reachable.
        if name == "inner":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _call(self, operation: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except EXPECTED:
            raise
        except Exception as exc:
            self.metrics.store_error(operation, type(exc).__name__)
            raise
        if operation not in READS:
            self.metrics.store_write(operation, time.perf_counter() - started)
        return result

    def create_job(self, job: common_pb2.Job, now: float) -> tuple[common_pb2.Job, bool]:
        stored, created = self._call("create_job", self.inner.create_job, job, now)
        if created:
            self.metrics.job_submitted(stored)
        return stored, created

    def create_jobs(self, jobs: Sequence[common_pb2.Job],
                    now: float) -> list[tuple[common_pb2.Job, bool]]:
        results = self._call("create_jobs", self.inner.create_jobs, jobs, now)
        for stored, created in results:
            if created:
                self.metrics.job_submitted(stored)
        return results

    def apply(self, transitions: Sequence[Transition], now: float) -> list[common_pb2.Job]:
        jobs = self._call("apply", self.inner.apply, transitions, now)
        self.metrics.jobs_changed(transitions, jobs, now)
        return jobs

    def record_reports(self, reports: Sequence[ReplicaReport], decide: ReportDecision,
                       now: float) -> list[ReportOutcome]:
        outcomes = self._call("record_reports", self.inner.record_reports, reports, decide, now)
        for outcome in outcomes:
            self.metrics.jobs_changed(outcome.transitions, outcome.changed, now)
        return outcomes


def _forwarder(name: str) -> Callable[..., Any]:
    def forward(self: InstrumentedStore, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, getattr(self.inner, name), *args, **kwargs)

    forward.__name__ = name
    forward.__doc__ = getattr(Store, name).__doc__
    return forward


for _name in sorted(Store.__abstractmethods__):
    if _name not in vars(InstrumentedStore):
        setattr(InstrumentedStore, _name, _forwarder(_name))
InstrumentedStore.__abstractmethods__ = frozenset()
