"""Metrics of a simulation run, and their JSON and table renderings.

* JCT = finish - submit; wait = first start - submit (averages and p99,
  nearest-rank).
* Lower bound = every job alone on its fastest fitting chip, no wait: the
  average of those runtimes, beside each policy's average JCT.
* Utilisation per family (and per model): busy device-seconds over device-
  seconds. ``utilisation_while_waiting``: integrated only over the time at
  least one queued job could run on that family (its filters allow the
  family and some pool of it fits the gang's devices and memory), so a
  family nothing could use is not counted idle; ``utilisation``: over the
  whole makespan. Both per family in JSON; the table shows both, as
  ``waiting%/overall%``.
* Fairness: Jain's index over tenants of their mean normalised service,
  x_t = mean over the tenant's jobs of (lower-bound runtime / JCT), in
  (0, 1]; 1.0 = every tenant is served equally close to its physical limit.
* Per tenant: device-hours held, of them on borrowed capacity (beyond the
  nominal quota), device-hours of work lost when its jobs were stopped,
  by preemption or by migration (``lost_device_hours``: run since the last
  checkpoint, redone after the restart), and how often its jobs were
  preempted. Migrations are counted in the run's ``migrations``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from controlplane.sim.engine import Sample, SimResult
from controlplane.sim.speeds import Physics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 < q <= 100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 = equal, 1/n = one party gets everything."""
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def summarize(result: SimResult, physics: Physics) -> dict[str, Any]:
    """The numbers one policy scored, as a JSON-ready dict."""
    records = result.records
    jct = [r.finish - r.job.submit_time_s for r in records]
    wait = [r.first_start - r.job.submit_time_s for r in records]
    best = {r.job.job_id: physics.best_runtime_s(r.job) for r in records}
    start = min((r.job.submit_time_s for r in records), default=0.0)
    makespan = max((r.finish for r in records), default=start) - start
    return {
        "policy": result.policy,
        "jobs": len(records),
        "avg_jct_s": _mean(jct),
        "p99_jct_s": percentile(jct, 99),
        "lower_bound_avg_jct_s": _mean(list(best.values())),
        "avg_wait_s": _mean(wait),
        "p99_wait_s": percentile(wait, 99),
        "makespan_s": makespan,
        "utilisation_while_waiting": utilisation(result.timeline, physics, waiting_only=True),
        "utilisation": utilisation(result.timeline, physics, waiting_only=False),
        "utilisation_by_model": model_utilisation(result.timeline, physics),
        "fairness_jain": fairness(result, best),
        "preemptions": result.preemptions,
        "migrations": result.migrations,
        **spend(result, physics),
        "tenants": tenant_use(result),
        "rounds": result.rounds,
        "unfinished": len(result.unfinished),
        "never_fits": len(result.never_fits),
    }


def spend(result: SimResult, physics: Physics) -> dict[str, Any]:
    """Device-hours held, their cost (x each pool's price per device-hour)
    and energy in kWh (x each model's power), in all and per pool."""
    pools = {p.name: p for p in physics.fleet.pools}
    hours = {name: result.pool_device_s[name] / 3600 for name in pools}
    cost = {name: h * pools[name].cost_per_device_hour for name, h in hours.items()}
    kwh = {name: h * physics.catalogue.power_w(pools[name].model) / 1000
           for name, h in hours.items()}
    return {"device_hours": sum(hours.values()), "cost": sum(cost.values()),
            "energy_kwh": sum(kwh.values()),
            "by_pool": {name: {"device_hours": hours[name], "cost": cost[name],
                               "energy_kwh": kwh[name]} for name in pools}}


def tenant_use(result: SimResult) -> dict[str, dict[str, float]]:
    """Quota use and the work lost to preemption and migration per tenant
    (see module doc)."""
    preempted: dict[str, int] = defaultdict(int)
    for r in result.records:
        preempted[r.job.tenant] += r.preemptions
    tenants = sorted({*result.device_s, *preempted})
    return {t: {"device_hours": result.device_s[t] / 3600,
                "borrowed_device_hours": result.borrowed_device_s[t] / 3600,
                "lost_device_hours": result.lost_device_s[t] / 3600,
                "preempted": preempted[t]} for t in tenants}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def fairness(result: SimResult, best: dict[str, float]) -> float:
    service: dict[str, list[float]] = defaultdict(list)
    for r in result.records:
        jct = r.finish - r.job.submit_time_s
        service[r.job.tenant].append(best[r.job.job_id] / jct if jct > 0 else 1.0)
    return jain([_mean(v) for v in service.values()])


