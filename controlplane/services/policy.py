"""The scheduling policy file: YAML in, a validated :class:`Policy` out.

Read once at server start (``--policy PATH`` / ``XINHE_POLICY_PATH``; the
Helm chart mounts one). A bad file stops the start with a
:class:`PolicyError` naming the offending key, because a typo silently
ignored (a quota that never applies) is worse than a server that refuses to
start. Every key is optional; missing keys keep :class:`Policy`'s defaults::

    default_runtime_s: 3600         # runtime assumed without an estimate
    wait_for_faster_margin: 1.5     # ratio >= 1
    max_placements_per_round: 0     # 0 = no bound
    max_reservations_per_round: 1024
    fair_share: true                # weighted fair share between tenants
    tenant_weights: {lab-a: 2, lab-b: 1}
    quotas:                         # tenant -> family or model -> quota
      lab-a:
        910B: {devices: 8, borrow_limit: 4}   # borrow_limit: null = unlimited
      lab-b:
        ascend: {devices: 0}
    max_preemptions_per_round: 8    # 0 = never preempt
    preemption_cooldown_s: 300
    default_objective: fastest      # fastest | cost | energy | pinned
    queue_objectives: {lab-a/batch: cost}   # per queue; a job's own wins
    transfer_penalty_s:             # data region -> pool region -> seconds a
      east: {west: 1800}            # batch job there holds its devices longer
    default_transfer_penalty_s: 0   # any other pair of different regions
    migration: {enabled: false}     # policy-triggered migration (services/migration_policy)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from controlplane.scheduler.core_objective import OBJECTIVES
from controlplane.scheduler.types import Policy, Quota
from controlplane.services.migration_policy import (
    MigrationPolicy,
    MigrationPolicyError,
    parse_migration,
)

# key -> (type, lower bound). Bools are checked apart (bool is an int).
_NUMBERS: dict[str, tuple[type, float]] = {
    "default_runtime_s": (float, 0.0),
    "wait_for_faster_margin": (float, 1.0),
    "max_placements_per_round": (int, 0),
    "max_reservations_per_round": (int, 0),
    "max_preemptions_per_round": (int, 0),
    "preemption_cooldown_s": (float, 0.0),
    "default_transfer_penalty_s": (float, 0.0),
}
_QUOTA_KEYS = frozenset({"devices", "borrow_limit"})
KNOWN_KEYS = frozenset({*_NUMBERS, "fair_share", "tenant_weights", "quotas",
                        "default_objective", "queue_objectives", "transfer_penalty_s",
                        "migration"})


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the key."""


def load_policy(path: str | Path) -> Policy:
    """The Policy the file at ``path`` describes. PolicyError when the file
    is missing, is not YAML, or has an unknown key or a bad value."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(f"policy file {path}: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"policy file {path} is not valid YAML: {err}") from err
    try:
        return parse_policy(data)
    except PolicyError as err:
        raise PolicyError(f"policy file {path}: {err}") from err


def load_migration_policy(path: str | Path) -> MigrationPolicy:
    """The ``migration:`` section of the policy file at ``path`` (defaults: off).
    Call after :func:`load_policy`, which reports a bad file first."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    section = data.get("migration") if isinstance(data, Mapping) else None
    try:
        return parse_migration(section)
    except MigrationPolicyError as err:
        raise PolicyError(f"policy file {path}: {err}") from err


def parse_policy(data: Any) -> Policy:
    """The Policy a decoded YAML document describes (None = all defaults)."""
    if data is None:
        return Policy()
    if not isinstance(data, Mapping):
        raise PolicyError("the document must be a mapping of policy keys")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(KNOWN_KEYS))}")
    changes: dict[str, Any] = {}
    for key, (kind, low) in _NUMBERS.items():
        if key in data:
            changes[key] = _number(key, data[key], kind, low)
    if "fair_share" in data:
        if not isinstance(data["fair_share"], bool):
            raise PolicyError(f"fair_share: expected true or false, got {data['fair_share']!r}")
        changes["fair_share"] = data["fair_share"]
    if "tenant_weights" in data:
        changes["tenant_weights"] = _weights(data["tenant_weights"])
    if "quotas" in data:
        changes["quotas"] = _quotas(data["quotas"])
    if "default_objective" in data:
        changes["default_objective"] = _objective("default_objective", data["default_objective"])
    if "queue_objectives" in data:
        changes["queue_objectives"] = _queue_objectives(data["queue_objectives"])
    if "transfer_penalty_s" in data:
        changes["transfer_penalty_s"] = _penalties(data["transfer_penalty_s"])
    if "migration" in data:  # validated here; load_migration_policy returns it
        try:
            parse_migration(data["migration"])
        except MigrationPolicyError as err:
            raise PolicyError(str(err)) from err
    return replace(Policy(), **changes)


