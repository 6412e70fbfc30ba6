"""Scrape-time gauges: the fleet and the queue as the control plane sees them
at the moment Prometheus asks.

Computed from live state (fleet sessions, device holds, the store's
unfinished jobs) on every scrape rather than kept up to date by hooks, so a
gauge can never drift from the truth after a missed event or a restart.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controlplane.model import states
from controlplane.observability import metrics as m
from controlplane.observability.instruments import job_family
from controlplane.scheduler.types import Quota
from controlplane.services.context import Context
from controlplane.services.policy import load_policy
from xinhe.v1 import common_pb2

J = common_pb2
COLLECTED = ("xinhe_jobs", "xinhe_queue_oldest_job_age_seconds",
             "xinhe_tenant_accelerators_allocated", "xinhe_accelerators",
             "xinhe_accelerator_utilization_ratio", "xinhe_nodes", "xinhe_agents_connected",
             "xinhe_tenant_quota_devices")
DEVICE_STATES = ("allocated", "free", "unhealthy", "unavailable")


def family(name: str) -> GaugeMetricFamily:
    """An empty gauge family carrying the definition's name, help and labels."""
    defn = m.get(name)
    return GaugeMetricFamily(defn.name, defn.help, labels=defn.labels)


def device_state(node: common_pb2.Node, device: common_pb2.Device, held: bool) -> str:
    """One of DEVICE_STATES; together they partition a pool's devices."""
    if not device.healthy:
        return "unhealthy"
    if held:
        return "allocated"
    return "free" if node.status == J.NODE_STATUS_READY else "unavailable"


class FleetCollector(Collector):
    """Yields the COLLECTED gauges from a control plane's :class:`Context`."""

    def __init__(self, ctx: Context, clock: Callable[[], float] | None = None) -> None:
        self.ctx = ctx
        self.clock = clock or ctx.clock
        # The quotas of the policy file the server started with (it validated
        # the file already; the policy is fixed for the process's life).
        path = ctx.settings.policy_path
        self.quotas = load_policy(path).quotas if path else ()

    def describe(self) -> list[GaugeMetricFamily]:
        return [family(name) for name in COLLECTED]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = self.ctx.store.jobs_in_states(states.NON_TERMINAL)
        yield from self._job_gauges(jobs)
        yield from self._fleet_gauges()
        connected = family("xinhe_agents_connected")
        connected.add_metric([], self.ctx.fleet.connected_count())
        yield connected

    def _job_gauges(self, jobs: list[common_pb2.Job]) -> Iterator[GaugeMetricFamily]:
        counts: Counter[tuple[str, str, str]] = Counter()
        oldest: dict[str, float] = {}
        held: Counter[tuple[str, str]] = Counter()
        for job in jobs:
            fam = job_family(job)
            counts[(states.state_name(job.state), job.tenant, fam)] += 1
            if job.state == states.QUEUED:
                created = job.created_at.ToNanoseconds() / 1e9
                oldest[job.tenant] = min(oldest.get(job.tenant, created), created)
            if job.state in states.ACTIVE:
                devices = sum(len(r.device_indices) for r in job.placement.replicas)
                held[(job.tenant, fam)] += devices
        yield _filled("xinhe_jobs", counts)
        now = self.clock()
        yield _filled("xinhe_queue_oldest_job_age_seconds",
                      {(t,): max(0.0, now - c) for t, c in oldest.items()})
        yield _filled("xinhe_tenant_accelerators_allocated", held)
        yield _filled("xinhe_tenant_quota_devices", quota_use(self.quotas, jobs))

    def _fleet_gauges(self) -> Iterator[GaugeMetricFamily]:
        nodes = self.ctx.fleet.nodes()
        with self.ctx.lock:  # holds change under this lock; copy them consistently
            holds = {n.name: set(self.ctx.allocations.held_on(n.name)) for n in nodes}
        devices: Counter[tuple[str, ...]] = Counter()
        node_status: Counter[tuple[str, str, str]] = Counter()
        # (pool, region, family) -> devices per state
        by_pool: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        for node in nodes:
            status = J.NodeStatus.Name(node.status).removeprefix("NODE_STATUS_")
            node_status[(node.pool, node.region, status)] += 1
            for dev in node.devices:
                state = device_state(node, dev, dev.index in holds[node.name])
                model = (node.pool, node.region, dev.family, dev.model)
                for each in DEVICE_STATES:  # every state present, zeros included
                    devices[(*model, each)] += 1 if each == state else 0
                by_pool[(node.pool, node.region, dev.family)][state] += 1
        yield _filled("xinhe_accelerators", devices)
        utilisation = family("xinhe_accelerator_utilization_ratio")
        for key, count in sorted(by_pool.items()):
            healthy = count.total() - count["unhealthy"]
            utilisation.add_metric(list(key), count["allocated"] / healthy if healthy else 0.0)
        yield utilisation
        yield _filled("xinhe_nodes", node_status)


def quota_use(quotas: Sequence[Quota],
              jobs: Iterable[common_pb2.Job]) -> dict[tuple[str, str, str], float]:
    """(tenant, family or model, kind) -> devices, as the scheduler counts
    them: a scheduled or running job's devices count against every quota of
    its tenant naming its placed family or model."""
    used: Counter[tuple[str, str]] = Counter()
    for job in jobs:
        if job.state not in states.ACTIVE:
            continue
        where = (job.placement.family, job.placement.model)
        devices = sum(len(r.device_indices) for r in job.placement.replicas)
        for quota in quotas:
            if quota.tenant == job.tenant and quota.family_or_model in where:
                used[(quota.tenant, quota.family_or_model)] += devices
    out: dict[tuple[str, str, str], float] = {}
    for quota in quotas:
        key = (quota.tenant, quota.family_or_model)
        out[(*key, "nominal")] = quota.devices
        out[(*key, "used")] = used[key]
        out[(*key, "borrowed")] = max(used[key] - quota.devices, 0)
    return out


def _filled(name: str, values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    gauge = family(name)
    for labels, value in sorted(values.items()):
        gauge.add_metric(list(labels), value)
    return gauge
