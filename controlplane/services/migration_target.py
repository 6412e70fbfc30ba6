"""Migration targets: what `xinhe migrate JOB --to TARGET` names, and how a
target narrows where the job may be placed.

A target is a family ("ascend"), a pool (its exact name) or a model ("910B",
or an alias), looked up in that order: an operator's pool name wins over a
fuzzy model match ("910b-west" is a pool, not the 910B). It is stored on the
job as ``kind:name`` ("family:ascend", "model:910B", "pool:910b-west") so it
reads back unambiguously. The migration policy's consolidating moves pin a
job to one node of its own pool: ``node:<pool>:<node>`` (no user input
names a node). It never widens what the job's spec allows: a target outside
the spec's families/models is refused, and a pinned job is scheduled on the
intersection. Pure functions: no store, no clock, no network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.model.catalogue import Catalogue

FAMILY, MODEL, POOL = "family", "model", "pool"
# A consolidating move's pin to one node: name "<pool>:<node>" (set by the
# migration policy, never resolved from user input).
NODE = "node"


class TargetError(ValueError):
    """The target names nothing known (``unknown``) or lies outside the spec."""

    def __init__(self, message: str, unknown: bool) -> None:
        super().__init__(message)
        self.unknown = unknown


@dataclass(frozen=True)
class Target:
    """A resolved target: its kind and its canonical name."""

    kind: str  # FAMILY | MODEL | POOL
    name: str

    @property
    def pin(self) -> str:
        """How the target is stored in ``Job.placement_target``."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Filters:
    """Where a job may run: the core's families/models/pools filters."""

    families: frozenset[str]
    models: frozenset[str]
    pools: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()


def resolve(target: str, catalogue: Catalogue, pools: Iterable[str]) -> Target:
    """Family, then pool, then model (or alias); TargetError(unknown) if none."""
    name = target.strip()
    if not name:
        raise TargetError("required: a family, model or pool name", unknown=True)
    if catalogue.has_family(name):
        return Target(FAMILY, name.lower())
    if name in set(pools):
        return Target(POOL, name)
    chip = catalogue.find_model(name)
    if chip is not None:
        return Target(MODEL, chip.model)
    families = ", ".join(sorted(catalogue.families))
    raise TargetError(f"{target!r} is not a known family ({families}), model or pool",
                      unknown=True)


def narrow(base: Filters, target: Target, catalogue: Catalogue) -> Filters:
    """``base`` (the spec's filters) restricted to ``target``.

    Raises TargetError (not unknown) when the spec excludes the target: a
    migration may move a job between the chips it allows, never beyond.
    """
    anything = not base.families and not base.models
    if target.kind == NODE:
        pool, _, node = target.name.partition(":")
        return Filters(base.families, base.models, frozenset({pool}), frozenset({node}))
    if target.kind == POOL:
        return Filters(base.families, base.models, frozenset({target.name}))
    if target.kind == MODEL:
        chip = catalogue.chip(target.name)
        if anything or chip.family in base.families or chip.model in base.models:
            return Filters(frozenset(), frozenset({chip.model}), base.pools)
        raise TargetError(f"model {chip.model} is outside the job's allowed accelerators "
                          f"({_allowed(base)})", unknown=False)
    if anything or target.name in base.families:
        return Filters(frozenset({target.name}), frozenset(), base.pools)
    models = frozenset(m for m in base.models
                       if (chip := catalogue.find_model(m)) and chip.family == target.name)
    if models:
        return Filters(frozenset(), models, base.pools)
    raise TargetError(f"family {target.name} is outside the job's allowed accelerators "
                      f"({_allowed(base)})", unknown=False)


def pinned(base: Filters, placement_target: str, catalogue: Catalogue) -> Filters:
    """The filters a job with this stored pin (``kind:name``) is scheduled under.

    The pin was validated when the migration was accepted; should it no
    longer fit (a changed catalogue, a malformed value), the job falls back
    to its spec's filters rather than becoming unplaceable.
    """
    kind, _, name = placement_target.partition(":")
    if kind not in (FAMILY, MODEL, POOL, NODE) or not name:
        return base
    if kind == NODE and not all(name.partition(":")[::2]):
        return base
    if kind == MODEL and catalogue.find_model(name) is None:
        return base
    try:
        return narrow(base, Target(kind, name), catalogue)
    except TargetError:
        return base


def _allowed(base: Filters) -> str:
    parts = [f"families {sorted(base.families)}"] if base.families else []
    if base.models:
        parts.append(f"models {sorted(base.models)}")
    return " or ".join(parts) or "any"
