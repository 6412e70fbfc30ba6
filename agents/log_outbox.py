"""The agent's log outbox: replica output delivered at least once.

Every chunk of a replica's output gets the byte offset of its first byte
within that replica's stream ``(job_id, attempt, rank, stream)`` and stays
here until the control plane acknowledges that offset (``Ack.logs``). A new
connection resends everything still held, in the order it was produced; the
control plane stores one chunk per offset, so copies of chunks it already had
(an ack lost with a killed control plane) are ignored, not stored twice.

Spill policy: memory only, bounded by ``max_bytes``. Past the bound the
oldest unacknowledged chunks are dropped (counted in ``dropped_bytes`` and
logged): an agent cut off for long keeps its newest output rather than its
oldest, and never grows without bound. A reader sees the gap as missing
offsets. Nothing goes to disk: an agent that dies loses what it held, as its
replicas' pipes die with it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from google.protobuf.timestamp_pb2 import Timestamp

from xinhe.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

StreamKey = tuple[str, int, int, int]  # job_id, attempt, rank, LogStream
ChunkKey = tuple[str, int, int, int, int]  # StreamKey + start offset


class LogOutbox:
    """Numbers output chunks and holds them until acknowledged. Thread-safe."""

    def __init__(self, max_bytes: int = 16 << 20) -> None:
        if max_bytes <= 0:
            raise ValueError("log outbox bound must be > 0 bytes")
        self.max_bytes = max_bytes
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._next_offset: dict[StreamKey, int] = {}
        self._held: OrderedDict[ChunkKey, common_pb2.LogChunk] = OrderedDict()
        self._bytes = 0

    def add(self, job_id: str, attempt: int, rank: int, stream: int, data: bytes,
            time: Timestamp) -> common_pb2.LogChunk:
        """The chunk for ``data``, numbered and held until acknowledged."""
        skey = (job_id, attempt, rank, stream)
        with self._lock:
            offset = self._next_offset.get(skey, 0)
            self._next_offset[skey] = offset + len(data)
            chunk = common_pb2.LogChunk(job_id=job_id, attempt=attempt, rank=rank,
                                        stream=stream, data=data, time=time, offset=offset)
            self._held[(*skey, offset)] = chunk
            self._bytes += len(data)
            self._spill()
        return chunk

    def seek(self, job_id: str, attempt: int, rank: int, stream: int, offset: int) -> None:
        """Number the stream's next chunk from ``offset``: a re-adopted replica's
        output resumes where its file position says, not at 0."""
        with self._lock:
            self._next_offset[(job_id, attempt, rank, stream)] = offset

    def _spill(self) -> None:
        dropped = 0
        while self._bytes > self.max_bytes and self._held:
            _, chunk = self._held.popitem(last=False)
            self._bytes -= len(chunk.data)
            dropped += len(chunk.data)
        if dropped:
            self.dropped_bytes += dropped
            log.warning("log outbox over %d bytes: dropped %d unacknowledged byte(s)",
                        self.max_bytes, dropped)

    def ack(self, acks: list[agent_pb2.LogAck]) -> None:
        """Forget the chunks these acknowledgements name."""
        with self._lock:
            for ack in acks:
                for offset in ack.offsets:
                    chunk = self._held.pop(
                        (ack.job_id, ack.attempt, ack.rank, ack.stream, offset), None)
                    if chunk is not None:
                        self._bytes -= len(chunk.data)

    def pending(self) -> list[common_pb2.LogChunk]:
        """Every unacknowledged chunk, oldest first (to resend on reconnect)."""
        with self._lock:
            return list(self._held.values())

    def forget_replica(self, job_id: str, attempt: int, rank: int) -> None:
        """Drop the offset counters of a replica that is gone for good (its held
        chunks stay until acknowledged)."""
        with self._lock:
            for skey in [k for k in self._next_offset if k[:3] == (job_id, attempt, rank)]:
                del self._next_offset[skey]

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._bytes
