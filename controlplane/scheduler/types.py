"""Inputs and outputs of the pure scheduler core: frozen, hashable, no I/O.

The core is ``schedule(ClusterSnapshot, pending, Policy, now) -> Decisions``.
Everything it needs is in these values; ``now`` is an argument, never read
from a clock, so the same input always gives the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class RunningView:
    """A job holding devices, with when it is expected to free them."""

    job_id: str
    pool: str
    model: str
    devices: int
    expected_end: float | None  # absolute time; None = unknown


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: tuple[NodeView, ...]
    running: tuple[RunningView, ...] = ()
    # Relative speed of each model versus the reference chip (1.0 = A100):
    # the chip-profile prior, keyed by catalogue model name.
    model_speed: tuple[tuple[str, float], ...] = ()


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


@dataclass(frozen=True)
class Policy:
    """Knobs of the core. Defaults are the documented behaviour."""

    # Runtime assumed when a job gives no estimate, in reference-chip seconds.
    default_runtime_s: float = 3600.0
    # Only wait for a busy, faster pool when it finishes at least this much
    # sooner (ratio) than starting now elsewhere.
    wait_for_faster_margin: float = 1.10
    # Upper bound of jobs placed in one round (0 = no bound).
    max_placements_per_round: int = 0


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
    runtime_s: float
    finish_s: float
    fits_now: bool


@dataclass(frozen=True)
class PlacementDecision:
    job_id: str
    pool: str
    region: str
    family: str
    model: str
    replicas: tuple[ReplicaAssignment, ...]
    estimated_runtime_s: float
    candidates: tuple[Candidate, ...] = ()
    explanation: str = ""


@dataclass(frozen=True)
class WaitDecision:
    """The job stays queued; ``reason`` says why in words a tenant reads."""

    job_id: str
    reason: str
    # True when no pool could ever hold the job (static infeasibility).
    never_fits: bool = False


@dataclass(frozen=True)
class Decisions:
    placements: tuple[PlacementDecision, ...] = ()
    waiting: tuple[WaitDecision, ...] = field(default=())
