"""Translations between stored jobs/nodes and the scheduler core's values,
and from placements to agent launch instructions."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.duration_pb2 import Duration

from controlplane.model.catalogue import Catalogue
from controlplane.model.spec import resolve_image, resolve_variant
from controlplane.scheduler.types import (
    NodeView,
    PendingJob,
    PlacementDecision,
    RunningView,
)
from controlplane.services.allocations import Allocations
from controlplane.services.migration_target import Filters, pinned
from xinhe.v1 import agent_pb2, common_pb2


def pending_job(job: common_pb2.Job, order: int, catalogue: Catalogue,
                speed: tuple[tuple[str, float], ...] = ()) -> PendingJob:
    """The core's view of a queued job; model names become catalogue names.
    ``speed``: the job type's learned factors (throughput.py), if any."""
    spec = job.spec
    res = spec.resources
    models = set()
    for name in res.models:
        chip = catalogue.find_model(name)
        models.add(chip.model if chip else name)
    # A migrated job stays within its target (family, model, pool or node).
    where = pinned(Filters(frozenset(f.lower() for f in res.families), frozenset(models)),
                   job.placement_target, catalogue)
    return PendingJob(
        job_id=job.id, tenant=job.tenant, queue=spec.queue, priority=spec.priority,
        order=order, replicas=spec.replicas, devices_per_replica=res.accelerators,
        min_device_memory_bytes=res.min_device_memory_bytes, cpu_millis=res.cpu_millis,
        memory_bytes=res.memory_bytes, families=where.families,
        models=where.models, pools=where.pools, nodes=where.nodes,
        reference_runtime_s=spec.reference_runtime.ToTimedelta().total_seconds(),
        submitted_at=job.created_at.ToNanoseconds() / 1e9, speed=speed,
        # An explicit migration target wins over the pinned objective's family.
        objective=objective_name(spec.objective),
        first_family="" if job.placement_target else first_family(spec, catalogue),
        data_region=spec.data_region, latency_class=latency_name(spec.latency_class),
        # Only a job with a checkpoint dir can be moved (MigrationService).
        migratable=bool(spec.checkpoint_dir),
    )


def objective_name(value: int) -> str:
    """OBJECTIVE_COST -> "cost" (the core's name); UNSPECIFIED -> "" (queue default)."""
    if value == common_pb2.OBJECTIVE_UNSPECIFIED:
        return ""
    return common_pb2.Objective.Name(value).removeprefix("OBJECTIVE_").lower()


def latency_name(value: int) -> str:
    """LATENCY_CLASS_INTERACTIVE -> "interactive"; UNSPECIFIED -> "" (batch)."""
    if value == common_pb2.LATENCY_CLASS_UNSPECIFIED:
        return ""
    return common_pb2.LatencyClass.Name(value).removeprefix("LATENCY_CLASS_").lower()


def first_family(spec: common_pb2.JobSpec, catalogue: Catalogue) -> str:
    """The family the job names first: its first family, else the family of
    its first model ("" when it names neither, or an unknown model)."""
    res = spec.resources
    if res.families:
        return res.families[0].lower()
    chip = catalogue.find_model(res.models[0]) if res.models else None
    return chip.family if chip else ""


def node_views(nodes: Iterable[common_pb2.Node], allocations: Allocations,
               catalogue: Catalogue) -> list[NodeView]:
    """One NodeView per node (per model on the rare mixed node)."""
    views = []
    for node in nodes:
        by_model: dict[str, list[common_pb2.Device]] = {}
        for dev in node.devices:
            by_model.setdefault(dev.model, []).append(dev)
        schedulable = node.status == common_pb2.NODE_STATUS_READY
        for model, devices in sorted(by_model.items()):
            healthy = [d.index for d in devices if d.healthy]
            chip = catalogue.find_model(model)
            views.append(NodeView(
                name=node.name, pool=node.pool, region=node.region,
                family=devices[0].family or (chip.family if chip else ""),
                model=chip.model if chip else model,
                device_memory_bytes=min(d.memory_bytes for d in devices),
                total_devices=len(devices),
                free_devices=allocations.free_indices(node.name, healthy),
                schedulable=schedulable, address=node.address,
                cost_per_device_hour=node.cost_per_device_hour,
            ))
    return views


