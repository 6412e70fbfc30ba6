"""Group commit of submissions: concurrent callers share a transaction, each
gets exactly what ``create_job`` would have given it (idempotency included,
also for a key repeated inside one batch), and one bad job fails only its
own caller. Real SQLite store; a gate holds the first commit open so the
other callers pile up behind it deterministically, whatever the speed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from controlplane.api.errors import InvalidArgument
from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.host import InlineHost
from controlplane.services.controller import Controller
from controlplane.services.submit_batch import SubmitBatcher
from controlplane.settings import ServerSettings
from controlplane.store.base import ConflictError
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import agent_pb2, common_pb2

T0 = 1000.0
GB = 10**9


class GatedStore(SqliteStore):
    """A real store whose commits wait for ``release`` (so callers queue
    behind the first) and which records each commit's batch size
    (SqliteStore.create_job is create_jobs of one)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def _gate(self, n: int) -> None:
        self.sizes.append(n)
        self.entered.set()
        assert self.release.wait(30)

    def create_jobs(self, jobs: Sequence[common_pb2.Job],
                    now: float) -> list[tuple[common_pb2.Job, bool]]:
        self._gate(len(jobs))
        return super().create_jobs(jobs, now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatedStore]:
    s = GatedStore(tmp_path / "x.db")
    yield s
    s.close()


def job(job_id: str, key: str = "") -> common_pb2.Job:
    spec = common_pb2.JobSpec(name=job_id, queue="lab-a/default", command=["true"], replicas=1)
    return common_pb2.Job(id=job_id, tenant="lab-a", client_key=key, spec=spec)


def run_concurrently(batcher: SubmitBatcher, store: GatedStore,
                     jobs: list[common_pb2.Job]) -> dict[str, object]:
    """Submit jobs[0] alone (it holds the gate), the rest while it is held;
    returns each input id's outcome (a (job, created) pair or the error)."""
    out: dict[str, object] = {}

    def call(j: common_pb2.Job) -> None:
        try:
            out[j.id] = batcher.create(j)
        except Exception as exc:
            out[j.id] = exc

    first = threading.Thread(target=call, args=(jobs[0],))
    first.start()
    assert store.entered.wait(30)
    rest = [threading.Thread(target=call, args=(j,)) for j in jobs[1:]]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 30
    while len(batcher._queued) < len(rest) and time.monotonic() < deadline:
        time.sleep(0.005)
    store.release.set()
    for t in (first, *rest):
        t.join(30)
    return out


def test_concurrent_submissions_share_one_transaction(store: GatedStore) -> None:
    batcher = SubmitBatcher(store, lambda: T0)
    jobs = [job(f"j-{i}") for i in range(12)]
    out = run_concurrently(batcher, store, jobs)
    assert store.sizes == [1, 11]  # the first alone, the 11 queued behind it together
    for j in jobs:
        stored, created = out[j.id]
        assert created and stored.id == j.id and stored == store.get_job(j.id)
    assert batcher.batches == 2 and batcher.largest_batch == 11


def test_a_key_repeated_inside_one_batch_creates_one_job(store: GatedStore) -> None:
    batcher = SubmitBatcher(store, lambda: T0)
    out = run_concurrently(batcher, store, [job("j-0"), *(job(f"j-{i}", key="same")
                                                         for i in range(1, 6))])
    results = [out[f"j-{i}"] for i in range(1, 6)]
    winners = [stored for stored, created in results if created]
    assert len(winners) == 1
    assert {stored.id for stored, _ in results} == {winners[0].id}
    assert store.find_job_by_key("lab-a", "same") == winners[0]
    assert store.count_jobs_by_state() == {common_pb2.JOB_STATE_QUEUED: 2}


def test_one_bad_job_fails_only_its_own_caller(store: GatedStore) -> None:
    store.release.set()
    SubmitBatcher(store, lambda: T0).create(job("j-taken"))
    store.release.clear()
    store.entered.clear()
    batcher = SubmitBatcher(store, lambda: T0)
    out = run_concurrently(batcher, store, [job("j-0"), job("j-1"), job("j-taken"), job("j-2")])
    assert isinstance(out["j-taken"], ConflictError)
    for ok in ("j-0", "j-1", "j-2"):
        assert out[ok][1] is True and store.get_job(ok) is not None


def test_a_lone_submission_commits_alone_and_matches_create_job(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "x.db") as store:
        batcher = SubmitBatcher(store, lambda: T0)
        stored, created = batcher.create(job("j-1", key="k"))
        again, created_again = batcher.create(job("j-2", key="k"))
        assert (created, created_again) == (True, False) and again == stored
        assert stored.created_at.seconds == int(T0) and batcher.largest_batch == 1


def test_max_batch_must_be_positive(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "x.db") as store, pytest.raises(ValueError, match="max_batch"):
        SubmitBatcher(store, lambda: T0, max_batch=0)


def test_many_callers_all_settled_exactly_once(tmp_path: Path) -> None:
    """Sustained concurrency with small batches exercises the hand-over of
    the leadership: every call returns its own job, none is lost or doubled."""
    with SqliteStore(tmp_path / "x.db") as store:
        batcher = SubmitBatcher(store, lambda: T0, max_batch=4)
        got: list[tuple[str, str, bool]] = []

        def worker(w: int) -> None:
            for i in range(25):
                key = f"k{w}-{i % 20}"  # the last 5 repeat earlier keys
                stored, created = batcher.create(job(f"j-{w}-{i}", key=key))
                got.append((key, stored.id, created))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(got) == 200 and sum(created for *_, created in got) == 160
        by_key = {}
        for key, job_id, _ in got:
            assert by_key.setdefault(key, job_id) == job_id
        assert store.count_jobs_by_state() == {common_pb2.JOB_STATE_QUEUED: 160}


def test_a_retry_gets_its_job_even_after_the_fleet_shrank(tmp_path: Path) -> None:
    """SubmitJob reads no key before committing; a retry the fit check would
    now refuse (the fleet changed) still gets the job it created."""
    with SqliteStore(tmp_path / "x.db") as store:
        controller = Controller(store, default_catalogue(), ServerSettings(), InlineHost())

        def register(devices: int) -> None:
            controller.agents.register(agent_pb2.RegisterRequest(
                protocol_version=agent_pb2.PROTOCOL_VERSION_1, node_name="n1", pool="p",
                region="r", address="127.0.0.1", cpu_millis=8000, memory_bytes=GB,
                devices=[common_pb2.Device(index=i, model="H100", family="nvidia",
                                           memory_bytes=80 * GB, healthy=True)
                         for i in range(devices)]))

        spec = common_pb2.JobSpec(name="t", queue="lab-a/default", command=["true"],
                                  replicas=1)
        spec.resources.accelerators = 2
        register(2)
        first, created = controller.jobs.submit(spec, "key-1")
        register(1)
        again, created_again = controller.jobs.submit(spec, "key-1")
        assert (created, created_again) == (True, False) and again == first
        with pytest.raises(InvalidArgument, match="can never be placed"):
            controller.jobs.submit(spec, "key-2")
