"""The chip catalogue: accelerator families and models, loaded from data.

Adding a model is adding an entry to ``chips.yaml``; adding a family is an
entry there plus one adapter file under ``agents/accelerators/``. Model names
are matched case-insensitively, ignoring spaces, dashes and underscores, so
``Ascend910B3``, ``910b`` and ``ASCEND 910B`` all find the 910B profile.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

GIB = 1024**3
GB = 1000**3


@dataclass(frozen=True)
class FamilyProfile:
    """How to launch work on one accelerator family."""

    name: str
    resource_names: tuple[str, ...]
    resource_name_prefixes: tuple[str, ...]
    visible_devices_env: tuple[str, ...]
    container_visible_devices_env: tuple[str, ...]
    query_tool: str
    torch_device: str
    dist_backend: str


@dataclass(frozen=True)
class ChipProfile:
    """Facts about one accelerator model. ``tflops`` is a prior for speed."""

    model: str
    family: str
    tflops: float
    memory_bytes: int
    interconnect: str = ""
    source: str = ""
    aliases: tuple[str, ...] = ()
    generic: bool = False  # True for a model the catalogue does not know
    power_w: float = 0.0  # TDP / board power per device in watts; 0 = unknown


def normalise(name: str) -> str:
    """The lookup key of a model name: lower case, alphanumerics only."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


class UnknownModelError(KeyError):
    """Raised by :meth:`Catalogue.chip` for a model with no entry."""


@dataclass(frozen=True)
class Catalogue:
    reference_model: str
    families: Mapping[str, FamilyProfile]
    models: Mapping[str, ChipProfile]
    _index: Mapping[str, str] = field(repr=False)

    # -- lookups -----------------------------------------------------------
    def family(self, name: str) -> FamilyProfile:
        """The profile of a family by its catalogue name (KeyError if none)."""
        return self.families[name.lower()]

    def has_family(self, name: str) -> bool:
        return name.lower() in self.families

    def find_model(self, name: str) -> ChipProfile | None:
        """The profile for a model name or alias, or None."""
        key = self._index.get(normalise(name))
        if key is None:
            key = self._vendor_name_match(name)
        return self.models[key] if key else None

    def chip(self, name: str) -> ChipProfile:
        """Like :meth:`find_model` but raises :class:`UnknownModelError`."""
        found = self.find_model(name)
        if found is None:
            raise UnknownModelError(name)
        return found

    def chip_or_generic(self, name: str, family: str, memory_bytes: int = 0) -> ChipProfile:
        """A known profile, or a generic one for an unknown model.

        Unknown hardware still works: it is scheduled at the reference chip's
        speed until measured throughput says otherwise.
        """
        found = self.find_model(name)
        if found is not None:
            return found
        log.warning("unknown accelerator model %r (family %s): using a generic profile",
                    name, family)
        return ChipProfile(model=name, family=family, tflops=self.reference.tflops,
                           memory_bytes=memory_bytes, source="generic", generic=True,
                           power_w=self.reference.power_w)

    @property
    def reference(self) -> ChipProfile:
        return self.models[self.reference_model]

    def relative_speed(self, model: str) -> float:
        """Peak-throughput ratio of ``model`` to the reference chip (prior)."""
        chip = self.find_model(model)
        if chip is None or chip.tflops <= 0:
            return 1.0
        return chip.tflops / self.reference.tflops

    def power_w(self, model: str) -> float:
        """Watts per device of ``model`` (TDP); an unknown model is assumed to
        draw what the reference chip draws, as it is assumed to run at its
        speed."""
        chip = self.find_model(model)
        return self.reference.power_w if chip is None else chip.power_w

    def family_for_resource(self, resource_name: str) -> str | None:
        """The family a Kubernetes extended-resource name belongs to."""
        for fam in self.families.values():
            if resource_name in fam.resource_names:
                return fam.name
            if any(resource_name.startswith(p) for p in fam.resource_name_prefixes):
                return fam.name
        return None

    def models_of(self, family: str) -> list[ChipProfile]:
        return [m for m in self.models.values() if m.family == family]

    def _vendor_name_match(self, name: str) -> str | None:
        # Vendor tools print decorated names ("NVIDIA H100 80GB HBM3",
        # "Ascend910B3"): fall back to the longest catalogue key contained in it.
        norm = normalise(name)
        hits = [k for k in self._index if len(k) >= 3 and k in norm]
        return self._index[max(hits, key=len)] if hits else None


def _family(name: str, raw: Mapping[str, Any]) -> FamilyProfile:
    return FamilyProfile(
        name=name,
        resource_names=tuple(raw.get("resource_names") or ()),
        resource_name_prefixes=tuple(raw.get("resource_name_prefixes") or ()),
        visible_devices_env=tuple(raw.get("visible_devices_env") or ()),
        container_visible_devices_env=tuple(raw.get("container_visible_devices_env") or ()),
        query_tool=str(raw.get("query_tool") or ""),
        torch_device=str(raw["torch_device"]),
        dist_backend=str(raw["dist_backend"]),
    )


def _chip(model: str, raw: Mapping[str, Any]) -> ChipProfile:
    return ChipProfile(
        model=model,
        family=str(raw["family"]),
        tflops=float(raw["tflops"]),
        memory_bytes=int(float(raw.get("memory_gb", 0)) * GB),
        interconnect=str(raw.get("interconnect") or ""),
        source=str(raw.get("source") or ""),
        aliases=tuple(str(a) for a in raw.get("aliases") or ()),
        power_w=_power(model, raw.get("power_w")),
    )


def _power(model: str, value: Any) -> float:
    """A model's power in watts: a number >= 0 (absent = 0, unknown)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"catalogue: model {model} power_w must be a number >= 0, got {value!r}")
    return float(value)


def _build_index(models: Iterable[ChipProfile]) -> dict[str, str]:
    index: dict[str, str] = {}
    for chip in models:
        for name in (chip.model, *chip.aliases):
            key = normalise(name)
            other = index.setdefault(key, chip.model)
            if other != chip.model:
                raise ValueError(f"catalogue: name {name!r} is used by {other} and {chip.model}")
    return index


def parse_catalogue(data: Mapping[str, Any]) -> Catalogue:
    """Build a catalogue from its YAML structure, checking consistency."""
    families = {n.lower(): _family(n.lower(), raw) for n, raw in data["families"].items()}
    models = {str(n): _chip(str(n), raw) for n, raw in data["models"].items()}
    for chip in models.values():
        if chip.family not in families:
            raise ValueError(f"catalogue: model {chip.model} names unknown family {chip.family}")
    reference = str(data.get("reference_model", "A100"))
    if reference not in models:
        raise ValueError(f"catalogue: reference model {reference} has no entry")
    return Catalogue(reference, families, models, _build_index(models.values()))


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Load a catalogue file, or the packaged default when ``path`` is None."""
    if path is None:
        return default_catalogue()
    with open(path, encoding="utf-8") as fh:
        return parse_catalogue(yaml.safe_load(fh))


@cache
def default_catalogue() -> Catalogue:
    text = resources.files(__package__).joinpath("chips.yaml").read_text(encoding="utf-8")
    return parse_catalogue(yaml.safe_load(text))
