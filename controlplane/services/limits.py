"""Admission limits: per-tenant submission rate, per-job log rate, and the
batching of log writes.

Why here and not in the store: a limit protects the control plane before any
work is done (a flood of submissions from one tenant must not starve the
others, a job printing gigabytes must not fill the database). The clock is
always an argument, so every limit is tested without waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from controlplane.api.errors import ResourceExhausted
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)

# Buckets kept before idle (full) ones are forgotten: bounds memory against a
# stream of invented tenant names.
MAX_TRACKED = 10_000
DROP_MARKER = "[xinhe: {n} bytes of output dropped: log rate limit]\n"


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; starts full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens: 0.0 when granted, else the seconds until they
        would be (nothing is taken then)."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class SubmissionLimiter:
    """Per-tenant token buckets over submissions. ``rate`` 0 turns it off.

    ``admit`` raises ResourceExhausted naming the tenant, the rate and when
    to retry; clients back off and resubmit with the same client key.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("submission rate and burst must be >= 0")
        self.rate, self.burst = rate, max(burst, 1.0)
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def admit(self, tenant: str) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                self._forget_idle(now)
                bucket = self._buckets[tenant] = TokenBucket(self.rate, self.burst, now)
            wait = bucket.take(now)
        if wait > 0:
            raise ResourceExhausted(
                f"submission rate for tenant {tenant} exceeds {self.rate:g}/s "
                f"(burst {self.burst:g}); retry after {wait:.3f}s")

    def admit_counts(self, counts: Mapping[str, int]) -> None:
        """Admit ``counts[tenant]`` submissions of each tenant at once (a
        batch call): every tenant's tokens are taken, or none and
        ResourceExhausted names the first tenant short of them."""
        if self.rate <= 0:
            return
        now = self.clock()
        taken: list[tuple[TokenBucket, int]] = []
        with self._lock:
            for tenant, n in counts.items():
                bucket = self._buckets.get(tenant)
                if bucket is None:
                    self._forget_idle(now)
                    bucket = self._buckets[tenant] = TokenBucket(self.rate, self.burst, now)
                wait = bucket.take(now, n) if n <= self.burst else float("inf")
                if wait > 0:
                    for earlier, m in taken:  # all or nothing
                        earlier.tokens += m
                    break
                taken.append((bucket, n))
            else:
                return
        if n > self.burst:
            raise ResourceExhausted(
                f"{n} submissions for tenant {tenant} in one call exceed its burst "
                f"{self.burst:g}; send smaller batches")
        raise ResourceExhausted(
            f"submission rate for tenant {tenant} exceeds {self.rate:g}/s "
            f"(burst {self.burst:g}; {n} in this call); retry after {wait:.3f}s")

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) >= MAX_TRACKED:
            for name in [t for t, b in self._buckets.items() if b.full(now)]:
                del self._buckets[name]


@dataclass
class _Window:
    start: float
    used: int = 0
    dropped: int = 0
    sample: common_pb2.LogChunk | None = None  # a dropped chunk, to address the marker


class LogRateLimiter:
    """At most ``bytes_per_s`` of output per job per one-second window.

    Excess chunks are dropped whole; when a window with drops closes, one
    marker chunk "[xinhe: N bytes of output dropped: log rate limit]" is
    emitted in their place, so a reader sees that output is missing and how
    much. ``bytes_per_s`` 0 turns it off. Not thread-safe: the LogBatcher
    serialises calls.
    """

    def __init__(self, bytes_per_s: int) -> None:
        if bytes_per_s < 0:
            raise ValueError("log rate must be >= 0")
        self.bytes_per_s = bytes_per_s
        self.dropped_bytes = 0  # total, for metrics and tests
        self._windows: dict[str, _Window] = {}

    def admit(self, chunks: Sequence[common_pb2.LogChunk],
              now: float) -> list[common_pb2.LogChunk]:
        """The chunks to store, markers of closed windows first."""
        if self.bytes_per_s <= 0:
            return list(chunks)
        out = self.expire(now)
        for chunk in chunks:
            window = self._windows.setdefault(chunk.job_id, _Window(now))
            if window.used + len(chunk.data) <= self.bytes_per_s:
                window.used += len(chunk.data)
                out.append(chunk)
            else:
                window.dropped += len(chunk.data)
                window.sample = window.sample or chunk
                self.dropped_bytes += len(chunk.data)
        return out

    def expire(self, now: float) -> list[common_pb2.LogChunk]:
        """Close windows older than a second; markers for those with drops."""
        markers = []
        for job_id in [j for j, w in self._windows.items() if now - w.start >= 1.0]:
            window = self._windows.pop(job_id)
            if window.dropped and window.sample is not None:
                markers.append(self._marker(window))
        return markers

    @staticmethod
    def _marker(window: _Window) -> common_pb2.LogChunk:
        s = window.sample
        return common_pb2.LogChunk(job_id=s.job_id, attempt=s.attempt, rank=s.rank,
                                   stream=s.stream,
                                   data=DROP_MARKER.format(n=window.dropped).encode())


class LogBatcher:
    """Buffers agents' log chunks and writes them in one transaction every
    ``interval_s`` or every ``max_chunks`` chunks, so a chatty job costs one
    fsync per batch instead of one per chunk. Logs are not acknowledged to
    agents, so a crash loses at most one interval of output.

    ``write(chunks, now)`` is the store's append; ``on_flush`` wakes log
    followers. The flusher thread starts with the first chunk.
    """

    def __init__(self, write: Callable[[list[common_pb2.LogChunk], float], None],
                 limiter: LogRateLimiter, clock: Callable[[], float],
                 on_flush: Callable[[], None] = lambda: None,
                 interval_s: float = 0.1, max_chunks: int = 256) -> None:
        self.write, self.limiter, self.clock = write, limiter, clock
        self.on_flush, self.interval_s, self.max_chunks = on_flush, interval_s, max_chunks
        self._pending: list[common_pb2.LogChunk] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, chunks: Sequence[common_pb2.LogChunk]) -> None:
        with self._lock:
            self._pending.extend(self.limiter.admit(chunks, self.clock()))
            full = len(self._pending) >= self.max_chunks
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="log-batcher",
                                                daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write what is buffered now (and markers of closed windows);
        returns the number of chunks written."""
        with self._write_lock:
            with self._lock:
                batch = self._pending + self.limiter.expire(self.clock())
                self._pending = []
            if not batch:
                return 0
            try:
                self.write(batch, self.clock())
            except Exception:  # the store is down: logs are best effort
                log.exception("dropping %d log chunk(s): store write failed", len(batch))
                return 0
        self.on_flush()
        return len(batch)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