def running_view(job: common_pb2.Job, now: float | None = None,
                 last_checkpoint: float | None = None) -> RunningView:
    """The core's view of a job holding devices. Its expected end counts from
    when it started running (or was placed, while it is still starting).

    Every running job is preemptible: one with a ``checkpoint_dir`` is asked
    to checkpoint first and resumes from it; one without restarts from the
    beginning, as after a lost node (its priority or borrowed capacity is
    what exposes it). ``seconds_since_checkpoint``: from ``last_checkpoint``
    (the agent-reported time of the job's newest complete checkpoint) to
    ``now``; a checkpoint older than this attempt's start counts from the
    start (the attempt resumed from it). 0 = unknown: the core counts from
    ``started_at``.
    """
    placement = job.placement
    # Message fields are always truthy: ask which timestamp is really set.
    since = job.started_at if job.HasField("started_at") else job.scheduled_at
    start = since.ToNanoseconds() / 1e9
    runtime = placement.estimated_runtime.ToTimedelta().total_seconds()
    per_node: dict[str, int] = {}
    for rep in placement.replicas:
        per_node[rep.node] = per_node.get(rep.node, 0) + len(rep.device_indices)
    last_preempted = (job.last_preempted_at.ToNanoseconds() / 1e9
                      if job.HasField("last_preempted_at") else None)
    return RunningView(job_id=job.id, pool=placement.pool, model=placement.model,
                       devices=sum(per_node.values()),
                       expected_end=start + runtime if runtime else None,
                       tenant=job.tenant, borrowed=placement.borrowed,
                       priority=job.spec.priority, preemptible=True,
                       started_at=start if since.ToNanoseconds() else None,
                       seconds_since_checkpoint=_since_checkpoint(start, now, last_checkpoint),
                       last_preempted_at=last_preempted,
                       nodes=tuple(sorted(per_node.items())))


def _since_checkpoint(start: float, now: float | None, checkpoint: float | None) -> float:
    """Seconds of work a stop now would lose (0 = unknown); a tiny positive
    floor keeps a just-checkpointed job "known" rather than unknown."""
    if now is None or checkpoint is None:
        return 0.0
    return max(now - max(checkpoint, start), 1e-3)


def placement_proto(decision: PlacementDecision, address: str, port: int) -> common_pb2.Placement:
    placement = common_pb2.Placement(
        pool=decision.pool, region=decision.region, family=decision.family,
        model=decision.model, master_addr=address, master_port=port,
        explanation=decision.explanation, borrowed=decision.borrowed,
        objective=decision.objective or "fastest",
    )
    if decision.candidates:
        chosen = decision.candidates[decision.chosen_index]
        placement.estimated_cost = chosen.cost
        placement.estimated_energy_kwh = chosen.energy_kwh
    placement.estimated_runtime.CopyFrom(_duration(decision.estimated_runtime_s))
    for rep in decision.replicas:
        placement.replicas.add(rank=rep.rank, node=rep.node, device_indices=rep.device_indices)
    return placement


def launch_messages(job: common_pb2.Job) -> list[tuple[str, agent_pb2.ControlMessage]]:
    """(node, LaunchReplica) for every replica of the job's current placement."""
    spec, placement = job.spec, job.placement
    command, env = resolve_variant(spec, placement.family, placement.model)
    image = resolve_image(spec, placement.family, placement.model)
    out = []
    for rep in placement.replicas:
        launch = agent_pb2.LaunchReplica(
            ref=agent_pb2.ReplicaRef(job_id=job.id, attempt=job.attempt, rank=rep.rank,
                                     epoch=job.epoch),
            job_name=spec.name, tenant=job.tenant, command=command, env=env,
            working_dir=spec.working_dir, family=placement.family, model=placement.model,
            device_indices=rep.device_indices, world_size=len(placement.replicas),
            master_addr=placement.master_addr, master_port=placement.master_port,
            checkpoint_dir=spec.checkpoint_dir, cpu_millis=spec.resources.cpu_millis,
            memory_bytes=spec.resources.memory_bytes, image=image,
        )
        launch.max_runtime.CopyFrom(spec.max_runtime)
        out.append((rep.node, agent_pb2.ControlMessage(launch=launch)))
    return out


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d
