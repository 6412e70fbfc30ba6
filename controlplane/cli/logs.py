"""`xinhe logs [-f] ID`: a job's output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator

from controlplane.cli.common import add_client_options, client, rpc_errors
from xinhe.v1 import common_pb2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logs", help="print a job's output")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until it ends")
    p.add_argument("--rank", type=int, help="only this replica's output")
    p.add_argument("--prefix", action="store_true", help="prefix lines with [rank]")
    add_client_options(p)
    p.set_defaults(func=run)


def prefixed_lines(chunks: Iterable[common_pb2.LogChunk]) -> Iterator[bytes]:
    """Whole lines, each prefixed with its rank. Chunks of concurrent ranks
    arrive interleaved and may end mid-line, so each (rank, stream) is
    buffered until its line is complete."""
    pending: dict[tuple[int, int], bytes] = {}
    for chunk in chunks:
        key = (chunk.rank, chunk.stream)
        lines = (pending.pop(key, b"") + chunk.data).splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            pending[key] = lines.pop()
        for line in lines:
            yield f"[{chunk.rank}] ".encode() + line
    for (rank, _), rest in sorted(pending.items()):
        yield f"[{rank}] ".encode() + rest + b"\n"


@rpc_errors
def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with client(args) as c:
        chunks = c.logs(args.job_id, follow=args.follow, rank=args.rank)
        pieces = prefixed_lines(chunks) if args.prefix else (ch.data for ch in chunks)
        try:
            for piece in pieces:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            return 130
    return 0
