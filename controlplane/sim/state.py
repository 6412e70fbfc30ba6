"""The simulated cluster as policies see it during one round.

The engine owns the mutable state; a policy receives a :class:`RoundView`
and answers a :class:`RoundResult` (placements, and preemptions for cores
that preempt). Views of nodes, running and pending jobs in the scheduler
core's own types are built here and cached, so driving the real core costs
little more than the core itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from controlplane.scheduler.types import (
    ClusterSnapshot,
    NodeView,
    PendingJob,
    PlacementDecision,
    ReplicaAssignment,
    RunningView,
)
from controlplane.sim.fleet import Fleet, Pool
from controlplane.sim.speeds import Physics, fits
from controlplane.sim.trace import TraceJob


@dataclass(frozen=True)
class SimPlacement:
    """Start ``job_id`` on pool ``pool`` with ``devices`` taken per node index."""

    job_id: str
    pool: int  # index into Fleet.pools
    devices: tuple[tuple[int, int], ...]  # (node index, device count)
    borrowed: bool = False  # beyond the tenant's nominal quota


@dataclass(frozen=True)
class RoundResult:
    placements: tuple[SimPlacement, ...] = ()
    # Running jobs to stop and requeue (their progress is kept: checkpointed).
    preemptions: tuple[str, ...] = ()
    # Running jobs to move: stopped where they run and restarted at once on
    # these devices, from their last checkpoint, after the restart cost.
    migrations: tuple[SimPlacement, ...] = ()


@dataclass
class QueuedJob:
    """A job waiting in the simulated queue."""

    job: TraceJob
    order: int  # submission sequence: the core's tie-breaker and FIFO order
    remaining: float = 1.0  # fraction of the work still to do
    eligible_families: frozenset[str] = frozenset()
    pending: PendingJob | None = None  # the core's view, rebuilt when remaining changes
    last_preempted_at: float | None = None
    last_migrated_at: float | None = None


@dataclass
class RunningJob:
    queued: QueuedJob
    pool: int
    devices: tuple[tuple[int, int], ...]
    start: float
    end: float
    epoch: int  # completion events of an older epoch are stale (preempted)
    view: RunningView | None = field(default=None, repr=False)
    borrowed: bool = False
    # Seconds at the start spent restarting (a migration's cost): no progress.
    overhead_s: float = 0.0

    def work_fraction(self, ran_s: float) -> float:
        """Share of this run's work done after ``ran_s`` seconds of it."""
        span = self.end - self.start - self.overhead_s
        return min(max(ran_s - self.overhead_s, 0.0) / span, 1.0) if span > 0 else 1.0


class Cluster:
    """Per-node free device counts of the fleet, with cached core views."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.node_pool: list[int] = []
        self.node_names: list[str] = []
        self.pool_nodes: list[range] = []
        for index, pool in enumerate(fleet.pools):
            first = len(self.node_pool)
            for n in range(pool.nodes):
                self.node_pool.append(index)
                self.node_names.append(f"{pool.name}-{n:05d}")
            self.pool_nodes.append(range(first, len(self.node_pool)))
        self.free = [fleet.pools[p].devices_per_node for p in self.node_pool]
        self.node_index = {name: i for i, name in enumerate(self.node_names)}
        # views[node][free count]: a NodeView per possible state, made on need.
        self._views: list[list[NodeView | None]] = [
            [None] * (fleet.pools[p].devices_per_node + 1) for p in self.node_pool
        ]

    def pool(self, node: int) -> Pool:
        return self.fleet.pools[self.node_pool[node]]

    def take(self, devices: Sequence[tuple[int, int]]) -> None:
        for node, count in devices:
            if count > self.free[node]:
                raise RuntimeError(f"policy over-allocated node {self.node_names[node]}")
            self.free[node] -= count

    def give_back(self, devices: Sequence[tuple[int, int]]) -> None:
        for node, count in devices:
            self.free[node] += count

    def node_views(self, free: Sequence[int] | None = None) -> tuple[NodeView, ...]:
        """Views of every node; ``free``: per-node free counts other than now's."""
        return tuple(self._view(i, f) for i, f in enumerate(self.free if free is None else free))

    def _view(self, node: int, free: int) -> NodeView:
        view = self._views[node][free]
        if view is None:
            pool = self.pool(node)
            view = self._views[node][free] = NodeView(
                name=self.node_names[node], pool=pool.name, region=pool.region,
                family=pool.family, model=pool.model,
                device_memory_bytes=pool.device_memory_bytes,
                total_devices=pool.devices_per_node, free_devices=tuple(range(free)),
                cost_per_device_hour=pool.cost_per_device_hour,
            )
        return view


