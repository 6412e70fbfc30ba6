"""Huawei Ascend NPUs through ``npu-smi info`` (a box table; the tool has no JSON).

Each NPU is one block of the table: a first row ``NPU Name | Health |
Power(W) Temp(C) Hugepages`` and one row per chip ``Chip [Device] | Bus-Id |
AICore(%) Memory-Usage(MB) [HBM-Usage(MB)]``. A 910B has one chip per NPU;
an Atlas 300I Duo (310P) has two. Columns are found by their header names,
not by position, because the set differs between chips and driver versions.

Device indices are the chips' *logical* ids, the numbers
``ASCEND_RT_VISIBLE_DEVICES`` takes: the ``Device`` column where the table
has one, else the chips counted in table order (how ``npu-smi info -m``
numbers them on one-chip-per-NPU hosts). Health ``OK`` and ``Warning`` (a
minor alarm) are healthy; ``Alarm``, ``Critical`` or anything else is not.
A block cut short (no chip row) is skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agents.accelerators._parse import MIB, box_groups, field, number, reading, used_total
from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)

HEALTHY_STATES = {"ok", "warning"}


class AscendAdapter(ToolAdapter):
    """Ascend NPUs (910A/910B/310P...) from ``npu-smi info``."""

    family = "ascend"
    command = ("npu-smi", "info")

    def parse(self, output: str) -> list[DeviceInfo]:
        devices: list[DeviceInfo] = []
        for block in box_groups(output):
            npu, chips = block[0], block[1:]
            if number(field(npu, "npu")) is None:
                log.warning("skipping npu-smi block without an NPU id: %r", npu)
                continue
            if not chips:
                log.warning("skipping NPU %s: npu-smi printed no chip row (output cut short?)",
                            field(npu, "npu"))
                continue
            for chip in chips:
                devices.append(self._chip(npu, chip, logical=len(devices)))
        return devices

    def _chip(self, npu: Mapping[str, str], chip: Mapping[str, str], logical: int) -> DeviceInfo:
        ids = [int(n) for n in str(field(chip, "chip") or "").split() if n.isdigit()]
        device_id = number(field(chip, "device"))
        index = int(device_id) if device_id is not None else logical
        if len(ids) > 1 and device_id is None:  # "Chip  Device" glued into one cell
            index = ids[1]
        used, total = self._memory(chip)
        health = str(field(npu, "health") or "").strip()
        faults = [] if health.lower() in HEALTHY_STATES else [f"health {health or 'unknown'}"]
        bus = str(field(chip, "bus") or "")
        return self.device(
            index=index, uuid=f"NPU-{field(npu, 'npu')}-chip-{ids[0] if ids else 0}-{bus}",
            vendor_name=str(field(npu, "name") or ""), memory_bytes=int(total * MIB),
            faults=faults, utilization_percent=reading(field(chip, "aicore")),
            memory_used_bytes=used * MIB, temperature_celsius=reading(field(npu, "temp")),
            power_watts=reading(field(npu, "power")))

    @staticmethod
    def _memory(chip: Mapping[str, str]) -> tuple[float, float]:
        """(used, total) MiB: HBM where the chip has it, else its DDR memory."""
        for name in ("hbm-usage", "memory-usage"):
            pair = used_total(field(chip, name))
            if pair is not None and pair[1] > 0:
                return pair
        return 0.0, 0.0
