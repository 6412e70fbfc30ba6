"""Tenant quotas per accelerator family or model, with borrowing.

A ``Quota(tenant, family_or_model, devices, borrow_limit)`` applies to every
group whose family or model equals ``family_or_model``. Usage is the
devices the tenant's running jobs hold there (their model mapped to a
family through the snapshot's nodes) plus what this round placed. A job
within the nominal quota is admitted; beyond it, up to ``borrow_limit``
more devices, it is admitted as *borrowed* (idle capacity, reclaimed by
preemption when an owner needs it); beyond that it waits, with the numbers
in the reason. When several quotas match a group (family and model), the
job must pass all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from controlplane.scheduler.core_fleet import Group
from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Quota


class Admit(Enum):
    NOMINAL = "nominal"  # within every matching nominal quota (or none match)
    BORROW = "borrow"  # beyond some nominal quota, within its borrow limit
    REFUSE = "refuse"


# (charges when made, the group list, verdict per group, refusal)
_Memo = tuple[int, Sequence[Group], dict[Group, Admit], str]


class QuotaBook:
    """Quota usage of one round. ``active`` is False when no quota is set,
    so the hot path costs one attribute read."""

    def __init__(self, quotas: Sequence[Quota], snapshot: ClusterSnapshot) -> None:
        self.by_tenant: dict[str, list[Quota]] = {}
        for quota in quotas:
            _check(quota)
            self.by_tenant.setdefault(quota.tenant, []).append(quota)
        self.active = bool(self.by_tenant)
        self.used: dict[tuple[str, str], int] = {}
        # Verdicts only change when the tenant's usage does: per tenant, a
        # count of charges, and per (tenant, devices, group list) the last
        # verdicts with the count they were made at.
        self._charges: dict[str, int] = {}
        self._memo: dict[tuple[str, int, int], _Memo] = {}
        if self.active:
            family_of = {n.model: n.family for n in snapshot.nodes}
            for run in snapshot.running:
                if run.tenant in self.by_tenant:
                    family = family_of.get(run.model, "")
                    self.charge(run.tenant, family, run.model, run.devices)

    def matching(self, tenant: str, family: str, model: str) -> list[Quota]:
        return [q for q in self.by_tenant.get(tenant, ())
                if q.family_or_model in (family, model)]

    def check(self, tenant: str, family: str, model: str, need: int) -> tuple[Admit, str]:
        """May ``tenant`` take ``need`` more devices of (family, model)?
        Returns the verdict and, when refused, the reason."""
        verdict = Admit.NOMINAL
        for quota in self.matching(tenant, family, model):
            used = self.used.get((tenant, quota.family_or_model), 0)
            if used + need <= quota.devices:
                continue
            limit = quota.borrow_limit
            if limit is not None and used + need > quota.devices + limit:
                return Admit.REFUSE, refusal(quota, used)
            verdict = Admit.BORROW
        return verdict, ""

    def admits(self, job: PendingJob,
               groups: Sequence[Group]) -> tuple[dict[Group, Admit] | None, str]:
        """The verdict per group for ``job`` (None: no quota of its tenant
        applies anywhere) and the refusal when every group refuses."""
        if not self.active or job.tenant not in self.by_tenant:
            return None, ""
        tenant, need = job.tenant, job.replicas * job.devices_per_replica
        charges = self._charges.get(tenant, 0)
        key = (tenant, need, id(groups))
        memo = self._memo.get(key)
        if memo is not None and memo[0] == charges and memo[1] is groups:
            return memo[2], memo[3]  # shared: callers only read it
        first = ""
        admits: dict[Group, Admit] = {}
        for group in groups:
            admits[group], why = self.check(tenant, group.family, group.model, need)
            first = first or why
        refusal_ = first if all(a is Admit.REFUSE for a in admits.values()) else ""
        self._memo[key] = (charges, groups, admits, refusal_)
        return admits, refusal_

    def borrows_only(self, job: PendingJob, groups: Sequence[Group]) -> bool:
        """Could ``job`` only borrow (no group within its nominal quota)?"""
        admits, _ = self.admits(job, groups)
        if admits is None:
            return False
        verdicts = set(admits.values())
        return Admit.BORROW in verdicts and Admit.NOMINAL not in verdicts

    def charge(self, tenant: str, family: str, model: str, devices: int) -> None:
        """Count ``devices`` against every quota of ``tenant`` they fall under."""
        for name in {q.family_or_model for q in self.matching(tenant, family, model)}:
            key = (tenant, name)
            self.used[key] = self.used.get(key, 0) + devices
        self._charges[tenant] = self._charges.get(tenant, 0) + 1


def refusal(quota: Quota, used: int) -> str:
    """"quota: tenant lab-a uses 16/16 ascend devices (nominal 16, borrowing
    0 of 8 allowed while others' capacity is idle)"."""
    borrowing = max(used - quota.devices, 0)
    return (
        f"quota: tenant {quota.tenant} uses {used}/{quota.devices} "
        f"{quota.family_or_model} devices (nominal {quota.devices}, borrowing "
        f"{borrowing} of {quota.borrow_limit} allowed while others' capacity is idle)"
    )


def _check(quota: Quota) -> None:
    """Bad configuration is an error, not a silent zero."""
    if not quota.tenant or not quota.family_or_model:
        raise ValueError(f"quota needs a tenant and a family or model: {quota}")
    if quota.devices < 0 or (quota.borrow_limit is not None and quota.borrow_limit < 0):
        raise ValueError(f"quota devices and borrow limit must be >= 0: {quota}")
