"""Learned throughput survives restarts: the rates of ``ThroughputTable`` are
written to the store in batches and loaded at start.

Agents report progress every few seconds per job; writing each report would
cost a transaction (an fsync on SQLite) per report. Instead the controller's
loop calls :meth:`ThroughputPersistence.maybe_flush` every round and the
rates changed since the last write go in one transaction at most every
``interval_s``. A crash loses at most that interval of learning, which the
running jobs report again. The same pass drops the per-job progress of jobs
that are no longer active. A new leader loads the table in
``Controller.rebuild`` (another leader may have learned since).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container

from controlplane.services.throughput import ThroughputTable
from controlplane.store.base import Store

log = logging.getLogger(__name__)

# Seconds between writes of changed rates (and between prunes of ended jobs).
PERSIST_INTERVAL_S = 5.0


class ThroughputPersistence:
    """Loads and saves one table through one store. ``live_jobs`` returns the
    ids of jobs whose progress is still worth keeping (those not ended), as
    any container (``in`` is all that is asked of it)."""

    def __init__(self, table: ThroughputTable, store: Store,
                 live_jobs: Callable[[], Container[str]],
                 interval_s: float = PERSIST_INTERVAL_S) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.table, self.store, self.live_jobs = table, store, live_jobs
        self.interval_s = interval_s
        self._last: float | None = None

    def load(self) -> int:
        """Replace the table's rates with the stored ones; returns how many."""
        records = self.store.load_throughput()
        self.table.restore(records)
        if records:
            log.info("loaded %d learned throughput rate(s)", len(records))
        return len(records)

    def maybe_flush(self, now: float) -> int:
        """:meth:`flush` when ``interval_s`` has passed since the last one
        (``now`` from any monotonic or wall clock, consistently); else 0."""
        if self._last is not None and now - self._last < self.interval_s:
            return 0
        self._last = now
        return self.flush()

    def flush(self) -> int:
        """Write the changed rates in one transaction (deleting the types the
        table's cap dropped) and forget the progress of ended jobs; returns
        the rates written. On a store failure the
        rates stay marked as changed (retried next time) and it propagates."""
        forgotten = self.table.take_forgotten()  # before the changes: none lost between
        records = self.table.take_changed()
        try:
            self.store.save_throughput(records, forgotten)
        except Exception:
            self.table.mark_changed(records)
            self.table.mark_forgotten(forgotten)
            raise
        self.table.retain_jobs(self.live_jobs())
        return len(records)
