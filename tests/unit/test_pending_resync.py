"""A resync of the in-memory queue reads the store without blocking the
submissions that observe into the queue, and loses none of their changes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from controlplane.model.catalogue import default_catalogue
from controlplane.services.pending import PendingQueue
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import common_pb2

J = common_pb2


class SlowReadStore(SqliteStore):
    """Holds a resync's read open (after reading) until released."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reading, self.release = threading.Event(), threading.Event()

    def jobs_in_states(self, wanted: Iterable[int]) -> list[common_pb2.Job]:
        jobs = super().jobs_in_states(wanted)
        self.reading.set()
        assert self.release.wait(10)
        return jobs


def job(job_id: str, state: int = J.JOB_STATE_QUEUED) -> common_pb2.Job:
    spec = J.JobSpec(name=job_id, queue="lab-a/default", command=["true"], replicas=1)
    spec.resources.accelerators = 1
    return J.Job(id=job_id, tenant="lab-a", spec=spec, state=state, attempt=1)


def test_changes_observed_during_a_resync_survive_it_without_waiting(tmp_path: Path) -> None:
    store = SlowReadStore(tmp_path / "x.db")
    store.create_jobs([job("j-old"), job("j-gone")], 1.0)
    queue = PendingQueue(default_catalogue())
    resync = threading.Thread(target=queue.resync, args=(store,))
    resync.start()
    assert store.reading.wait(10)
    # Committed after the read: a new job, and j-gone cancelled.
    observer = threading.Thread(target=queue.observe, args=(
        [job("j-new"), job("j-gone", J.JOB_STATE_CANCELLED)],))
    observer.start()
    observer.join(5)
    assert not observer.is_alive(), "observe() waited for the resync's store read"
    store.release.set()
    resync.join(10)
    assert sorted(p.job_id for p in queue.pending()) == ["j-new", "j-old"]
    orders = {p.job_id: p.order for p in queue.pending()}
    assert orders["j-old"] < orders["j-new"]  # the new job ranks after the store's
    store.close()
