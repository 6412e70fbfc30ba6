"""The cyclic garbage collector, paused while a host runs a round.

A round at fleet scale allocates a few hundred thousand objects (candidate
estimates, wait decisions) that all live until it returns, on top of a
snapshot and queue of similar size. CPython's cyclic collector, triggered
by those allocations, rescans all of them again and again: about half of a
10 000-node / 100 000-job round (``xinhe bench scheduler``). The core makes
no reference cycles it needs collected, so reference counting frees what a
round drops either way; pausing the collector for the round only moves its
next pass to after the round. Process-wide, so the pause is counted: with
rounds on several threads it ends when the last one does, and a collector
someone else disabled stays disabled.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_resume = False  # whether the outermost pause found the collector enabled


@contextmanager
def collector_paused() -> Iterator[None]:
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
