"""`xinhe demo`: a heterogeneous fleet on one machine, one command.

Starts a control plane on the embedded default (SQLite, scheduler on Ray),
five simulated agents as separate processes — NVIDIA H100 and A100 in
region east, Ascend 910B and Cambricon MLU370-X8 in region west — submits a
mixed batch of portable jobs (singles, pinned families, memory floors, and
multi-replica gangs), shows live progress and ends with a summary table.
Every job really runs as a process on its agent. Everything started is
stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controlplane.cli.common import console, fmt_seconds, state_name, styled_state, ts
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model.states import is_terminal
from controlplane.observability.demo_prometheus import DemoObservation
from xinhe.v1 import common_pb2

FLEET = (
    AgentSpec("east-h100-0", "h100-east", "east", ("H100:8",)),
    AgentSpec("east-a100-0", "a100-east", "east", ("A100:8",)),
    AgentSpec("west-910b-0", "910b-west", "west", ("910B:8",)),
    AgentSpec("west-910b-1", "910b-west", "west", ("910B:8",)),
    AgentSpec("west-mlu-0", "mlu370-west", "west", ("MLU370-X8:8",)),
)
GB = 10**9


@dataclass(frozen=True)
class DemoJob:
    name: str
    queue: str
    replicas: int = 1
    devices: int = 1
    families: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    min_memory_gb: int = 0
    runtime_h: float = 1.0
    steps: int = 40
    priority: int = 0


def demo_jobs() -> list[DemoJob]:
    """24 portable jobs from three tenants."""
    jobs = [DemoJob(f"sft-{i}", "lab-a/default", devices=1 + i % 2, runtime_h=2.0)
            for i in range(8)]
    jobs += [DemoJob(f"pretrain-gang-{i}", "acme/train", replicas=2, devices=4, runtime_h=6.0,
                     steps=60) for i in range(3)]
    jobs.append(DemoJob("ascend-gang-4x4", "acme/train", replicas=4, devices=4,
                        families=("ascend",), runtime_h=4.0, steps=60, priority=5))
    jobs += [DemoJob(f"mlu-finetune-{i}", "uni-b/research", devices=2, families=("cambricon",),
                     runtime_h=1.0) for i in range(4)]
    jobs += [DemoJob(f"eval-nvidia-{i}", "uni-b/research", models=("H100", "A100"),
                     runtime_h=0.5, steps=30) for i in range(4)]
    jobs += [DemoJob(f"big-mem-{i}", "lab-a/default", devices=2, min_memory_gb=64,
                     runtime_h=3.0) for i in range(4)]
    return jobs


def to_spec(job: DemoJob, step_sleep: float) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(
        name=job.name, queue=job.queue, replicas=job.replicas, priority=job.priority,
        command=[sys.executable, "-m", "xinhe_runtime.examples.train"],
        args=["--steps", str(job.steps), "--step-sleep", str(step_sleep)],
        env={"DEMO_JOB": job.name},
    )
    spec.resources.accelerators = job.devices
    spec.resources.families.extend(job.families)
    spec.resources.models.extend(job.models)
    spec.resources.min_device_memory_bytes = job.min_memory_gb * GB
    spec.reference_runtime.FromSeconds(int(job.runtime_h * 3600))
    spec.max_runtime.FromSeconds(600)
    return spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a simulated heterogeneous fleet end to end")
    p.add_argument("--workdir", type=Path, help="keep data and logs here (default: temporary)")
    p.add_argument("--scheduler", choices=("ray", "inline"), default="ray",
                   help="where the scheduler core runs (default ray)")
    p.add_argument("--step-sleep", type=float, default=0.05,
                   help="seconds each job step sleeps, standing in for device time")
    p.add_argument("--timeout", type=float, default=240.0, help="give up after this long")
    p.add_argument("--with-prometheus", action="store_true",
                   help="export metrics and run a local Prometheus against the demo; keep "
                        "everything up after the jobs until Ctrl-C")
    p.add_argument("--prometheus-port", type=int, default=9090,
                   help="port of that Prometheus (default 9090)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with tempfile.TemporaryDirectory(prefix="xinhe-demo-") as tmp:
        root = args.workdir or Path(tmp)
        observed = DemoObservation(root, args.with_prometheus, args.prometheus_port)
        fleet = LocalFleet(root, observed.agents(FLEET), scheduler=args.scheduler,
                           server_args=["--schedule-interval", "0.5", "--stop-grace", "3",
                                        *observed.server_args()])
        try:
            observed.start(console)
            code = _run_demo(fleet, args)
            observed.hold(console)
            return code
        except KeyboardInterrupt:
            _ignore_interrupts()  # a second Ctrl-C must not cut the clean-up short
            console.print("[yellow]interrupted: stopping every process[/yellow]")
            return 130
        finally:
            _ignore_interrupts()
            with console.status("stopping the control plane and agents"):
                observed.stop()
                fleet.stop()


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run_demo(fleet: LocalFleet, args: argparse.Namespace) -> int:
    started = time.monotonic()
    with console.status(f"starting control plane (scheduler on {args.scheduler}) "
                        f"and {len(FLEET)} agents"):
        fleet.start()
        client = XinheClient(fleet.address)
        _wait_for_agents(client, len(FLEET), timeout=60)
    console.print(f"control plane at [bold]{fleet.address}[/bold], data in {fleet.root}")
    console.print(_pools_table(client))
    jobs = demo_jobs()
    ids = [client.submit(to_spec(j, args.step_sleep), client_key=f"demo-{j.name}").id
           for j in jobs]
    console.print(f"submitted {len(ids)} portable jobs from "
                  f"{len({j.queue for j in jobs})} queues")
    final = _follow(client, ids, args.timeout)
    console.print(_summary_table(final))
    counts = Counter(state_name(j.state) for j in final)
    console.print(f"done in {time.monotonic() - started:.1f}s: "
                  + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    client.close()
    return 0 if counts.get("SUCCEEDED", 0) == len(final) else 1


def _wait_for_agents(client: XinheClient, n: int, timeout: float) -> None:
    client.wait_ready(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [x for x in client.nodes() if x.status == common_pb2.NODE_STATUS_READY]
        if len(ready) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"only {len(ready)} of {n} agents connected")


def _follow(client: XinheClient, ids: list[str], timeout: float) -> list[common_pb2.Job]:
    progress = Progress(TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn())
    task = progress.add_task("", total=len(ids))
    deadline = time.monotonic() + timeout
    wanted = set(ids)
    with Live(progress, console=console, refresh_per_second=4):
        while True:
            jobs = [j for j in client.list(page_size=1000) if j.id in wanted]
            counts = Counter(state_name(j.state) for j in jobs)
            done = sum(1 for j in jobs if is_terminal(j.state))
            progress.update(task, completed=done, description="  ".join(
                f"{s.lower()} {n}" for s, n in sorted(counts.items())))
            if done == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    by_id = {j.id: j for j in jobs}
    return [by_id[i] for i in ids if i in by_id]


def _pools_table(client: XinheClient) -> Table:
    table = Table("POOL", "REGION", "FAMILY", "MODEL", "NODES", "DEVICES", title="fleet")
    for p in client.pools():
        table.add_row(p.pool, p.region, p.family, p.model, str(p.nodes_total),
                      str(p.devices_total))
    return table


def _summary_table(jobs: list[common_pb2.Job]) -> Table:
    table = Table("JOB", "QUEUE", "ALLOWED", "STATE", "POOL", "MODEL", "DEVICES", "WAIT", "RUN",
                  title="summary")
    for job in jobs:
        p = job.placement
        res = job.spec.resources
        allowed = ",".join([*res.families, *res.models]) or "any"
        if res.min_device_memory_bytes:
            allowed += f" >={res.min_device_memory_bytes // GB}GB"
        devices = f"{job.spec.replicas}x{res.accelerators}"
        created, started, finished = ts(job.created_at), ts(job.started_at), ts(job.finished_at)
        wait = (started or ts(job.scheduled_at)) - created if (started or job.scheduled_at) else 0
        table.add_row(job.spec.name, job.spec.queue, allowed, styled_state(job.state),
                      p.pool or "-", p.model or "-", devices, fmt_seconds(wait),
                      fmt_seconds(finished - started if started and finished else 0))
    return table
