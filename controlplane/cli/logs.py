"""`xinhe logs [-f] ID`: a job's output."""

from __future__ import annotations

import argparse
import sys

from controlplane.cli.common import add_client_options, client, rpc_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logs", help="print a job's output")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until it ends")
    p.add_argument("--rank", type=int, help="only this replica's output")
    p.add_argument("--prefix", action="store_true", help="prefix lines with [rank]")
    add_client_options(p)
    p.set_defaults(func=run)


@rpc_errors
def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with client(args) as c:
        try:
            for chunk in c.logs(args.job_id, follow=args.follow, rank=args.rank):
                data = chunk.data
                if args.prefix:
                    data = b"".join(f"[{chunk.rank}] ".encode() + line
                                    for line in data.splitlines(keepends=True))
                out.write(data)
                out.flush()
        except KeyboardInterrupt:
            return 130
    return 0