def _intervals(timeline: Sequence[Sample]) -> list[tuple[Sample, float]]:
    return [(s, nxt.time - s.time) for s, nxt in pairwise(timeline)]


def utilisation(timeline: Sequence[Sample], physics: Physics, *,
                waiting_only: bool) -> dict[str, float | None]:
    """Per family: busy share of its devices; None when never measured
    (no time with work waiting for it)."""
    capacity: dict[str, int] = defaultdict(int)
    for pool in physics.fleet.pools:
        capacity[pool.family] += pool.devices
    busy: dict[str, float] = defaultdict(float)
    span: dict[str, float] = defaultdict(float)
    for sample, dt in _intervals(timeline):
        for family in capacity:
            if waiting_only and family not in sample.waiting_for:
                continue
            busy[family] += sample.busy.get(family, 0) * dt
            span[family] += capacity[family] * dt
    return {f: (busy[f] / span[f] if span[f] else None) for f in capacity}


def model_utilisation(timeline: Sequence[Sample], physics: Physics) -> dict[str, float]:
    """Per model: busy share of its devices over the whole run."""
    capacity: dict[str, int] = defaultdict(int)
    for pool in physics.fleet.pools:
        capacity[pool.model] += pool.devices
    busy: dict[str, float] = defaultdict(float)
    total = 0.0
    for sample, dt in _intervals(timeline):
        total += dt
        for model, n in sample.busy_models.items():
            busy[model] += n * dt
    return {m: (busy[m] / (c * total) if total else 0.0) for m, c in capacity.items()}


def compare(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of every policy's average JCT to the agnostic FIFO baseline's."""
    by_name = {s["policy"]: s for s in summaries}
    fifo = by_name.get("fifo")
    if not fifo or not fifo["avg_jct_s"]:
        return {}
    return {f"avg_jct_{name}_over_fifo": s["avg_jct_s"] / fifo["avg_jct_s"]
            for name, s in by_name.items() if name != "fifo"}


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, one row per policy (times in hours)."""
    head = (f"{'policy':<12} {'avg JCT h':>10} {'(bound)':>8} {'p99 JCT h':>10} "
            f"{'avg wait h':>10} {'p99 wait h':>10} {'makespan h':>10} {'fair':>5} "
            f"{'preempt':>7} {'migrate':>7} {'cost':>10} {'MWh':>8}  "
            "utilisation per family: while work waits/overall")
    rows = [head]
    for s in summaries:
        overall = s["utilisation"]
        util = " ".join(f"{f}={_pct(u)}/{_pct(overall.get(f))}"
                        for f, u in s["utilisation_while_waiting"].items())
        rows.append(
            f"{s['policy']:<12} {_h(s['avg_jct_s']):>10} {_h(s['lower_bound_avg_jct_s']):>8} "
            f"{_h(s['p99_jct_s']):>10} {_h(s['avg_wait_s']):>10} {_h(s['p99_wait_s']):>10} "
            f"{_h(s['makespan_s']):>10} {s['fairness_jain']:>5.2f} {s['preemptions']:>7} "
            f"{s.get('migrations', 0):>7} {s.get('cost', 0.0):>10.1f} "
            f"{s.get('energy_kwh', 0.0) / 1000:>8.2f}  {util}")
        rows.extend(_tenant_rows(s))
    return "\n".join(rows)


def _tenant_rows(summary: dict[str, Any]) -> list[str]:
    """Per-tenant quota use, only when something was borrowed or preempted."""
    tenants = summary.get("tenants", {})
    if not any(t["borrowed_device_hours"] or t["preempted"] for t in tenants.values()):
        return []
    return [f"  {name}: {t['device_hours']:.1f} device-h, "
            f"borrowed {t['borrowed_device_hours']:.1f}, "
            f"lost to preemption/migration {t['lost_device_hours']:.1f}, "
            f"preempted {t['preempted']}x"
            for name, t in tenants.items()]


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"
