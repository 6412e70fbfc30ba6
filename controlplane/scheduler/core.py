"""The pure scheduler core: ``schedule(snapshot, pending, policy, now)``.

A round walks the queue in order and, per job: checks that some group could
ever hold it (cached per job shape), asks admission whether it may be placed
this round, estimates its finish on every candidate group, chooses one and
places the whole gang there, or explains why it waits. Placements are taken
from a per-round ledger, so no device is handed out twice.

Pure: no I/O, no clock, no globals, no randomness; ties are broken by stable
keys, so the same input always yields the same ``Decisions``.

Seams for later issues: ``order_queue`` (fair share will reorder the queue)
and ``RoundState.admission_refusal`` (quotas, reservations and backfill will
refuse or hold capacity there). A job that waits for a busy, faster pool
reserves nothing in this round: later jobs may take what it would need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controlplane.scheduler.core_estimate import (
    NO_RELEASES,
    Choice,
    Option,
    choose,
    explain_placement,
    explain_wait_for_faster,
    release_schedules,
    runtime_s,
    speed_table,
)
from controlplane.scheduler.core_fleet import (
    Group,
    ShapeKey,
    StaticVerdict,
    build_groups,
    gigabytes,
    shape_key,
    static_verdict,
)
from controlplane.scheduler.core_ledger import ReplicaSlot
from controlplane.scheduler.types import (
    Candidate,
    ClusterSnapshot,
    Decisions,
    PendingJob,
    PlacementDecision,
    Policy,
    ReplicaAssignment,
    WaitDecision,
)

RoomKey = tuple[ShapeKey, int, int]  # shape plus host CPU and memory per replica
QueueOrdering = Callable[[Sequence[PendingJob]], Sequence[PendingJob]]
Decision = PlacementDecision | WaitDecision


def order_queue(pending: Sequence[PendingJob]) -> list[PendingJob]:
    """Priority descending, then submission ``order``; ``job_id`` breaks exact ties."""
    return sorted(pending, key=lambda j: (-j.priority, j.order, j.job_id))


def schedule(
    snapshot: ClusterSnapshot,
    pending: Sequence[PendingJob],
    policy: Policy,
    now: float,
    *,
    ordering: QueueOrdering = order_queue,
) -> Decisions:
    """Decide, for every pending job, a placement or a reason to wait.

    Every job in ``pending`` gets exactly one decision. Placements appear in
    the order they were made (queue order); so do waits.
    """
    state = RoundState(snapshot, policy, now)
    placements: list[PlacementDecision] = []
    waiting: list[WaitDecision] = []
    for job in ordering(pending):
        decision = state.decide(job)
        if isinstance(decision, PlacementDecision):
            placements.append(decision)
        else:
            waiting.append(decision)
    return Decisions(placements=tuple(placements), waiting=tuple(waiting))


class RoundState:
    """Everything one round knows and has taken so far. Lives for one call."""

    def __init__(self, snapshot: ClusterSnapshot, policy: Policy, now: float) -> None:
        self.policy, self.now = policy, now
        self.groups = build_groups(snapshot.nodes)
        self.speeds = speed_table(snapshot)
        self.releases = release_schedules(snapshot.running, now, policy)
        self.verdicts: dict[ShapeKey, StaticVerdict] = {}
        self.placed = 0
        # Memos. Free capacity only shrinks during a round, so a shape that
        # fits nowhere now fits nowhere for the rest of the round; estimates
        # and explanations repeat across jobs of one shape and are shared.
        self.no_room: set[RoomKey] = set()
        self.options: dict[tuple[int, float, float, bool], Option] = {}
        self.explanations: dict[tuple[int, ...], str] = {}

    def decide(self, job: PendingJob) -> Decision:
        """One job's decision; places it in the ledger when it is placed."""
        verdict = self._verdict(job)
        if verdict.never_reason:
            return WaitDecision(job.job_id, verdict.never_reason, never_fits=True)
        refusal = self.admission_refusal(job)
        if refusal:
            return WaitDecision(job.job_id, refusal)
        room_key = (shape_key(job), job.cpu_millis, job.memory_bytes)
        if room_key in self.no_room:
            return WaitDecision(job.job_id, capacity_reason(job, verdict.groups))
        decision = self._place_best(job, verdict.groups, room_key)
        if isinstance(decision, PlacementDecision):
            self.placed += 1
        return decision

    def admission_refusal(self, job: PendingJob) -> str:
        """Why ``job`` may not be placed this round ("" = it may).

        Today only the round bound; quotas and reservations plug in here.
        """
        limit = self.policy.max_placements_per_round
        if limit and self.placed >= limit:
            return f"round limit: {limit} placements per round reached; retried next round"
        return ""

    def _verdict(self, job: PendingJob) -> StaticVerdict:
        key = shape_key(job)
        verdict = self.verdicts.get(key)
        if verdict is None:
            verdict = self.verdicts[key] = static_verdict(self.groups, job)
        return verdict

    def _place_best(
        self, job: PendingJob, groups: tuple[Group, ...], room_key: RoomKey
    ) -> Decision:
        """Choose and place; a group whose free-device bound was too hopeful
        (host CPU/memory ruled it out) is marked busy and the choice redone."""
        fits = [g.ledger.slot_bound(job.devices_per_replica) >= job.replicas for g in groups]
        while True:
            options = [self._option(g, job, f) for g, f in zip(groups, fits, strict=True)]
            choice = choose(options, job, self.now, self.policy.wait_for_faster_margin)
            if choice.place is None:
                if not any(fits):
                    self.no_room.add(room_key)
                return self._wait(job, choice, groups)
            slots = choice.place.group.ledger.place_gang(job)
            if slots is not None:
                return self._placement(job, choice, choice.place, slots)
            fits[groups.index(choice.place.group)] = False

    def _option(self, group: Group, job: PendingJob, fits_now: bool) -> Option:
        runtime = runtime_s(job, group.model, self.speeds, self.policy)
        start = self.now if fits_now else self._start_when_free(group, job)
        key = (id(group), start, runtime, fits_now)
        option = self.options.get(key)
        if option is None:
            finish = start + runtime
            candidate = Candidate(group.pool, group.model, start, runtime, finish, fits_now)
            option = self.options[key] = Option(group, candidate)
        return option

    def _explain(self, chosen: Option, ranked: Sequence[Option]) -> str:
        key = (id(chosen), *map(id, ranked))  # options are memoised: ids are stable
        text = self.explanations.get(key)
        if text is None:
            text = self.explanations[key] = explain_placement(chosen, ranked, self.now)
        return text

    def _start_when_free(self, group: Group, job: PendingJob) -> float:
        deficit = job.replicas * job.devices_per_replica - group.ledger.free_devices
        releases = self.releases.get((group.pool, group.model), NO_RELEASES)
        return releases.start_s(deficit, self.now, self.policy.default_runtime_s)

    def _placement(
        self, job: PendingJob, choice: Choice, chosen: Option, slots: list[ReplicaSlot]
    ) -> PlacementDecision:
        group = chosen.group
        return PlacementDecision(
            job_id=job.job_id,
            pool=group.pool,
            region=group.region,
            family=group.family,
            model=group.model,
            replicas=tuple(
                ReplicaAssignment(rank, node, devices)
                for rank, (node, devices) in enumerate(slots)
            ),
            estimated_runtime_s=chosen.candidate.runtime_s,
            candidates=tuple(o.candidate for o in choice.ranked),
            explanation=self._explain(chosen, choice.ranked),
        )

    def _wait(self, job: PendingJob, choice: Choice, groups: Sequence[Group]) -> WaitDecision:
        if choice.wait_for is not None:
            return WaitDecision(job.job_id, explain_wait_for_faster(choice, self.now))
        return WaitDecision(job.job_id, capacity_reason(job, groups))


