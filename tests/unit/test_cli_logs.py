"""`xinhe logs --prefix` keeps lines whole across interleaved chunks."""

from __future__ import annotations

from controlplane.cli.logs import prefixed_lines
from xinhe.v1 import common_pb2

OUT = common_pb2.LOG_STREAM_STDOUT


def chunk(rank: int, data: bytes) -> common_pb2.LogChunk:
    return common_pb2.LogChunk(rank=rank, stream=OUT, data=data)


def test_lines_split_across_chunks_of_two_ranks_come_out_whole() -> None:
    chunks = [chunk(0, b"hello fr"), chunk(1, b"rank one\nsecond li"), chunk(0, b"om zero\n"),
              chunk(1, b"ne")]
    assert list(prefixed_lines(chunks)) == [
        b"[1] rank one\n", b"[0] hello from zero\n", b"[1] second line\n"]
