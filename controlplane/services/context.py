"""What every control-plane service shares: store, fleet, allocations,
catalogue, clock and the one lock that serialises job-state changes.

All job-state mutations (placement, agent reports, cancel, node loss) happen
under ``lock`` so the load -> compute -> apply steps of each cannot interleave.
Network sends happen after the lock is released, never inside a transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.model.catalogue import Catalogue
from controlplane.services.allocations import Allocations
from controlplane.services.fleet import Fleet
from controlplane.services.pending import PendingQueue
from controlplane.services.quiet_round import WaitMemo
from controlplane.services.throughput import ThroughputTable
from controlplane.settings import ServerSettings
from controlplane.store.base import Store


class Notifier:
    """Wakes stream watchers (WatchJob, StreamLogs) when something was written."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the generation passes ``seen`` or ``timeout``; returns it."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation


@dataclass
class Context:
    store: Store
    fleet: Fleet
    catalogue: Catalogue
    settings: ServerSettings
    clock: Callable[[], float] = time.time
    allocations: Allocations = field(default_factory=Allocations)
    lock: threading.RLock = field(default_factory=threading.RLock)
    notifier: Notifier = field(default_factory=Notifier)
    wake: threading.Event = field(default_factory=threading.Event)
    # Why each queued job waits, from the last scheduling round (ephemeral).
    wait_reasons: dict[str, str] = field(default_factory=dict)
    # The situation those reasons hold for, so a round that can place
    # nothing explains only new jobs (see ``quiet_round``).
    wait_memo: WaitMemo = field(default_factory=WaitMemo)
    # The QUEUED jobs kept in memory (set by the Controller, which also wraps
    # ``store`` to feed it); None = rounds read the queue from the store.
    pending: PendingQueue | None = None
    # Learned per-job-type speed and each job's latest progress (set by the
    # Controller; None = agents' progress reports are ignored).
    throughput: ThroughputTable | None = None
