"""Quota and preemption knobs of a simulation, from command-line text.

``--quotas lab-a:ascend=16+8,lab-b:nvidia=32`` gives lab-a a nominal 16
Ascend devices and lets it borrow 8 more while others' capacity is idle;
lab-b has 32 NVIDIA devices and may borrow without limit (no ``+N``).
``+0`` forbids borrowing. A family or a catalogue model may be named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from controlplane.scheduler.core_migrate import MigrationKnobs
from controlplane.scheduler.types import Policy, Quota
from controlplane.sim.errors import SimInputError


def parse_quotas(text: str) -> tuple[Quota, ...]:
    """``tenant:family_or_model=devices[+borrow],...`` -> quotas (see module doc)."""
    quotas: list[Quota] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            tenant, rest = item.split(":", 1)
            target, amount = rest.split("=", 1)
            nominal, _, borrow = amount.partition("+")
            quota = Quota(tenant.strip(), target.strip(), int(nominal),
                          int(borrow) if borrow else None)
        except ValueError:
            raise SimInputError(
                f"bad quota {item!r}: want tenant:family_or_model=devices[+borrow]") from None
        if not quota.tenant or not quota.family_or_model or quota.devices < 0 or (
                quota.borrow_limit is not None and quota.borrow_limit < 0):
            raise SimInputError(f"bad quota {item!r}: names must be set, numbers >= 0")
        quotas.append(quota)
    return tuple(quotas)


def with_knobs(policies: Sequence[object], quotas: tuple[Quota, ...],
               max_preemptions: int, cooldown_s: float) -> None:
    """Set quotas and preemption limits on every policy that drives the core."""
    if max_preemptions < 0 or cooldown_s < 0:
        raise SimInputError("--max-preemptions and --preemption-cooldown must be >= 0")
    for policy in policies:
        core: Policy | None = getattr(policy, "policy", None)
        if isinstance(core, Policy):
            policy.policy = replace(  # type: ignore[attr-defined]
                core, quotas=quotas, max_preemptions_per_round=max_preemptions,
                preemption_cooldown_s=cooldown_s)


def with_migration(policies: Sequence[object], restart_cost_s: float, per_round: int) -> None:
    """Set the restart cost and moves per round (0 = never) on every policy
    that migrates; policies without migration stay without."""
    if restart_cost_s < 0 or per_round < 0:
        raise SimInputError("--restart-cost and --migrations-per-round must be >= 0")
    for policy in policies:
        knobs: MigrationKnobs | None = getattr(policy, "migration", None)
        if isinstance(knobs, MigrationKnobs) and knobs.enabled:
            policy.migration = replace(  # type: ignore[attr-defined]
                knobs, restart_cost_s=restart_cost_s, max_per_round=per_round,
                enabled=per_round > 0)


# What `xinhe simulate --objective` accepts: the trace names no family order
# the pinned objective could use (the pinned baseline policy does that).
SIM_OBJECTIVES = ("fastest", "cost", "energy")


def with_objective(policies: Sequence[object], objective: str) -> None:
    """Give every job of the trace ``objective`` (the core's default
    objective) on every policy that drives the core; the trace format has
    no column for it. Migration chases finish time (a faster chip), so
    under ``cost`` or ``energy`` jobs stay where the objective put them."""
    if objective not in SIM_OBJECTIVES:
        raise SimInputError(f"--objective must be one of {', '.join(SIM_OBJECTIVES)}, "
                            f"got {objective!r}")
    for policy in policies:
        core: Policy | None = getattr(policy, "policy", None)
        if isinstance(core, Policy):
            policy.policy = replace(core, default_objective=objective)  # type: ignore[attr-defined]
        knobs: MigrationKnobs | None = getattr(policy, "migration", None)
        if objective != "fastest" and isinstance(knobs, MigrationKnobs):
            policy.migration = replace(knobs, enabled=False)  # type: ignore[attr-defined]


def with_start_then_migrate(policies: Sequence[object], slack: float, margin: float,
                            defrag: bool) -> None:
    """Set the start-then-migrate slack and margin (``Policy``) and whether
    consolidating moves run, on every policy that migrates."""
    if slack < 0 or margin < 1:
        raise SimInputError("--start-slack must be >= 0 and --start-margin >= 1")
    for policy in policies:
        knobs: MigrationKnobs | None = getattr(policy, "migration", None)
        core: Policy | None = getattr(policy, "policy", None)
        if isinstance(knobs, MigrationKnobs) and knobs.enabled and isinstance(core, Policy):
            policy.policy = replace(  # type: ignore[attr-defined]
                core, start_then_migrate_slack=slack, start_then_migrate_margin=margin)
            policy.defrag = defrag  # type: ignore[attr-defined]
