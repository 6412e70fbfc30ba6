"""`xinhe pools`: capacity per pool and model."""

from __future__ import annotations

import argparse

from rich.table import Table

from controlplane.cli.common import add_client_options, client, console, fmt_bytes, rpc_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pools", help="capacity per pool: devices free/allocated/unavailable")
    add_client_options(p)
    p.set_defaults(func=run)


@rpc_errors
def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        pools = c.pools()
    table = Table("POOL", "REGION", "FAMILY", "MODEL", "NODES", "DEVICES", "ALLOCATED", "FREE",
                  "UNAVAILABLE", "MEMORY/DEV")
    for p in pools:
        table.add_row(p.pool, p.region, p.family, p.model, f"{p.nodes_ready}/{p.nodes_total}",
                      str(p.devices_total), str(p.devices_allocated), str(p.devices_free),
                      str(p.devices_unavailable), fmt_bytes(p.device_memory_bytes))
    console.print(table)
    return 0