def capacity_reason(job: PendingJob, groups: Sequence[Group]) -> str:
    """Why a statically feasible job cannot start now, in a tenant's words."""
    models = "|".join(sorted({g.model for g in groups}))
    d = job.devices_per_replica
    if d == 0:
        parts = [f"waiting for capacity: needs {job.replicas} CPU-only replicas on {models}"]
    else:
        parts = [f"waiting for capacity: needs {job.replicas}x{d} devices of {models}"]
        parts.extend(_free_device_notes(job, groups))
    host = [f"{job.cpu_millis}m CPU"] if job.cpu_millis else []
    host += [f"{gigabytes(job.memory_bytes)} host memory"] if job.memory_bytes else []
    if host:
        parts.append(f"each replica also needs {' and '.join(host)}")
    parts.extend(_cordoned_note(job, groups))
    return "; ".join(parts)


def _cordoned_note(job: PendingJob, groups: Sequence[Group]) -> list[str]:
    """Name cordoned/disconnected capacity when it alone would make the job fit."""
    need = job.replicas * job.devices_per_replica
    blocked = [
        g for g in groups
        if g.ledger.free_devices < need <= g.ledger.free_devices + g.unschedulable_devices
    ]
    if not blocked:
        return []
    group = min(blocked, key=lambda g: (-g.unschedulable_devices, g.key))
    return [
        f"{group.unschedulable_devices} more devices are on unschedulable "
        f"(cordoned or disconnected) nodes in pool {group.pool}"
    ]


def _free_device_notes(job: PendingJob, groups: Sequence[Group]) -> list[str]:
    """The roomiest group's free devices, and whether fragmentation is the snag."""
    roomiest = min(groups, key=lambda g: (-g.ledger.free_devices, g.key))
    free = roomiest.ledger.free_devices
    notes = [f"most free in one pool: {free} (pool {roomiest.pool})"]
    d = job.devices_per_replica
    if free >= job.replicas * d and roomiest.ledger.slot_bound(d) < job.replicas:
        on_node = roomiest.ledger.most_free_on_one_node()
        notes.append(f"free devices are fragmented: at most {on_node} on one node")
    return notes
