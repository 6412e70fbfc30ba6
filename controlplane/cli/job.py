"""`xinhe job ID`: one job's state, placement and events."""

from __future__ import annotations

import argparse
import datetime as dt

from rich.table import Table

from controlplane.cli.common import (
    add_client_options,
    client,
    console,
    placement_text,
    rpc_errors,
    state_name,
    styled_state,
    ts,
)
from xinhe.v1 import common_pb2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("job", help="show a job: state, placement, events")
    p.add_argument("job_id")
    add_client_options(p)
    p.set_defaults(func=run)


def objective_text(job: common_pb2.Job) -> str:
    """"cost (placed by cost: est. cost 9.33, 1.4 kWh); data region east,
    batch": what the job asked for and, once placed, what chose and the
    estimates."""
    spec, p = job.spec, job.placement
    asked = (common_pb2.Objective.Name(spec.objective).removeprefix("OBJECTIVE_").lower()
             if spec.objective else "queue default")
    if p.objective:
        figures = [f"est. cost {p.estimated_cost:.2f}"] if p.estimated_cost else []
        figures += [f"{p.estimated_energy_kwh:.1f} kWh"] if p.estimated_energy_kwh else []
        asked += f" (placed by {p.objective}" + (f": {', '.join(figures)})" if figures else ")")
    latency = (common_pb2.LatencyClass.Name(spec.latency_class).removeprefix(
        "LATENCY_CLASS_").lower() if spec.latency_class else "batch")
    region = f"data region {spec.data_region}" if spec.data_region else "no data region"
    return f"{asked}; {region}, {latency}"


def _when(seconds: float) -> str:
    if not seconds:
        return "-"
    return dt.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@rpc_errors
def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.get(args.job_id)
        events = list(c.watch(job.id))
    p = job.placement
    console.print(f"[bold]{job.id}[/bold]  {job.spec.name}  queue {job.spec.queue}  "
                  f"priority {job.spec.priority}")
    console.print(f"state      {styled_state(job.state)}  attempt {job.attempt}  "
                  f"epoch {job.epoch}  exit {job.exit_code}")
    if job.state_reason:
        console.print(f"reason     {job.state_reason}", highlight=False)
    console.print(f"placement  {placement_text(job)}", highlight=False)
    if job.placement_target:
        console.print(f"pinned to  {job.placement_target} (by migration)", highlight=False)
    console.print(f"objective  {objective_text(job)}", highlight=False)
    if p.replicas:
        for r in p.replicas:
            console.print(f"  rank {r.rank}: {r.node} devices {list(r.device_indices)}")
        console.print(f"  rendezvous {p.master_addr}:{p.master_port}")
    if p.explanation:
        console.print(f"why here   {p.explanation}", highlight=False)
    if job.HasField("progress"):
        g = job.progress
        console.print(f"progress   step {g.step} at {g.steps_per_second:.3g} steps/s "
                      f"(reported {_when(ts(g.updated_at))})", highlight=False)
    if job.spec.job_type:
        console.print(f"job type   {job.spec.job_type} (shares learned speed)", highlight=False)
    table = Table("SEQ", "TIME", "FROM", "TO", "KIND", "MESSAGE", title="events")
    for e in events:
        table.add_row(str(e.sequence), _when(ts(e.time)), state_name(e.from_state),
                      state_name(e.to_state), e.kind, e.message)
    console.print(table)
    return 0
