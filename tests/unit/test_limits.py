"""Limits: per-tenant submission rate, per-job log rate, batched log writes.

Clocks are injected; nothing here waits on wall-clock time except the
batcher's own flusher thread, which is polled with a deadline.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from controlplane.api.errors import InvalidArgument, ResourceExhausted, status_of
from controlplane.model.catalogue import load_catalogue
from controlplane.services.context import Context
from controlplane.services.fleet import Fleet
from controlplane.services.jobs import JobService
from controlplane.services.limits import (
    LogBatcher,
    LogRateLimiter,
    SubmissionLimiter,
    TokenBucket,
)
from controlplane.settings import ServerSettings
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import agent_pb2, common_pb2


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def chunk(job: str, n: int, rank: int = 0) -> common_pb2.LogChunk:
    return common_pb2.LogChunk(job_id=job, attempt=1, rank=rank, data=b"x" * n)


# -- token bucket ---------------------------------------------------------------
def test_bucket_grants_burst_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # one token takes 1/rate
    assert bucket.take(0.1) == 0.0
    assert bucket.take(10.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at burst


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (5, 0)])
def test_bucket_refuses_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


# -- submissions ----------------------------------------------------------------
def test_tenant_over_its_rate_gets_resource_exhausted_with_retry_hint() -> None:
    clock = Clock()
    limiter = SubmissionLimiter(rate=100, burst=5, clock=clock)
    for _ in range(5):
        limiter.admit("lab-a")
    with pytest.raises(ResourceExhausted) as err:
        limiter.admit("lab-a")
    code, message = status_of(err.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant lab-a exceeds 100/s" in message and "retry after 0.010s" in message
    limiter.admit("lab-b")  # another tenant is not affected
    clock.now += 0.011
    limiter.admit("lab-a")


def test_rate_zero_means_unlimited() -> None:
    limiter = SubmissionLimiter(rate=0, burst=0, clock=Clock())
    for _ in range(10_000):
        limiter.admit("lab-a")


def test_concurrent_submitters_never_exceed_the_burst() -> None:
    """A race between threads cannot admit more than the bucket holds."""
    limiter = SubmissionLimiter(rate=1, burst=50, clock=Clock())  # frozen clock: no refill
    admitted = []

    def hammer() -> None:
        for _ in range(100):
            try:
                limiter.admit("lab-a")
                admitted.append(1)
            except ResourceExhausted:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 50


def test_submit_service_applies_the_tenant_limit(tmp_path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "x.db")
    settings = ServerSettings(submit_rate_per_tenant=1, submit_burst_per_tenant=2)
    ctx = Context(store=store, fleet=Fleet(store, clock()), catalogue=load_catalogue(),
                  settings=settings, clock=clock)
    jobs = JobService(ctx)
    spec = common_pb2.JobSpec(name="a", queue="lab-a/default", command=["true"], replicas=1)
    spec.resources.accelerators = 1
    jobs.submit(spec, "k1")
    jobs.submit(spec, "k2")
    with pytest.raises(ResourceExhausted):
        jobs.submit(spec, "k3")
    assert store.find_job_by_key("lab-a", "k3") is None  # refused before the store
    clock.now += 1.0
    assert jobs.submit(spec, "k3")[1] is True
    store.close()


# -- log rate -------------------------------------------------------------------
def test_log_rate_drops_excess_and_marks_it_once_per_window() -> None:
    limiter = LogRateLimiter(bytes_per_s=100)
    kept = limiter.admit([chunk("j1", 60), chunk("j1", 30), chunk("j1", 50), chunk("j1", 20),
                          chunk("j2", 100)], now=0.0)
    assert [(c.job_id, len(c.data)) for c in kept] == [("j1", 60), ("j1", 30), ("j2", 100)]
    assert limiter.dropped_bytes == 70
    assert limiter.expire(0.5) == []  # the window is still open
    markers = limiter.expire(1.0)
    assert [m.data.decode() for m in markers] == [
        "[xinhe: 70 bytes of output dropped: log rate limit]\n"]
    assert (markers[0].job_id, markers[0].attempt) == ("j1", 1)
    assert limiter.expire(2.0) == []  # once per window
    assert len(limiter.admit([chunk("j1", 100)], now=2.0)) == 1  # a new window's budget


def test_log_rate_zero_keeps_everything() -> None:
    limiter = LogRateLimiter(0)
    assert len(limiter.admit([chunk("j", 10**6)] * 3, now=0.0)) == 3


# -- batching -------------------------------------------------------------------
def test_batcher_writes_many_chunks_in_few_transactions(tmp_path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    writes: list[int] = []
    flushed = threading.Event()

    def write(chunks: list, now: float) -> None:
        writes.append(len(chunks))
        store.append_logs(chunks, now)

    batcher = LogBatcher(write, LogRateLimiter(0), Clock(), on_flush=flushed.set,
                         interval_s=0.05, max_chunks=1000)
    batcher.add([chunk("j1", 5, rank=r) for r in range(300)])
    assert flushed.wait(30), "the flusher thread never wrote"
    deadline = time.monotonic() + 30
    while sum(writes) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(writes) == 300 and len(writes) <= 3
    assert len(store.logs("j1")) == 300
    batcher.close()
    store.close()


def test_batcher_close_writes_what_is_left_and_markers(tmp_path) -> None:
    clock = Clock(0.0)
    store = SqliteStore(tmp_path / "x.db")
    batcher = LogBatcher(store.append_logs, LogRateLimiter(10), clock, interval_s=3600)
    batcher.add([chunk("j1", 10), chunk("j1", 7)])
    clock.now = 1.5
    batcher.close()
    data = [c.data for c in store.logs("j1")]
    assert data == [b"x" * 10, b"[xinhe: 7 bytes of output dropped: log rate limit]\n"]
    store.close()


def test_batcher_survives_a_failing_store() -> None:
    def broken(chunks: list, now: float) -> None:
        raise OSError("disk gone")

    batcher = LogBatcher(broken, LogRateLimiter(0), Clock(), interval_s=3600)
    batcher.add([chunk("j1", 1)])
    assert batcher.flush() == 0
    batcher.close()


# -- can-ever-fit cache -----------------------------------------------------------
def _service(tmp_path) -> tuple[JobService, SqliteStore]:
    clock = Clock()
    store = SqliteStore(tmp_path / "x.db")
    ctx = Context(store=store, fleet=Fleet(store, clock()), catalogue=load_catalogue(),
                  settings=ServerSettings(), clock=clock)
    return JobService(ctx), store


def _register(jobs: JobService, devices: int) -> None:
    req = agent_pb2.RegisterRequest(node_name="n1", pool="p", region="r",
                                    protocol_version=agent_pb2.PROTOCOL_VERSION_1)
    for i in range(devices):
        req.devices.add(index=i, family="nvidia", model="H100", memory_bytes=80 * 2**30,
                        healthy=True)
    jobs.ctx.fleet.register(req, jobs.ctx.clock())


def test_can_ever_fit_runs_the_core_once_per_shape_until_the_fleet_changes(
        tmp_path, monkeypatch) -> None:
    jobs, store = _service(tmp_path)
    _register(jobs, 2)
    calls = []
    real = jobs._never_fits
    monkeypatch.setattr(jobs, "_never_fits", lambda job, nodes: calls.append(1) or real(
        job, nodes))
    spec = common_pb2.JobSpec(name="a", queue="lab-a/default", command=["true"], replicas=1)
    spec.resources.accelerators = 1
    for i in range(5):
        jobs.submit(spec, f"k{i}")
    assert len(calls) == 1
    big = common_pb2.JobSpec()
    big.CopyFrom(spec)
    big.resources.accelerators = 4
    for _ in range(2):  # a refusal is cached too
        with pytest.raises(InvalidArgument, match="can never be placed"):
            jobs.submit(big, "")
    assert len(calls) == 2
    _register(jobs, 4)  # the node now has 4 devices: the verdict is recomputed
    assert jobs.submit(big, "")[1] is True
    assert len(calls) == 3
    store.close()


def test_an_open_server_rechecks_for_a_first_token_at_most_once_a_second() -> None:
    from controlplane.services.auth import OPEN_RECHECK_S, Authenticator

    class Tokens:
        exist, asked = False, 0

        def tokens_exist(self) -> bool:
            self.asked += 1
            return self.exist

    now = [100.0]
    tokens = Tokens()
    auth = Authenticator(tokens, "", lambda: now[0])  # type: ignore[arg-type]
    assert not auth.required() and not auth.required()
    assert tokens.asked == 1
    tokens.exist = True
    assert not auth.required()  # still within the recheck delay
    now[0] += OPEN_RECHECK_S
    assert auth.required() and auth.required()
    assert tokens.asked == 2  # closed for good: never asked again
