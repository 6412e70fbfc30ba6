"""Group commit: concurrent callers share one store transaction (one fsync)
instead of queueing for the store one by one.

Used for submissions (``submit_batch.py``) and agent replica reports
(``agents.py``). No background thread: the
first caller to find no commit in progress becomes the leader and commits
everything queued so far (its own item included) with one ``commit(items)``
call; callers arriving meanwhile queue up and form the next batch, committed
by the next leader. Batches therefore grow with the load by themselves, and
a lone item commits at once (no added latency).

Contract: ``commit(items)`` is all or nothing, returning one result per item
in order, or raising with nothing changed. ``submit(item)`` returns the
item's result only after the ``commit`` call that included it returned, so a
caller that acknowledges its item afterwards never acknowledges anything
uncommitted. A batch that fails is retried item by item (``commit([item])``),
so one bad item fails only its own caller, with that item's own error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

# Most items in one transaction: bounds a transaction's time (and so the
# wait of the callers queued behind it).
MAX_BATCH = 256

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Entry(Generic[Item, Result]):
    item: Item
    result: Result | None = None
    committed: bool = False  # ``result`` is the commit's answer
    error: BaseException | None = None
    done: bool = False
    # Set when the entry is settled or its caller is handed the leadership:
    # one event per caller, so a commit wakes only the callers it settled.
    wake: threading.Event = field(default_factory=threading.Event)

    def outcome(self) -> Result:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[Item, Result]):
    """Commits items with ``commit``, batching concurrent callers (see module)."""

    def __init__(self, commit: Callable[[Sequence[Item]], Sequence[Result]],
                 max_batch: int = MAX_BATCH, what: str = "items") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.commit = commit
        self.max_batch = max_batch
        self.what = what
        self._lock = threading.Lock()
        self._queued: list[_Entry[Item, Result]] = []
        self._committing = False
        # Batches committed and the largest (observability, tests).
        self.batches = 0
        self.largest_batch = 0

    def submit(self, item: Item) -> Result:
        """``commit([item])[0]``, committed with whatever other items are
        queued at the same time; raises that item's error."""
        entry: _Entry[Item, Result] = _Entry(item)
        with self._lock:
            self._queued.append(entry)
            lead, self._committing = not self._committing, True
        if not lead:
            entry.wake.wait()
        if not entry.done:  # handed the leadership
            self._lead(entry)
        return entry.outcome()

    def _lead(self, own: _Entry[Item, Result]) -> None:
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

    def _commit(self, batch: list[_Entry[Item, Result]]) -> None:
        """Commit ``batch`` and settle every entry of it, whatever happens."""
        try:
            results = list(self.commit([e.item for e in batch]))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.info("batch of %d %s refused (%s); retrying one by one",
                         len(batch), self.what, exc)
                self._commit_each(batch)
        else:
            if len(results) == len(batch):
                for entry, result in zip(batch, results, strict=True):
                    entry.result, entry.committed = result, True
            else:  # committed, but the answers cannot be matched: a bug, never retried
                for entry in batch:
                    entry.error = RuntimeError(f"commit of {len(batch)} {self.what} "
                                               f"returned {len(results)} results")
        finally:
            for entry in batch:
                if not entry.committed and entry.error is None:
                    entry.error = RuntimeError(f"{self.what} not committed")
                entry.done = True
                entry.wake.set()
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))

    def _commit_each(self, batch: list[_Entry[Item, Result]]) -> None:
        for entry in batch:
            try:
                [entry.result] = self.commit([entry.item])
                entry.committed = True
            except Exception as exc:
                entry.error = exc
