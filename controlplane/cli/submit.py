"""`xinhe submit job.yaml`: submit a portable job; prints its id."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controlplane.cli.common import add_client_options, client, console, fail, rpc_errors
from controlplane.model.spec import SpecError, spec_from_yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a job spec (YAML)")
    p.add_argument("file", help="job spec YAML, or - for standard input")
    p.add_argument("--key", default="", help="idempotency key: resubmitting returns the same job")
    p.add_argument("--queue", help="override the spec's queue (tenant/queue)")
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
    with client(args) as c:
        response = c.submit_full(spec, args.key)
    console.print(response.job.id, highlight=False)
    if not response.created:
        console.print(f"[dim](existing job for key {args.key!r})[/dim]", style="dim")
    return 0
