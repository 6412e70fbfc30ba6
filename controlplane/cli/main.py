"""`xinhe`: the command line for tenants, operators and node agents."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from controlplane import __version__
from controlplane.cli import (
    admin,
    agent,
    bench,
    cancel,
    demo,
    job,
    jobs,
    logs,
    migrate,
    nodes,
    pools,
    server,
    simulate,
    submit,
    top,
)

COMMANDS = (server, agent, submit, jobs, job, logs, cancel, migrate, nodes, pools, demo, admin, top,
            simulate, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xinhe", description="Xinhe: develop a job once, run it on any accelerator.")
    parser.add_argument("--version", action="version", version=f"xinhe {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level (DEBUG, INFO, WARNING, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
