"""Group commit for submissions: concurrent SubmitJob calls share one store
transaction (one fsync) instead of queueing for the store one by one.

No background thread: the first caller to find no commit in progress becomes
the leader and commits everything queued so far (its own job included) with
``Store.create_jobs``; callers arriving meanwhile queue up and form the next
batch, committed by the next leader. Batches therefore grow with the load by
themselves, and a lone submission commits at once (no added latency).

Contract per caller: ``create(job)`` returns exactly what
``store.create_job(job, now)`` would have (idempotency on (tenant,
client_key) included, also for a key repeated inside one batch), or raises
that call's error. A batch the store refuses as a whole (e.g. a duplicate job
id) is retried job by job, so one bad job fails only its own caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.store.base import Store
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)

# Most jobs in one transaction: bounds a transaction's time (and so the wait
# of the callers queued behind it).
MAX_BATCH = 256


@dataclass
class _Entry:
    job: common_pb2.Job
    result: tuple[common_pb2.Job, bool] | None = None
    error: BaseException | None = None
    done: bool = False
    # Set when the entry is done or its caller is handed the leadership:
    # one event per caller, so a commit wakes only the callers it settled.
    wake: threading.Event = field(default_factory=threading.Event)

    def outcome(self) -> tuple[common_pb2.Job, bool]:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class SubmitBatcher:
    """Creates jobs in the store, batching concurrent callers (see module)."""

    def __init__(self, store: Store, clock: Callable[[], float],
                 max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.store = store
        self.clock = clock
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queued: list[_Entry] = []
        self._committing = False
        # Sizes of the batches committed (observability, tests).
        self.batches = 0
        self.largest_batch = 0

    def create(self, job: common_pb2.Job) -> tuple[common_pb2.Job, bool]:
        """``store.create_job(job, clock())``, committed with whatever other
        submissions are queued at the same time."""
        entry = _Entry(job)
        with self._lock:
            self._queued.append(entry)
            lead, self._committing = not self._committing, True
        if not lead:
            entry.wake.wait()
        if not entry.done:  # handed the leadership
            self._lead(entry)
        return entry.outcome()

    def _lead(self, own: _Entry) -> None:
        """Commit batches until ``own`` is settled, then hand the leadership
        to the oldest queued caller (so no caller leads for ever)."""
        try:
            while not own.done:
                with self._lock:
                    batch = self._queued[:self.max_batch]
                    del self._queued[:self.max_batch]
                self._commit(batch)
        finally:
            with self._lock:
                if self._queued:
                    self._queued[0].wake.set()
                else:
                    self._committing = False

    def _commit(self, batch: list[_Entry]) -> None:
        """Commit ``batch`` and settle every entry of it, whatever happens."""
        try:
            now = self.clock()
            if len(batch) == 1:
                batch[0].result = self.store.create_job(batch[0].job, now)
            else:
                results = self.store.create_jobs([e.job for e in batch], now)
                for entry, result in zip(batch, results, strict=True):
                    entry.result = result
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.info("batch of %d submissions refused (%s); retrying one by one",
                         len(batch), exc)
                self._commit_each(batch)
        finally:
            for entry in batch:
                if entry.result is None and entry.error is None:
                    entry.error = RuntimeError("submission was not committed")
                entry.done = True
                entry.wake.set()
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))

    def _commit_each(self, batch: list[_Entry]) -> None:
        for entry in batch:
            try:
                entry.result = self.store.create_job(entry.job, self.clock())
            except Exception as exc:
                entry.error = exc
