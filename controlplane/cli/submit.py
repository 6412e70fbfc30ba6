"""`xinhe submit job.yaml`: submit a portable job; prints its id."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controlplane.cli.common import (
    add_client_options,
    client,
    console,
    err_console,
    fail,
    rpc_errors,
)
from controlplane.model.spec import SpecError, spec_from_yaml
from xinhe.v1 import common_pb2

COPIES_PER_CALL = 1000  # SubmitJobs' limit per call


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a job spec (YAML)")
    p.add_argument("file", help="job spec YAML, or - for standard input")
    p.add_argument("--key", default="", help="idempotency key: resubmitting returns the same job")
    p.add_argument("--queue", help="override the spec's queue (tenant/queue)")
    p.add_argument("--count", type=int, default=1,
                   help="submit this many copies (SubmitJobs, 1000 per call); with --key, "
                        "copy i gets the key KEY-i; prints one id per line")
    add_client_options(p)
    p.set_defaults(func=run)


@rpc_errors
def run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror}")
    try:
        spec = spec_from_yaml(text)
    except SpecError as exc:
        return fail(f"{args.file}: {exc}")
    if args.queue:
        spec.queue = args.queue
    if args.count != 1:
        return submit_copies(args, spec)
    with client(args) as c:
        response = c.submit_full(spec, args.key)
    console.print(response.job.id, highlight=False)
    if not response.created:
        console.print(f"[dim](existing job for key {args.key!r})[/dim]", style="dim")
    return 0


def submit_copies(args: argparse.Namespace, spec: common_pb2.JobSpec) -> int:
    """``args.count`` copies of ``spec`` in SubmitJobs calls; a refused copy
    is reported and makes the exit status 1."""
    if args.count < 1:
        return fail("--count must be >= 1")
    failed = 0
    with client(args) as c:
        for start in range(0, args.count, COPIES_PER_CALL):
            n = min(COPIES_PER_CALL, args.count - start)
            keys = [f"{args.key}-{start + i}" for i in range(n)] if args.key else None
            for i, result in enumerate(c.submit_many([spec] * n, keys)):
                if result.error_code:
                    failed += 1
                    err_console.print(f"[red]copy {start + i}[/red]: {result.error_message}")
                else:
                    console.print(result.job.id, highlight=False)
    return 1 if failed else 0
