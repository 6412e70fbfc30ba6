"""MetaX GPUs through ``mx-smi`` (an nvidia-smi-style box table).

Each GPU is a block of two rows under the header ``GPU NAME | Bus-id |
GPU-Util`` / ``Temp Pwr:Usage/Cap | Memory-Usage``; columns are found by
header name because the layout is not documented as stable (format
unverified beyond mx-smi 2.x). A reading that reports an error (``ERR``)
marks the device unhealthy; a block missing its second row (output cut
short) is skipped with a warning. The process table below is ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agents.accelerators._parse import (
    box_groups,
    field,
    is_error,
    number,
    reading,
    unit_scale,
    used_total,
)
from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)


class MetaxAdapter(ToolAdapter):
    """MetaX GPUs (C500/C550, N260...) from ``mx-smi``."""

    family = "metax"
    command = ("mx-smi",)

    def parse(self, output: str) -> list[DeviceInfo]:
        devices = []
        for block in box_groups(output):
            if len(block) < 2 or number(field(block[0], "gpu")) is None:
                log.warning("skipping mx-smi block %r: incomplete (output cut short?)", block[0])
                continue
            devices.append(self._gpu({**block[1], **block[0]}))
        return devices

    def _gpu(self, cells: Mapping[str, str]) -> DeviceInfo:
        index = int(number(field(cells, "gpu")) or 0)
        faults = [f"{name}={value}" for name, value in cells.items() if is_error(value)]
        memory = str(field(cells, "memory-usage") or "")
        used, total = used_total(memory) or (0.0, 0.0)
        scale = unit_scale(memory)
        power = str(field(cells, "pwr") or "").split("/")[0]
        return self.device(
            index=index, uuid=f"METAX-{field(cells, 'bus-id') or index}",
            vendor_name=str(field(cells, "name") or ""), memory_bytes=int(total * scale),
            faults=faults, utilization_percent=reading(field(cells, "gpu-util")),
            memory_used_bytes=used * scale, temperature_celsius=reading(field(cells, "temp")),
            power_watts=reading(power))
