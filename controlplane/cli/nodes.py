"""`xinhe nodes`: nodes, their devices and status; cordon/uncordon."""

from __future__ import annotations

import argparse

from rich.table import Table

from controlplane.cli.common import add_client_options, client, console, fmt_bytes, rpc_errors
from xinhe.v1 import common_pb2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nodes", help="list nodes; cordon or uncordon one")
    p.add_argument("--pool", default="", help="only this pool")
    p.add_argument("--cordon", metavar="NODE", help="stop new work landing on NODE")
    p.add_argument("--uncordon", metavar="NODE", help="let work land on NODE again")
    p.add_argument("--reason", default="", help="why (with --cordon)")
    add_client_options(p)
    p.set_defaults(func=run)


@rpc_errors
def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        if args.cordon:
            c.cordon(args.cordon, args.reason)
        if args.uncordon:
            c.uncordon(args.uncordon)
        nodes = c.nodes(args.pool)
    table = Table("NODE", "POOL", "REGION", "STATUS", "MODEL", "DEVICES", "USED", "UNHEALTHY",
                  "MEMORY/DEV")
    for n in nodes:
        models = sorted({d.model for d in n.devices}) or ["-"]
        unhealthy = sum(1 for d in n.devices if not d.healthy)
        mem = fmt_bytes(n.devices[0].memory_bytes) if n.devices else "-"
        table.add_row(n.name, n.pool, n.region,
                      common_pb2.NodeStatus.Name(n.status).removeprefix("NODE_STATUS_"),
                      ",".join(models), str(len(n.devices)),
                      str(len(n.allocated_device_indices)), str(unhealthy), mem)
    console.print(table)
    return 0
