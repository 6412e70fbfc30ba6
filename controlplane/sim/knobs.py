"""Quota and preemption knobs of a simulation, from command-line text.

``--quotas lab-a:ascend=16+8,lab-b:nvidia=32`` gives lab-a a nominal 16
Ascend devices and lets it borrow 8 more while others' capacity is idle;
lab-b has 32 NVIDIA devices and may borrow without limit (no ``+N``).
``+0`` forbids borrowing. A family or a catalogue model may be named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

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
