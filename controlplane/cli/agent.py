"""`xinhe agent`: run a node agent (real or simulated accelerators)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from agents.main import add_arguments

    p = sub.add_parser("agent", help="run a node agent",
                       description="Detect this node's accelerators, connect to the control "
                                   "plane and run the replicas it assigns.")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agents.main import run as run_agent

    return run_agent(args)
