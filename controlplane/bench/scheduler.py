"""Measure the pure scheduler core against a naive first-fit, on one core.

One *round* is one call of ``schedule(snapshot, pending, policy, now)`` on
the benchmark's fleet and queue (:mod:`.workload`); it is repeated
``rounds`` times from the same input to get latency percentiles. Python runs
it on one thread, so this is a one-core figure. Peak memory is the process's
peak resident set (``resource``), which includes the inputs.

With ``shards`` > 1 the same input is also scheduled as a sharded round
(``controlplane.scheduler.shards``): in this process one shard after the
other (the cost of splitting and merging), and on one Ray actor per shard
(parallel, plus the cost of shipping each shard's input to its actor).
Figures are ratios against the unsharded core of the same run; the Ray one
depends on the cores the machine has (a 2-core box cannot show much).
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from controlplane.bench.naive import naive_first_fit
from controlplane.bench.workload import NOW, bench_fleet, bench_queue
from controlplane.scheduler.core import schedule
from controlplane.scheduler.host import InlineHost, SchedulerHost, ShardedInlineHost
from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Policy

TARGET_PLACEMENTS_PER_S = 10_000
CURVE_NODES = (1_000, 10_000, 50_000)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def nearest_rank(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)] if ordered else 0.0


def time_rounds(round_fn: Callable[[], int], rounds: int) -> dict[str, Any]:
    """Run ``round_fn`` (returns placements made) ``rounds`` times."""
    seconds: list[float] = []
    placed = 0
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        placed = round_fn()
        seconds.append(time.perf_counter() - start)
    p50 = nearest_rank(seconds, 50)
    return {
        "placements_per_round": placed,
        "round_s_p50": round(p50, 6),
        "round_s_p99": round(nearest_rank(seconds, 99), 6),
        "placements_per_s": round(placed / p50, 1) if p50 > 0 else 0.0,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def core_round(snapshot: ClusterSnapshot, pending: Sequence[PendingJob]) -> Callable[[], int]:
    policy = Policy()
    return lambda: len(schedule(snapshot, pending, policy, NOW).placements)


def host_round(host: SchedulerHost, snapshot: ClusterSnapshot,
               pending: Sequence[PendingJob]) -> Callable[[], int]:
    policy = Policy()
    return lambda: len(host.schedule(snapshot, pending, policy, NOW).placements)


def sharded(snapshot: ClusterSnapshot, pending: Sequence[PendingJob], shards: int,
            rounds: int, baseline: dict[str, Any], ray: bool = True) -> dict[str, Any]:
    """The sharded round inline and on Ray, as ratios against ``baseline``
    (the unsharded core's figures of the same run)."""
    report: dict[str, Any] = {"shards": shards}
    variants: list[tuple[str, Callable[[], SchedulerHost]]] = [
        ("inline", lambda: ShardedInlineHost(shards))]
    if ray:
        variants.append(("ray", lambda: _ray_host(shards)))
    for name, make in variants:
        started = time.perf_counter()
        host = make()
        try:
            report[f"{name}_start_s"] = round(time.perf_counter() - started, 3)
            stats = time_rounds(host_round(host, snapshot, pending), rounds)
        finally:
            host.close()
        stats["placements_vs_unsharded"] = round(
            stats["placements_per_round"] / max(baseline["placements_per_round"], 1), 4)
        stats["placements_per_s_vs_unsharded"] = round(
            stats["placements_per_s"] / max(baseline["placements_per_s"], 1e-9), 3)
        report[name] = stats
    return report


def _ray_host(shards: int) -> SchedulerHost:
    import os

    from controlplane.scheduler.host import ShardedRayHost

    return ShardedRayHost(shards, num_cpus=max(os.cpu_count() or 1, 1))


def bench(nodes: int, jobs: int, rounds: int = 3, seed: int = 0, shards: int = 1,
          ray: bool = True) -> dict[str, Any]:
    """Xinhe core and naive first-fit on the same fleet and queue; with
    ``shards`` > 1 the sharded round too (``ray``: also on Ray actors)."""
    if nodes < 1 or jobs < 1 or rounds < 1 or shards < 1:
        raise ValueError("--nodes, --jobs, --rounds and --shards must be >= 1")
    snapshot, pending = bench_fleet(nodes, seed), bench_queue(jobs, seed)
    report = {
        "nodes": nodes,
        "devices": sum(n.total_devices for n in snapshot.nodes),
        "free_devices": sum(len(n.free_devices) for n in snapshot.nodes),
        "pools": len({n.pool for n in snapshot.nodes}),
        "models": len({n.model for n in snapshot.nodes}),
        "pending_jobs": jobs,
        "running_jobs": len(snapshot.running),
        "xinhe": time_rounds(core_round(snapshot, pending), rounds),
        # The same round as the control plane runs it: through a host, with
        # the cyclic collector paused for it (scheduler/collector.py).
        "xinhe_host": time_rounds(host_round(InlineHost(), snapshot, pending), rounds),
        "naive_first_fit": time_rounds(lambda: naive_first_fit(snapshot, pending), rounds),
        "target_placements_per_s": TARGET_PLACEMENTS_PER_S,
    }
    if shards > 1:
        report["sharded"] = sharded(snapshot, pending, shards, rounds, report["xinhe"], ray)
    return report


def curve(jobs: int, rounds: int = 1, sizes: Sequence[int] = CURVE_NODES,
          seed: int = 0) -> dict[str, Any]:
    """Round time against fleet size, queue fixed; ``growth`` compares the
    round-time ratio with the node ratio (<= 1.0 = linear or better)."""
    points = [bench(n, jobs, rounds, seed) for n in sorted(sizes)]
    first, last = points[0], points[-1]
    node_ratio = last["nodes"] / first["nodes"]
    time_ratio = last["xinhe"]["round_s_p50"] / max(first["xinhe"]["round_s_p50"], 1e-9)
    return {"pending_jobs": jobs, "points": points,
            "round_time_ratio": round(time_ratio, 2), "node_ratio": node_ratio,
            "growth_vs_linear": round(time_ratio / node_ratio, 3)}
