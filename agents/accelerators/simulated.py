"""Simulated devices: run a fleet of any chip on a laptop.

``--simulate 910B:8`` makes an agent present eight Ascend 910B devices. The
family, memory and launch environment come from the catalogue exactly as on
real hardware; only detection and telemetry are invented. Telemetry follows
which devices hold a replica, so dashboards and utilisation metrics move
plausibly during a demo.
"""

from __future__ import annotations

import logging
import random
import threading
import zlib
from collections.abc import Sequence

from agents.accelerators.base import AcceleratorAdapter, DeviceInfo
from controlplane.model.catalogue import Catalogue, ChipProfile, default_catalogue

log = logging.getLogger(__name__)

# Nominal board power in watts; only shapes the simulated power readings.
NOMINAL_TDP_WATTS = {
    "H100": 700.0, "H800": 700.0, "H20": 400.0, "A100": 400.0, "L40S": 350.0,
    "V100": 300.0, "910B": 400.0, "910B4": 350.0, "MLU370-X8": 250.0,
    "MLU590": 350.0, "K100_AI": 350.0, "P800": 400.0, "MI300X": 750.0,
}
DEFAULT_TDP_WATTS = 300.0


def parse_spec(spec: str, catalogue: Catalogue | None = None) -> tuple[ChipProfile, int]:
    """``"MODEL:COUNT"`` to (chip profile, count); ValueError naming the spec."""
    model, sep, count_text = spec.strip().rpartition(":")
    if not sep or not model.strip():
        raise ValueError(f"simulate spec {spec!r}: expected MODEL:COUNT, e.g. 910B:8")
    try:
        count = int(count_text)
    except ValueError:
        raise ValueError(f"simulate spec {spec!r}: count {count_text!r} is not a number") from None
    if count < 1:
        raise ValueError(f"simulate spec {spec!r}: count must be at least 1")
    chip = (catalogue or default_catalogue()).find_model(model.strip())
    if chip is None:
        raise ValueError(f"simulate spec {spec!r}: unknown accelerator model {model.strip()!r}")
    return chip, count


class SimulatedAdapter(AcceleratorAdapter):
    """COUNT devices of one catalogue model, numbered from ``first_index``."""

    def __init__(self, spec: str, node: str = "sim", first_index: int = 0,
                 catalogue: Catalogue | None = None, seed: int | None = None) -> None:
        chip, count = parse_spec(spec, catalogue)
        self.spec = spec
        self.chip = chip
        self.family = chip.family
        self.indices = tuple(range(first_index, first_index + count))
        self._node = node
        self._tdp = NOMINAL_TDP_WATTS.get(chip.model, DEFAULT_TDP_WATTS)
        self._lock = threading.Lock()
        self._busy: set[int] = set()
        self._unhealthy: dict[int, str] = {}
        default_seed = zlib.crc32(f"{node}/{spec}".encode())
        self._rng = random.Random(default_seed if seed is None else seed)

    def detect(self) -> list[DeviceInfo]:
        with self._lock:
            return [self._device(i) for i in self.indices]

    def mark_busy(self, device_indices: Sequence[int]) -> None:
        with self._lock:
            self._busy.update(i for i in device_indices if i in self.indices)

    def mark_idle(self, device_indices: Sequence[int]) -> None:
        with self._lock:
            self._busy.difference_update(device_indices)

    def mark_unhealthy(self, device_indices: Sequence[int], reason: str) -> None:
        """Simulate a device fault (ECC, lost link) for health-handling tests."""
        with self._lock:
            self._unhealthy.update({i: reason for i in device_indices if i in self.indices})

    def mark_healthy(self, device_indices: Sequence[int]) -> None:
        with self._lock:
            for i in device_indices:
                self._unhealthy.pop(i, None)

    def busy(self) -> set[int]:
        with self._lock:
            return set(self._busy)

    def _device(self, index: int) -> DeviceInfo:
        busy = index in self._busy
        jitter = 1.0 + self._rng.uniform(-0.03, 0.03)
        util, mem_share, temp, power_share = (
            (0.9, 0.6, 65.0, 0.7) if busy else (0.0, 0.01, 35.0, 0.15))
        memory = self.chip.memory_bytes
        return DeviceInfo(
            index=index,
            uuid=f"SIM-{self.chip.model}-{self._node}-{index}",
            family=self.family,
            model=self.chip.model,
            memory_bytes=memory,
            healthy=index not in self._unhealthy,
            utilization_ratio=min(1.0, util * jitter),
            memory_used_bytes=int(memory * mem_share * jitter),
            temperature_celsius=round(temp * jitter, 1),
            power_watts=round(self._tdp * power_share * jitter, 1),
            health_reason=self._unhealthy.get(index, ""),
        )


def simulated_adapters(specs: Sequence[str], node: str = "sim",
                       catalogue: Catalogue | None = None) -> list[SimulatedAdapter]:
    """One adapter per spec, device indices consecutive across them."""
    adapters: list[SimulatedAdapter] = []
    first = 0
    for spec in specs:
        adapter = SimulatedAdapter(spec, node=node, first_index=first, catalogue=catalogue)
        adapters.append(adapter)
        first += len(adapter.indices)
    return adapters
