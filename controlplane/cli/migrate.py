"""`xinhe migrate JOB --to TARGET [--wait]`: move a running job to other chips.

The job checkpoints, stops, and resumes on ``TARGET`` (a family such as
``ascend``, a model such as ``910B``, or a pool). With ``--wait`` the command
follows the job until it runs again and prints the new placement and the
migration time: from the "migrating" event (the checkpoint request) to the
"running" event of the new attempt, both stamped by the control plane.
"""

from __future__ import annotations

import argparse
import time

from controlplane.cli.common import (
    add_client_options,
    client,
    console,
    fail,
    placement_text,
    rpc_errors,
    styled_state,
    ts,
)
from controlplane.client import XinheClient
from controlplane.model import states
from xinhe.v1 import common_pb2

J = common_pb2
POLL_SECONDS = 0.05


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="checkpoint a running job and resume it on other chips")
    p.add_argument("job_id")
    p.add_argument("--to", required=True, dest="target", metavar="TARGET",
                   help="family (ascend), model (910B) or pool to move the job to")
    p.add_argument("--reason", default="", help="recorded in the job's events")
    p.add_argument("--checkpoint-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="longest wait for the job's checkpoint before it is stopped anyway "
                        "(0 = the server's default)")
    p.add_argument("--wait", action="store_true",
                   help="wait until the job runs again; print where and how long it took")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds --wait waits (default %(default)s)")
    add_client_options(p)
    p.set_defaults(func=run)


def migration_seconds(events: list[common_pb2.JobEvent], attempt: int) -> float | None:
    """Seconds from the last "migrating" event before ``attempt`` to that
    attempt's "running" event, or None when it is not running yet."""
    started = [e for e in events if e.kind == "migrating" and e.attempt < attempt]
    running = [e for e in events if e.kind == "running" and e.attempt == attempt]
    if not started or not running:
        return None
    return ts(running[0].time) - ts(started[-1].time)


def wait_running(c: XinheClient, job_id: str, attempt: int,
                 timeout: float) -> common_pb2.Job | None:
    """The job once a later attempt runs (or it ended); None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(job_id)
        if states.is_terminal(job.state) or (
                job.attempt > attempt and job.state == J.JOB_STATE_RUNNING):
            return job
        time.sleep(POLL_SECONDS)
    return None


@rpc_errors
def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.migrate(args.job_id, args.target, args.reason, args.checkpoint_timeout)
        console.print(f"{job.id} {styled_state(job.state)} -> {job.placement_target}",
                      highlight=False)
        if not args.wait:
            return 0
        moved = wait_running(c, job.id, job.attempt, args.timeout)
        if moved is None:
            return fail(f"job {job.id} did not run again within {args.timeout:g}s")
        if moved.state != J.JOB_STATE_RUNNING:
            console.print(f"{moved.id} {styled_state(moved.state)} {moved.state_reason}",
                          highlight=False)
            return 0 if moved.state == J.JOB_STATE_SUCCEEDED else 1
        seconds = migration_seconds(list(c.watch(job.id)), moved.attempt)
    console.print(f"{moved.id} {styled_state(moved.state)} attempt {moved.attempt} on "
                  f"{placement_text(moved)}", highlight=False)
    if seconds is not None:
        console.print(f"migrated in {seconds:.2f}s (checkpoint request to running again)")
    return 0
