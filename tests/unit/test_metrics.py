"""The metric definitions follow Prometheus conventions, and the control
plane's instruments count what really happened: committed job transitions
through a real SQLite store, rounds, gRPC calls and store errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controlplane.model import states
from controlplane.observability import metrics as m
from controlplane.observability.grpc_metrics import split_method
from controlplane.observability.instruments import ControlPlaneMetrics, job_family
from controlplane.observability.store import READS, InstrumentedStore
from controlplane.services.scheduling import RoundResult
from controlplane.store.base import ConflictError, Store, StoreError, Transition
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import common_pb2

J = common_pb2
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_celsius", "_watts", "_total", "_info")
FORBIDDEN_LABELS = {"job", "job_id", "id", "uuid", "attempt", "instance"}


# -- definitions -----------------------------------------------------------
@pytest.mark.parametrize("defn", m.DEFINITIONS, ids=lambda d: d.name)
def test_definition_follows_prometheus_conventions(defn: m.MetricDef) -> None:
    assert re.fullmatch(r"xinhe_[a-z][a-z0-9_]*", defn.name)
    assert defn.help[:1].isupper() or defn.help[:1].isdigit(), "help text is a sentence"
    assert defn.help.endswith(".")
    assert defn.name.endswith("_total") == (defn.kind is m.Kind.COUNTER)
    assert not FORBIDDEN_LABELS & set(defn.labels), "unbounded or reserved label"
    assert len(set(defn.labels)) == len(defn.labels)
    if defn.kind is m.Kind.HISTOGRAM:
        assert defn.buckets and list(defn.buckets) == sorted(set(defn.buckets))
        assert defn.name.endswith(("_seconds", "_placements"))
    else:
        assert not defn.buckets


def test_names_are_unique_and_units_are_base_units() -> None:
    names = [d.name for d in m.DEFINITIONS]
    assert len(names) == len(set(names))
    for name in names:
        assert not re.search(r"_(milliseconds|ms|kilobytes|megabytes|percent)\b", name), name
    timed = [n for n in names if re.search(r"_(duration|wait|age)_", n)]
    assert timed and all(n.endswith(("_seconds", "_seconds_total")) for n in timed)
    assert any(n.endswith(UNIT_SUFFIXES) for n in names)


def test_buckets_fit_seconds_to_days() -> None:
    wait = m.get("xinhe_job_queue_wait_seconds").buckets
    run = m.get("xinhe_job_run_duration_seconds").buckets
    assert wait[0] <= 0.1 and wait[-1] >= 7 * 86400
    assert run[0] <= 1 and run[-1] >= 14 * 86400


def test_unknown_metric_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match=r"xinhe_nope.*not defined"):
        m.get("xinhe_nope")


def test_split_method() -> None:
    assert split_method("/xinhe.v1.JobService/Submit") == ("xinhe.v1.JobService", "Submit")
    assert split_method("garbage") == ("unknown", "garbage")


# -- the store wrapper, over a real SQLite store ----------------------------
def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def store(tmp_path: Path) -> InstrumentedStore:
    inner = SqliteStore(tmp_path / "x.db")
    wrapped = InstrumentedStore(inner, ControlPlaneMetrics())
    yield wrapped
    wrapped.close()


def new_job(job_id: str, tenant: str = "lab-a", families: tuple[str, ...] = ()) -> J.Job:
    spec = J.JobSpec(name=job_id, queue=f"{tenant}/default", command=["true"])
    spec.resources.accelerators = 1
    spec.resources.families.extend(families)
    return J.Job(id=job_id, tenant=tenant, spec=spec, state=J.JOB_STATE_QUEUED, attempt=1)


def placed(job_id: str, family: str = "ascend") -> Transition:
    placement = J.Placement(pool="p", region="west", family=family, model="910B")
    placement.replicas.add(rank=0, node="n0", device_indices=[0, 1])
    return Transition(job_id=job_id, to_state=states.SCHEDULED, kind="placed",
                      expect_states=frozenset({states.QUEUED}),
                      updates=J.Job(placement=placement), new_epoch=True)


def to(job_id: str, state: int, kind: str, **extra: object) -> Transition:
    return Transition(job_id=job_id, to_state=state, kind=kind, **extra)  # type: ignore[arg-type]


def test_wrapper_implements_the_whole_store_interface(store: InstrumentedStore) -> None:
    assert isinstance(store, Store)
    assert set(Store.__abstractmethods__) | {"close"} > READS
    for name in Store.__abstractmethods__:
        assert callable(getattr(store, name))
    assert store.path.endswith("x.db"), "implementation extras stay reachable"


def test_job_lifecycle_is_counted_once_committed(store: InstrumentedStore) -> None:
    reg = store.metrics.registry
    store.create_job(new_job("j-1", families=("ascend",)), now=100.0)
    store.create_job(new_job("j-2", tenant="acme"), now=100.0)
    assert value(reg, "xinhe_jobs_submitted_total", tenant="lab-a") == 1
    store.apply([placed("j-1")], now=112.5)
    assert value(reg, "xinhe_job_queue_wait_seconds_count", tenant="lab-a", family="ascend") == 1
    assert value(reg, "xinhe_job_queue_wait_seconds_sum", tenant="lab-a",
                 family="ascend") == pytest.approx(12.5)
    store.apply([to("j-1", states.STARTING, "started"), to("j-1", states.RUNNING, "running")],
                now=113.0)
    store.apply([to("j-1", states.SUCCEEDED, "succeeded")], now=173.0)
    assert value(reg, "xinhe_jobs_succeeded_total", tenant="lab-a", family="ascend") == 1
    assert value(reg, "xinhe_job_run_duration_seconds_sum", state="SUCCEEDED", tenant="lab-a",
                 family="ascend") == pytest.approx(60.0)
    store.apply([to("j-2", states.CANCELLED, "cancelled")], now=200.0)
    assert value(reg, "xinhe_jobs_cancelled_total", tenant="acme", family="any") == 1
    assert value(reg, "xinhe_store_write_duration_seconds_count", operation="apply") == 4
    assert value(reg, "xinhe_store_write_duration_seconds_count", operation="create_job") == 2


def test_idempotent_repeat_and_lost_guard_count_nothing(store: InstrumentedStore) -> None:
    reg = store.metrics.registry
    job = new_job("j-1")
    job.client_key = "k"
    store.create_job(job, now=1.0)
    again = new_job("j-other")
    again.client_key = "k"
    assert store.create_job(again, now=2.0)[1] is False
    assert value(reg, "xinhe_jobs_submitted_total", tenant="lab-a") == 1
    store.apply([placed("j-1")], now=3.0)
    with pytest.raises(ConflictError):
        store.apply([placed("j-1")], now=4.0)  # no longer QUEUED
    assert value(reg, "xinhe_job_queue_wait_seconds_count", tenant="lab-a", family="ascend") == 1
    assert value(reg, "xinhe_store_errors_total", operation="apply", error="ConflictError") == 0


def test_retry_measures_the_second_wait_from_the_requeue(store: InstrumentedStore) -> None:
    reg = store.metrics.registry
    store.create_job(new_job("j-1"), now=0.0)
    store.apply([placed("j-1")], now=10.0)
    store.apply([to("j-1", states.QUEUED, "retrying", increment_attempt=True,
                    clear_placement=True)], now=50.0)
    # Requeued, the job is unplaced again: it counts under the family it asks for.
    assert value(reg, "xinhe_jobs_retried_total", tenant="lab-a", family="any") == 1
    store.apply([placed("j-1")], now=53.0)
    assert value(reg, "xinhe_job_queue_wait_seconds_sum", tenant="lab-a",
                 family="ascend") == pytest.approx(10.0 + 3.0)


def test_store_failures_are_counted_by_operation(store: InstrumentedStore) -> None:
    store.inner.close()
    with pytest.raises(StoreError):
        store.create_job(new_job("j-1"), now=1.0)
    errors = next(s for s in store.metrics.registry.collect() if s.name == "xinhe_store_errors")
    assert [(s.labels["operation"], s.value) for s in errors.samples
            if s.name.endswith("_total")] == [("create_job", 1.0)]


# -- rounds and families -----------------------------------------------------
def test_rounds_with_an_empty_queue_are_not_observed() -> None:
    metrics = ControlPlaneMetrics()
    metrics.round_finished(RoundResult(pending=0, placed=0, seconds=0.0001))
    metrics.round_finished(RoundResult(pending=5, placed=3, seconds=0.02))
    metrics.round_finished(RoundResult(pending=2, placed=0, seconds=0.01))
    reg = metrics.registry
    assert value(reg, "xinhe_scheduler_round_duration_seconds_count") == 2
    assert value(reg, "xinhe_scheduler_placements_total") == 3
    assert value(reg, "xinhe_scheduler_round_placements_bucket", le="0.0") == 1


def test_job_family_label_is_bounded() -> None:
    assert job_family(new_job("a", families=("nvidia",))) == "nvidia"
    assert job_family(new_job("b", families=("nvidia", "ascend"))) == "any"
    job = new_job("c")
    job.placement.family = "cambricon"
    assert job_family(job) == "cambricon"


def test_a_batch_of_submissions_counts_each_created_job(store: InstrumentedStore) -> None:
    reg = store.metrics.registry
    first = new_job("j-1")
    first.client_key = "k"
    again = new_job("j-2")
    again.client_key = "k"  # same key in the same batch: one job
    results = store.create_jobs([first, again, new_job("j-3", tenant="acme")], now=1.0)
    assert [created for _, created in results] == [True, False, True]
    assert value(reg, "xinhe_jobs_submitted_total", tenant="lab-a") == 1
    assert value(reg, "xinhe_jobs_submitted_total", tenant="acme") == 1
