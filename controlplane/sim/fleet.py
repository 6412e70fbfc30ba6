"""The simulated fleet: pools of identical nodes, read from a CSV file.

Fleet file columns: ``pool,region,model,nodes,devices_per_node,
cost_per_device_hour``. Model names are the chip catalogue's, matched as the
catalogue matches them (case-insensitive, aliases such as ``Ascend910B3`` or
``K100_AI``); an unknown model is an error naming the line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from controlplane.model.catalogue import Catalogue, ChipProfile, default_catalogue, normalise
from controlplane.sim.csvrows import ENCODING, check_header, dict_reader, integer, number, text
from controlplane.sim.errors import SimInputError

FLEET_COLUMNS = ("pool", "region", "model", "nodes", "devices_per_node", "cost_per_device_hour")


@dataclass(frozen=True)
class Pool:
    """``nodes`` identical nodes of one catalogue model."""

    name: str
    region: str
    model: str  # catalogue model name
    family: str
    nodes: int
    devices_per_node: int
    device_memory_bytes: int
    cost_per_device_hour: float = 0.0

    @property
    def devices(self) -> int:
        return self.nodes * self.devices_per_node


@dataclass(frozen=True)
class Fleet:
    """Pools in file order: the order first-fit baselines walk them in."""

    pools: tuple[Pool, ...]

    @property
    def devices(self) -> int:
        return sum(p.devices for p in self.pools)

    def families(self) -> tuple[str, ...]:
        """Families in fleet order, each once."""
        return tuple(dict.fromkeys(p.family for p in self.pools))

    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.model for p in self.pools))


def make_pool(
    name: str, region: str, model: str, nodes: int, devices_per_node: int,
    cost: float = 0.0, catalogue: Catalogue | None = None,
) -> Pool:
    """A pool of a catalogue model; raises SimInputError for unknown models."""
    cat = catalogue or default_catalogue()
    chip = strict_model(cat, model)
    if not name:
        raise SimInputError("pool: a pool needs a name")
    if nodes < 1 or devices_per_node < 1:
        raise SimInputError(f"pool {name!r}: nodes and devices_per_node must be >= 1")
    if cost < 0:
        raise SimInputError(f"pool {name!r}: cost_per_device_hour must be >= 0")
    return Pool(name, region, chip.model, chip.family, nodes, devices_per_node,
                chip.memory_bytes, cost)


def strict_model(catalogue: Catalogue, name: str) -> ChipProfile:
    """The catalogue model called ``name`` (any case, any of its spellings).

    Stricter than ``Catalogue.find_model``, whose vendor-string fallback
    would read a typo such as ``H1000`` as H100: a file must name a model.
    """
    chip = catalogue.find_model(name)
    if chip is None or normalise(name) not in {normalise(n) for n in (chip.model, *chip.aliases)}:
        known = ", ".join(m for m in catalogue.models)
        raise SimInputError(f"unknown accelerator model {name!r}; the catalogue knows {known}")
    return chip


def read_fleet(path: str | Path, catalogue: Catalogue | None = None) -> Fleet:
    """Parse a fleet CSV; every error names ``path:line``."""
    with open(path, encoding=ENCODING, newline="") as fh:
        return parse_fleet(fh, str(path), catalogue)


def parse_fleet(lines: Iterable[str], source: str, catalogue: Catalogue | None = None) -> Fleet:
    reader = dict_reader(lines)
    check_header(reader.fieldnames, FLEET_COLUMNS, source)
    pools: list[Pool] = []
    for row in reader:
        where = f"{source}:{reader.line_num}"
        try:
            pools.append(make_pool(
                text(row, "pool"), text(row, "region"), text(row, "model"),
                integer(row, "nodes"), integer(row, "devices_per_node"),
                number(row, "cost_per_device_hour", default=0.0), catalogue))
        except SimInputError as exc:
            raise SimInputError(f"{where}: {exc}") from None
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise SimInputError(f"{source}: pool names must be unique")
    if not pools:
        raise SimInputError(f"{source}: no pools")
    return Fleet(tuple(pools))


def write_fleet(fleet: Fleet, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(FLEET_COLUMNS)
        for p in fleet.pools:
            out.writerow([p.name, p.region, p.model, p.nodes, p.devices_per_node,
                          f"{p.cost_per_device_hour:g}"])