def _objective(key: str, value: Any) -> str:
    if value not in OBJECTIVES:
        raise PolicyError(f"{key}: expected one of {', '.join(OBJECTIVES)}, got {value!r}")
    return str(value)


def _queue_objectives(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError("queue_objectives: expected a mapping of tenant/queue -> objective")
    out = []
    for queue, objective in value.items():
        key = f"queue_objectives.{queue}"
        _name(key, queue)
        out.append((str(queue), _objective(key, objective)))
    return tuple(sorted(out))


def _penalties(value: Any) -> tuple[tuple[str, str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError("transfer_penalty_s: expected a mapping of data region -> "
                          "pool region -> seconds")
    out = []
    for home, per_region in value.items():
        _name(f"transfer_penalty_s.{home}", home)
        if not isinstance(per_region, Mapping) or not per_region:
            raise PolicyError(f"transfer_penalty_s.{home}: expected a mapping of pool region "
                              "-> seconds")
        for there, seconds in per_region.items():
            key = f"transfer_penalty_s.{home}.{there}"
            _name(key, there)
            out.append((str(home), str(there), float(_number(key, seconds, float, 0.0))))
    return tuple(sorted(out))


def _number(key: str, value: Any, kind: type, low: float) -> float | int:
    """``value`` as ``kind`` (int or float), finite and >= ``low``."""
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        what = "an integer" if kind is int else "a number"
        raise PolicyError(f"{key}: expected {what}, got {value!r}")
    if not math.isfinite(value) or value < low:
        raise PolicyError(f"{key}: must be a finite number >= {low:g}, got {value!r}")
    return kind(value)


def _weights(value: Any) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError("tenant_weights: expected a mapping of tenant -> weight")
    out = []
    for tenant, weight in value.items():
        key = f"tenant_weights.{tenant}"
        _name(key, tenant)
        number = _number(key, weight, float, 0.0)
        if number <= 0:
            raise PolicyError(f"{key}: a weight must be > 0, got {weight!r}")
        out.append((str(tenant), float(number)))
    return tuple(sorted(out))


def _quotas(value: Any) -> tuple[Quota, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError("quotas: expected a mapping of tenant -> family or model -> quota")
    out = []
    for tenant, per_chip in value.items():
        _name(f"quotas.{tenant}", tenant)
        if not isinstance(per_chip, Mapping) or not per_chip:
            raise PolicyError(f"quotas.{tenant}: expected a mapping of family or model -> "
                              "{devices: N, borrow_limit: M}")
        for chip, quota in per_chip.items():
            out.append(_quota(f"quotas.{tenant}.{chip}", str(tenant), chip, quota))
    return tuple(out)


def _quota(key: str, tenant: str, chip: Any, value: Any) -> Quota:
    _name(key, chip)
    if not isinstance(value, Mapping):
        raise PolicyError(f"{key}: expected {{devices: N, borrow_limit: M}}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in _QUOTA_KEYS)
    if unknown:
        raise PolicyError(f"{key}: unknown key(s) {', '.join(unknown)}; known: "
                          "borrow_limit, devices")
    if "devices" not in value:
        raise PolicyError(f"{key}.devices: required (the nominal quota)")
    devices = int(_number(f"{key}.devices", value["devices"], int, 0))
    limit = value.get("borrow_limit")
    borrow = None if limit is None else int(_number(f"{key}.borrow_limit", limit, int, 0))
    return Quota(tenant=tenant, family_or_model=str(chip), devices=devices, borrow_limit=borrow)


def _name(key: str, name: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"{key}: a tenant, family or model name must be a non-empty "
                          f"string, got {name!r}")
