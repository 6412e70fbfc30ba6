"""Acknowledging agents' log chunks once they are durable.

Agents hold every chunk of replica output until it is acknowledged and
resend what is unacknowledged after a reconnect (agents/log_outbox.py). The
control plane acknowledges a chunk only after the transaction that stored it
committed (or when the rate limiter dropped it on purpose: resending it
would not help), so a chunk in flight when the control plane dies is resent
and stored by the next one; the store ignores copies (one row per offset).

When a log write fails (store unavailable), the sessions that sent the batch
are closed: their agents reconnect, which both surfaces the outage
(Register answers UNAVAILABLE while the store is down) and resends the
chunks that were lost with the failed batch.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence

from controlplane.services.fleet import AgentSession
from controlplane.services.limits import LogRateLimiter
from xinhe.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

StreamKey = tuple[str, int, int, int]  # job_id, attempt, rank, LogStream
# Replica streams whose sender is remembered; the least recently active are
# forgotten first (their unacknowledged chunks are resent and deduplicated).
MAX_STREAMS = 65536


def _stream_key(chunk: common_pb2.LogChunk) -> StreamKey:
    return (chunk.job_id, chunk.attempt, chunk.rank, chunk.stream)


class LogAcks:
    """Remembers which session sent each replica stream and acknowledges
    chunks to it once written. Thread-safe."""

    def __init__(self, write: Callable[[Sequence[common_pb2.LogChunk], float], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._senders: OrderedDict[StreamKey, AgentSession] = OrderedDict()

    def received(self, session: AgentSession, chunk: common_pb2.LogChunk) -> None:
        """Note the session a numbered chunk came on (acks go back there)."""
        if chunk.HasField("offset"):
            key = _stream_key(chunk)
            with self._lock:
                self._senders[key] = session
                self._senders.move_to_end(key)
                if len(self._senders) > MAX_STREAMS:
                    self._senders.popitem(last=False)

    def write(self, batch: Sequence[common_pb2.LogChunk], now: float) -> None:
        """The LogBatcher's write: store, then acknowledge; on failure close
        the sending sessions (see module doc) and re-raise."""
        try:
            self._write(batch, now)
        except Exception:
            for session in self._sessions(batch):
                session.close()
            raise
        self.acknowledge(batch)

    def acknowledge(self, chunks: Sequence[common_pb2.LogChunk]) -> None:
        """Send each sender one Ack naming the offsets of its chunks here."""
        per_session: dict[int, tuple[AgentSession, dict[StreamKey, list[int]]]] = {}
        with self._lock:
            for chunk in chunks:
                if not chunk.HasField("offset"):
                    continue
                key = _stream_key(chunk)
                session = self._senders.get(key)
                if session is None:
                    continue
                if session.closed:
                    self._senders.pop(key, None)
                    continue
                _, streams = per_session.setdefault(id(session), (session, defaultdict(list)))
                streams[key].append(chunk.offset)
        for session, streams in per_session.values():
            acks = [agent_pb2.LogAck(job_id=k[0], attempt=k[1], rank=k[2], stream=k[3],
                                     offsets=offsets) for k, offsets in streams.items()]
            session.send(agent_pb2.ControlMessage(ack=agent_pb2.Ack(logs=acks)))

    def _sessions(self, chunks: Sequence[common_pb2.LogChunk]) -> list[AgentSession]:
        with self._lock:
            found = {id(s): s for c in chunks if (s := self._senders.get(_stream_key(c)))}
        return list(found.values())


class AckingRateLimiter(LogRateLimiter):
    """The log rate limiter, acknowledging the chunks it drops: they were
    handled (a marker records the loss), so the agent must not resend them."""

    def __init__(self, bytes_per_s: int, on_drop: Callable[[list[common_pb2.LogChunk]], None]
                 ) -> None:
        super().__init__(bytes_per_s)
        self._on_drop = on_drop

    def admit(self, chunks: Sequence[common_pb2.LogChunk],
              now: float) -> list[common_pb2.LogChunk]:
        admitted = super().admit(chunks, now)
        if self.bytes_per_s > 0:
            kept = {id(c) for c in admitted}
            dropped = [c for c in chunks if id(c) not in kept]
            if dropped:
                self._on_drop(dropped)
        return admitted
