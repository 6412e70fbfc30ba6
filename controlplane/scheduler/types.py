"""Inputs and outputs of the pure scheduler core: frozen, hashable, no I/O.

The core is ``schedule(ClusterSnapshot, pending, Policy, now) -> Decisions``.
Everything it needs is in these values; ``now`` is an argument, never read
from a clock, so the same input always gives the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from controlplane.scheduler.core_explain import explain_placement


@dataclass(frozen=True)
class NodeView:
    """A schedulable node: one accelerator model per node (the usual case).

    ``free_devices`` are healthy, unallocated device indices. Cordoned or
    disconnected nodes are passed with ``schedulable=False`` so the core can
    explain that capacity exists but is unavailable.
    """

    name: str
    pool: str
    region: str
    family: str
    model: str
    device_memory_bytes: int
    total_devices: int
    free_devices: tuple[int, ...]
    cpu_free_millis: int = 0
    memory_free_bytes: int = 0
    schedulable: bool = True
    address: str = ""
    # What one device-hour here costs (the pool's price, any currency; 0 =
    # unknown/free): the ``cost`` objective and the explanations use it.
    cost_per_device_hour: float = 0.0


@dataclass(frozen=True)
class RunningView:
    """A job holding devices, with when it is expected to free them."""

    job_id: str
    pool: str
    model: str
    devices: int
    expected_end: float | None  # absolute time; None = unknown
    # Fair share: who holds the devices, and their normalised compute
    # (devices x the model's relative speed); 0 = derive from ``devices``
    # and the snapshot's ``model_speed``.
    tenant: str = ""
    normalised_devices: float = 0.0
    # Quotas and preemption (``core_quota``, ``core_preempt``). ``borrowed``:
    # placed beyond the tenant's nominal quota (the placement said so); such
    # capacity is reclaimed first. ``nodes``: (node name, device count) the
    # job holds; a job without it is never chosen as a victim (the core
    # cannot tell which devices it would free).
    borrowed: bool = False
    priority: int = 0
    preemptible: bool = True
    seconds_since_checkpoint: float = 0.0  # 0 = unknown: time since started_at
    started_at: float | None = None  # absolute
    last_preempted_at: float | None = None  # absolute; rate-limits preemption
    nodes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: tuple[NodeView, ...]
    running: tuple[RunningView, ...] = ()
    # Relative speed of each model versus the reference chip (1.0 = A100):
    # the chip-profile prior, keyed by catalogue model name.
    model_speed: tuple[tuple[str, float], ...] = ()
    # Power of one device of each model in watts (the catalogue's TDP), for
    # the ``energy`` objective; a model without a figure counts as 0 W.
    model_power_w: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class PendingJob:
    """A queued job, as the core sees it. ``order`` breaks ties (submission)."""

    job_id: str
    tenant: str
    queue: str
    priority: int
    order: int
    replicas: int
    devices_per_replica: int
    min_device_memory_bytes: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0
    families: frozenset[str] = frozenset()  # lower-case; empty + models empty = any
    models: frozenset[str] = frozenset()  # catalogue model names
    reference_runtime_s: float = 0.0  # 0 = unknown
    submitted_at: float = 0.0
    # The job's own speed per catalogue model relative to the reference chip
    # (measured or profiled, Gavel-style); overrides ``model_speed`` for this
    # job on the models it names. Non-positive factors are ignored.
    speed: tuple[tuple[str, float], ...] = ()
    # Only nodes of these pools (a migration pinned to a pool); empty = any.
    pools: frozenset[str] = frozenset()
    # Preferred nodes (a consolidating move's target, ``core_defrag``): the
    # job goes there when they hold it, else wherever the other filters
    # allow, so a pin to devices taken meanwhile never strands it.
    nodes: frozenset[str] = frozenset()
    # Placement objective (``core_objective``: fastest, cost, energy,
    # pinned); "" = the queue's default from the policy.
    objective: str = ""
    # The family the job names first (its own stack): where ``pinned`` keeps it.
    first_family: str = ""
    # Where the job's data lives; "" = nowhere in particular (no transfer).
    data_region: str = ""
    # "interactive": only pools of ``data_region``; "" or "batch": any
    # region, paying the policy's transfer penalty away from its data.
    latency_class: str = ""
    # Can be checkpointed and moved (the control plane: the job has a
    # checkpoint dir). Only such a job starts on a slower free chip to move
    # up later (``Policy.start_then_migrate``); others wait for the faster one.
    migratable: bool = True


@dataclass(frozen=True)
class Quota:
    """A tenant's share of one accelerator family or model (``family_or_model``
    matches a node's family or its catalogue model).

    ``devices`` is the nominal quota: always admitted, and reclaimed by
    preempting others' borrowed jobs when needed. Beyond it the tenant may
    borrow idle capacity up to ``borrow_limit`` more devices (None =
    unlimited); borrowed jobs are the first to be preempted. A tenant with
    no quota matching a pool is not limited there.
    """

    tenant: str
    family_or_model: str
    devices: int
    borrow_limit: int | None = None


@dataclass(frozen=True)
class Policy:
    """Knobs of the core. Defaults are the documented behaviour."""

    # Runtime assumed when a job gives no estimate, in reference-chip seconds.
    default_runtime_s: float = 3600.0
    # Only wait for a busy, faster pool when it finishes at least this much
    # sooner (ratio) than starting now elsewhere. 1.5: on the Gavel trace
    # 1.1 leaves slow chips idle (utilisation 89 %) for 3 % better JCT.
    wait_for_faster_margin: float = 1.5
    # With migration to faster chips on (``core_migrate``), a job that would
    # wait for a faster busy group starts now on a free slower one when
    # starting now and moving once the faster group frees (paying
    # ``migration_restart_cost_s``) finishes no later than waiting, or
    # later by at most ``start_then_migrate_slack`` (share of the time to
    # finish by waiting) while, never moved, it would still finish within
    # ``start_then_migrate_margin`` times that time (``core_migrate.
    # start_then_move``): slow chips work instead of idling. Off: plain
    # waiting. 0.3 and 5, with consolidating moves (``core_defrag``), keep
    # every family >= 90 % busy while work waits on the simulator's Chinese
    # fleets at the average JCT 0.1 and 3 gave without them (README).
    start_then_migrate: bool = False
    start_then_migrate_slack: float = 0.3
    start_then_migrate_margin: float = 5.0
    migration_restart_cost_s: float = 60.0
    # Seconds of the slower chip's run expected to be redone after the move
    # (work since the last checkpoint; e.g. half the checkpoint interval).
    migration_lost_work_s: float = 0.0
    # Upper bound of jobs placed in one round (0 = no bound).
    max_placements_per_round: int = 0
    # Backfill with reservations: a job that cannot start now (or waits for
    # a faster busy pool) reserves that pool from its expected start, behind
    # the reservations already there; later jobs use reserved devices only
    # if they finish first or leave enough. At most this many reservations
    # per round: past it a job never waits for a busy pool, it starts on a
    # free one (and the round stays cheap on a huge queue). 0 = no
    # reservations: jobs may wait for a faster pool without holding it.
    max_reservations_per_round: int = 1024
    # Weighted fair share (``core_share``): order the queue by priority, then
    # the tenant's normalised usage / weight, then submission. Off = plain
    # priority then submission order.
    fair_share: bool = False
    # (tenant, weight) pairs; unnamed tenants weigh 1.0; weights must be > 0.
    tenant_weights: tuple[tuple[str, float], ...] = ()
    # Quotas per tenant and family/model; empty = no limits.
    quotas: tuple[Quota, ...] = ()
    # Preemption: at most this many victims per round (0 = never preempt),
    # and a job preempted less than ``preemption_cooldown_s`` ago is not
    # preempted again, so the cluster cannot thrash.
    max_preemptions_per_round: int = 8
    preemption_cooldown_s: float = 300.0
    # Placement objectives (``core_objective``): a job's own wins, else its
    # queue's (queue, objective) entry, else ``default_objective``.
    default_objective: str = "fastest"
    queue_objectives: tuple[tuple[str, str], ...] = ()
    # Seconds a batch job away from its data region holds its devices
    # longer (data transfer): (data region, pool region, seconds); a pair
    # given one way applies both ways unless the other way is given too.
    # Other pairs of different regions: ``default_transfer_penalty_s``.
    transfer_penalty_s: tuple[tuple[str, str, float], ...] = ()
    default_transfer_penalty_s: float = 0.0


@dataclass(frozen=True)
class ReplicaAssignment:
    rank: int
    node: str
    device_indices: tuple[int, ...]


@dataclass(frozen=True)
class Candidate:
    """One (pool, model) considered for a job and its estimates."""

    pool: str
    model: str
    start_s: float  # expected start (absolute)
    runtime_s: float  # how long the job holds the devices: run + data transfer
    finish_s: float
    fits_now: bool
    # The objectives' figures: devices x hours held x the pool's price per
    # device-hour; devices x hours held x the model's power, in kWh (0 when
    # price or power are unknown); the data transfer included in runtime_s.
    cost: float = 0.0
    energy_kwh: float = 0.0
    transfer_s: float = 0.0


@dataclass(frozen=True)
class PlacementDecision:
    """Where a job goes. ``candidates`` are the groups the core compared
    (every faster pool it passed over, the chosen one at ``chosen_index``,
    and the next slower ones; slower pools cannot finish sooner and are
    only counted in ``others_not_compared``). ``explanation`` is formatted
    from them on first read, so a round with many placements pays for the
    words only when someone reads them."""

    job_id: str
    pool: str
    region: str
    family: str
    model: str
    replicas: tuple[ReplicaAssignment, ...]
    estimated_runtime_s: float
    candidates: tuple[Candidate, ...] = ()
    chosen_index: int = 0
    others_not_compared: int = 0
    decided_at: float = 0.0  # the round's ``now``: estimates are shown relative to it
    # Beyond the tenant's nominal quota: carry into RunningView.borrowed.
    borrowed: bool = False
    # The objective that chose among the candidates ("" = fastest finish).
    objective: str = ""

    @cached_property
    def explanation(self) -> str:
        """"chose pool p (M): est. finish 0:10:05; others: q (N) 0:31:40, ..."."""
        return explain_placement(self)


@dataclass(frozen=True)
class WaitDecision:
    """The job stays queued; ``reason`` says why in words a tenant reads."""

    job_id: str
    reason: str
    # True when no pool could ever hold the job (static infeasibility).
    never_fits: bool = False


@dataclass(frozen=True)
class PreemptionDecision:
    """Stop running job ``job_id`` and requeue it (not fail it) so that
    ``for_job`` can start on its devices in a later round."""

    job_id: str
    reason: str
    for_job: str


@dataclass(frozen=True)
class Decisions:
    placements: tuple[PlacementDecision, ...] = ()
    waiting: tuple[WaitDecision, ...] = field(default=())
    preemptions: tuple[PreemptionDecision, ...] = ()
