"""`xinhe jobs`: list jobs as a table."""

from __future__ import annotations

import argparse

from rich.table import Table

from controlplane.cli.common import (
    add_client_options,
    client,
    console,
    fail,
    placement_text,
    rpc_errors,
    styled_state,
)
from xinhe.v1 import common_pb2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--state", action="append", default=[],
                   help="only this state (repeatable), e.g. RUNNING")
    p.add_argument("--queue", default="", help="only this queue (tenant/queue)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    add_client_options(p)
    p.set_defaults(func=run)


@rpc_errors
def run(args: argparse.Namespace) -> int:
    try:
        states = tuple(common_pb2.JobState.Value("JOB_STATE_" + s.upper()) for s in args.state)
    except ValueError as exc:
        return fail(str(exc))
    table = Table("ID", "NAME", "QUEUE", "STATE", "PLACEMENT", "REASON")
    with client(args) as c:
        for i, job in enumerate(c.list(states=states, queue=args.queue)):
            if i >= args.limit:
                break
            table.add_row(job.id, job.spec.name, job.spec.queue, styled_state(job.state),
                          placement_text(job), job.state_reason[:60])
    console.print(table)
    return 0