@dataclass
class RoundView:
    """What a policy may look at: read-only by contract."""

    now: float
    cluster: Cluster
    physics: Physics
    queue: Sequence[QueuedJob]  # in submission order
    running: Sequence[RunningJob]
    # Jobs checkpoint every this many seconds of running (0 = continuously):
    # what the core sees as ``seconds_since_checkpoint``.
    checkpoint_every_s: float = 0.0

    def snapshot(self) -> ClusterSnapshot:
        """The fleet as the scheduler core sees it; running jobs carry their
        true expected end (the simulator knows runtimes exactly)."""
        return ClusterSnapshot(
            nodes=self.cluster.node_views(),
            running=tuple(self._running_view(r) for r in self.running),
            model_speed=self.physics.model_speeds(),
            model_power_w=self.physics.model_power(),
        )

    def _running_view(self, run: RunningJob) -> RunningView:
        view = running_view(run, self.cluster)
        every = self.checkpoint_every_s
        since = (self.now - run.start) % every if every > 0 else 0.0
        # 0 would read as "unknown" (time since start): a tiny positive keeps it known.
        return replace(view, seconds_since_checkpoint=max(since, 1e-9))

    def placement(self, decision: PlacementDecision) -> SimPlacement:
        """A core decision in the engine's terms (devices counted per node)."""
        return self.on_devices(decision.job_id, decision.replicas, decision.borrowed)

    def on_devices(self, job_id: str, replicas: Sequence[ReplicaAssignment],
                   borrowed: bool = False) -> SimPlacement:
        """Replica assignments of the core as devices counted per node."""
        counts: dict[int, int] = {}
        for replica in replicas:
            node = self.cluster.node_index[replica.node]
            counts[node] = counts.get(node, 0) + len(replica.device_indices)
        pool = self.cluster.node_pool[next(iter(counts))]
        return SimPlacement(job_id, pool, tuple(sorted(counts.items())), borrowed)


def running_view(run: RunningJob, cluster: Cluster) -> RunningView:
    if run.view is None:
        pool = cluster.fleet.pools[run.pool]
        run.view = RunningView(
            job_id=run.queued.job.job_id, pool=pool.name, model=pool.model,
            devices=sum(c for _, c in run.devices), expected_end=run.end,
            tenant=run.queued.job.tenant, borrowed=run.borrowed,
            priority=run.queued.job.priority, started_at=run.start,
            last_preempted_at=run.queued.last_preempted_at,
            nodes=tuple((cluster.node_names[n], c) for n, c in run.devices),
        )
    return run.view


def pending_job(queued: QueuedJob) -> PendingJob:
    """The core's view of a queued job; the reference runtime is what is
    left of the work, so a preempted job is estimated on its remainder."""
    if queued.pending is None or queued.pending.reference_runtime_s != _left(queued):
        job = queued.job
        queued.pending = PendingJob(
            job_id=job.job_id, tenant=job.tenant, queue=f"{job.tenant}/default",
            priority=job.priority, order=queued.order, replicas=job.replicas,
            devices_per_replica=job.devices_per_replica,
            min_device_memory_bytes=job.min_device_memory_bytes,
            families=job.families, models=job.models,
            reference_runtime_s=_left(queued), submitted_at=job.submit_time_s,
            speed=job.speed,
        )
    return queued.pending


def _left(queued: QueuedJob) -> float:
    return queued.job.reference_runtime_s * queued.remaining


def eligible_families(job: TraceJob, fleet: Fleet) -> frozenset[str]:
    """Families with a pool that could ever hold the job."""
    return frozenset(p.family for p in fleet.pools if fits(job, p))
