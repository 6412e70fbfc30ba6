"""`xinhe cancel ID`: cancel a job."""

from __future__ import annotations

import argparse

from controlplane.cli.common import add_client_options, client, console, rpc_errors, styled_state


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.add_argument("--reason", default="", help="recorded in the job's events")
    add_client_options(p)
    p.set_defaults(func=run)


@rpc_errors
def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.cancel(args.job_id, args.reason)
    console.print(f"{job.id} {styled_state(job.state)}")
    return 0
