"""The agent's log outbox (offsets, acks, spill) and the stores' one copy
per offset, which together make replica output at-least-once and
deduplicated."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from agents.log_outbox import LogOutbox
from controlplane.services.fleet import AgentSession
from controlplane.services.log_acks import AckingRateLimiter, LogAcks
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import agent_pb2, common_pb2

OUT = common_pb2.LOG_STREAM_STDOUT
ERR = common_pb2.LOG_STREAM_STDERR


def ack(job: str, offsets: list[int], stream: int = OUT) -> list[agent_pb2.LogAck]:
    return [agent_pb2.LogAck(job_id=job, attempt=1, rank=0, stream=stream, offsets=offsets)]


def test_offsets_count_bytes_per_replica_stream() -> None:
    box = LogOutbox()
    chunks = [box.add("j", 1, 0, OUT, b"abc", Timestamp()),
              box.add("j", 1, 0, ERR, b"xy", Timestamp()),
              box.add("j", 1, 0, OUT, b"de", Timestamp()),
              box.add("j", 1, 1, OUT, b"z", Timestamp())]
    assert [c.offset for c in chunks] == [0, 0, 3, 0]
    assert all(c.HasField("offset") for c in chunks)


def test_only_acknowledged_chunks_are_forgotten_and_order_is_kept() -> None:
    box = LogOutbox()
    for data in (b"aa", b"bb", b"cc"):
        box.add("j", 1, 0, OUT, data, Timestamp())
    box.ack(ack("j", [2]) + ack("other", [0]))
    assert [(c.offset, c.data) for c in box.pending()] == [(0, b"aa"), (4, b"cc")]
    assert box.held_bytes == 4
    box.ack(ack("j", [0, 4, 4]))  # repeated acks are harmless
    assert box.pending() == [] and box.held_bytes == 0


def test_over_the_bound_the_oldest_output_is_dropped() -> None:
    box = LogOutbox(max_bytes=5)
    for data in (b"111", b"222", b"333"):
        box.add("j", 1, 0, OUT, data, Timestamp())
    assert [c.data for c in box.pending()] == [b"333"]
    assert box.dropped_bytes == 6
    with pytest.raises(ValueError, match="> 0"):
        LogOutbox(max_bytes=0)


def test_store_keeps_one_copy_per_offset(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    try:
        first = [common_pb2.LogChunk(job_id="j", attempt=1, rank=0, stream=OUT, data=d,
                                     offset=o) for o, d in ((0, b"ab"), (2, b"cd"))]
        store.append_logs(first, 1.0)
        resent = [first[1], common_pb2.LogChunk(job_id="j", attempt=1, rank=0, stream=OUT,
                                                data=b"ef", offset=4)]
        marker = common_pb2.LogChunk(job_id="j", attempt=1, rank=0, stream=OUT, data=b"!")
        store.append_logs([*resent, marker, marker], 2.0)  # markers carry no offset
        got = store.logs("j")
        assert b"".join(c.data for c in got) == b"abcdef!!"
        assert [c.offset for c in got if c.HasField("offset")] == [0, 2, 4]
    finally:
        store.close()


def test_control_plane_acks_written_chunks_to_their_sender() -> None:
    written: list[common_pb2.LogChunk] = []
    acks = LogAcks(lambda batch, now: written.extend(batch))
    session = AgentSession(session_id="s", node="n")
    numbered = common_pb2.LogChunk(job_id="j", attempt=1, rank=0, stream=OUT, data=b"x",
                                   offset=7)
    acks.received(session, numbered)
    acks.write([numbered, common_pb2.LogChunk(job_id="j", data=b"marker")], 0.0)
    message = session.outbox.get_nowait()
    assert list(message.ack.logs) == ack("j", [7]) and message.ack.agent_sequence == 0


def test_a_failed_write_closes_the_sender_so_it_resends() -> None:
    def fail(batch: object, now: float) -> None:
        raise OSError("disk full")

    acks = LogAcks(fail)
    session = AgentSession(session_id="s", node="n")
    chunk = common_pb2.LogChunk(job_id="j", attempt=1, rank=0, stream=OUT, data=b"x",
                                offset=0)
    acks.received(session, chunk)
    with pytest.raises(OSError):
        acks.write([chunk], 0.0)
    assert session.closed


def test_chunks_the_rate_limiter_drops_are_acknowledged_not_resent() -> None:
    dropped: list[common_pb2.LogChunk] = []
    limiter = AckingRateLimiter(4, dropped.extend)
    chunks = [common_pb2.LogChunk(job_id="j", data=b"abc", offset=o) for o in (0, 3)]
    admitted = limiter.admit(chunks, now=0.0)
    assert [c.offset for c in admitted] == [0] and [c.offset for c in dropped] == [3]
