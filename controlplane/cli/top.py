"""`xinhe top`: a live terminal view of the fleet for operators without Grafana.

Reads the control plane's Prometheus endpoint (``xinhe server --metrics-port``),
so it shows exactly the numbers the dashboards show: devices per pool,
utilisation per family against the 60 % / 90 % lines, running and waiting jobs
per tenant, and the scheduler's placement rate.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.table import Table

from controlplane.cli.common import console, fail

DEFAULT_URL = "http://127.0.0.1:9464/metrics"
DEVICE_STATES = ("allocated", "free", "unhealthy", "unavailable")
# Counters of finished jobs, shown as totals per tenant.
FINISHED = {"xinhe_jobs_succeeded_total": "SUCCEEDED", "xinhe_jobs_failed_total": "FAILED"}


@dataclass
class Snapshot:
    """What one scrape of the control plane says."""

    taken: float
    # (pool, region, family, model) -> devices per state
    pools: dict[tuple[str, str, str, str], dict[str, float]] = field(default_factory=dict)
    # tenant -> job state -> count (unfinished now; SUCCEEDED/FAILED since start)
    tenants: dict[str, dict[str, float]] = field(default_factory=dict)
    placements: float = 0.0
    rounds: float = 0.0
    agents: float = 0.0

    def utilisation(self) -> dict[str, float]:
        """Allocated / healthy devices per family (0..1)."""
        allocated: dict[str, float] = defaultdict(float)
        healthy: dict[str, float] = defaultdict(float)
        for (_pool, _region, family, _model), states in self.pools.items():
            allocated[family] += states.get("allocated", 0)
            healthy[family] += sum(v for s, v in states.items() if s != "unhealthy")
        return {f: allocated[f] / healthy[f] if healthy[f] else 0.0 for f in sorted(healthy)}


def parse(text: str, taken: float) -> Snapshot:
    """A Snapshot from Prometheus text exposition of a Xinhe control plane."""
    snap = Snapshot(taken=taken)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "xinhe_accelerators":
                key = (labels["pool"], labels["region"], labels["family"], labels["model"])
                snap.pools.setdefault(key, {})[labels["state"]] = s.value
            elif s.name == "xinhe_jobs":
                states = snap.tenants.setdefault(labels["tenant"], defaultdict(float))
                # SCHEDULED counts as starting: placed, processes on their way.
                states[labels["state"].replace("SCHEDULED", "STARTING")] += s.value
            elif s.name in FINISHED:
                states = snap.tenants.setdefault(labels["tenant"], defaultdict(float))
                states[FINISHED[s.name]] += s.value
            elif s.name == "xinhe_scheduler_placements_total":
                snap.placements = s.value
            elif s.name == "xinhe_scheduler_round_duration_seconds_count":
                snap.rounds = s.value
            elif s.name == "xinhe_agents_connected":
                snap.agents = s.value
    return snap


def fetch(url: str) -> Snapshot:
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse(response.read().decode(), time.time())


def _bar(ratio: float, width: int = 20) -> str:
    filled = round(ratio * width)
    style = "green" if ratio >= 0.9 else "yellow" if ratio >= 0.6 else "red"
    return f"[{style}]{'█' * filled}[/{style}]{'·' * (width - filled)} {ratio:6.1%}"


def render(snap: Snapshot, previous: Snapshot | None) -> Group:
    """Tables for pools, utilisation per family, tenants and the scheduler."""
    pools = Table("POOL", "REGION", "FAMILY", "MODEL", *(s.upper() for s in DEVICE_STATES),
                  title="pools")
    for (pool, region, family, model), states in sorted(snap.pools.items()):
        pools.add_row(pool, region, family, model,
                      *(f"{states.get(s, 0):.0f}" for s in DEVICE_STATES))
    util = Table("FAMILY", "UTILISATION (target 60 %, best 90 %)", title="utilisation")
    for family, ratio in snap.utilisation().items():
        util.add_row(family, _bar(ratio))
    tenants = Table("TENANT", "RUNNING", "WAITING", "STARTING", "SUCCEEDED", "FAILED",
                    title="jobs")
    for tenant, states in sorted(snap.tenants.items()):
        tenants.add_row(tenant, *(f"{states.get(s, 0):.0f}" for s in (
            "RUNNING", "QUEUED", "STARTING", "SUCCEEDED", "FAILED")))
    rate = "-"
    if previous is not None and snap.taken > previous.taken:
        rate = f"{(snap.placements - previous.placements) / (snap.taken - previous.taken):.1f}"
    summary = (f"agents connected: {snap.agents:.0f}   placements/s: {rate}   "
               f"placements: {snap.placements:.0f}   rounds: {snap.rounds:.0f}")
    return Group(pools, util, tenants, summary)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live terminal view of pools, utilisation and queues",
                       description=__doc__.splitlines()[0])
    p.add_argument("--metrics", default=os.environ.get("XINHE_METRICS_URL", DEFAULT_URL),
                   help="control plane /metrics URL (env XINHE_METRICS_URL; default "
                        "%(default)s; start the server with --metrics-port)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        return fail("--interval must be positive")
    try:
        snap = fetch(args.metrics)
        if args.once:
            console.print(render(snap, None))
            return 0
        with Live(render(snap, None), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(args.interval)
                previous, snap = snap, fetch(args.metrics)
                live.update(render(snap, previous))
    except (urllib.error.URLError, OSError) as exc:
        return fail(f"cannot read metrics from {args.metrics}: {exc}; is the control plane "
                    "running with --metrics-port?")
    except KeyboardInterrupt:
        return 0
