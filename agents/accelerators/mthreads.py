"""Moore Threads GPUs through ``mthreads-gmi -q`` (an indented ``Key : value`` report).

The report follows nvidia-smi's ``-q`` layout: one ``GPU <bus id>`` section
per device with ``Index``, ``Product Name``, ``GPU UUID`` and the sub-
sections ``Memory Usage`` (``Total``/``Used`` with units), ``Utilization``
(``Gpu``), ``Temperature`` (``GPU Current Temp``) and ``Power Readings``
(``Power Draw``). Exact labels vary between driver releases (unverified
beyond the S3000/S4000 generation), so labels are matched loosely and
sections by prefix. A reading that reports an error marks the device
unhealthy; a section without a memory total (output cut short) is skipped
with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from agents.accelerators._parse import error_fields, field, memory_bytes, number, query_tree
from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)


class MthreadsAdapter(ToolAdapter):
    """Moore Threads GPUs (MTT S4000...) from ``mthreads-gmi -q``."""

    family = "mthreads"
    command = ("mthreads-gmi", "-q")

    def parse(self, output: str) -> list[DeviceInfo]:
        devices: list[DeviceInfo] = []
        for title, section in query_tree(output):
            if not title.upper().startswith("GPU"):
                continue
            device = self._gpu(title, section, order=len(devices))
            if device is not None:
                devices.append(device)
        return devices

    def _gpu(self, title: str, gpu: Mapping[str, Any], order: int) -> DeviceInfo | None:
        memory = _sub(gpu, "FB Memory Usage", "Memory Usage")
        total = memory_bytes(field(memory, "Total"))
        if not total:
            log.warning("skipping mthreads-gmi section %r without a memory total "
                        "(output cut short?)", title)
            return None
        index = number(field(gpu, "Index", "Minor Number"))
        return self.device(
            index=int(index) if index is not None else order,
            uuid=str(field(gpu, "GPU UUID", "UUID") or title.split()[-1]),
            vendor_name=str(field(gpu, "Product Name") or ""), memory_bytes=total,
            faults=error_fields(gpu),
            utilization_percent=number(field(_sub(gpu, "Utilization"), "Gpu")) or 0.0,
            memory_used_bytes=memory_bytes(field(memory, "Used")),
            temperature_celsius=number(field(_sub(gpu, "Temperature"), "GPU Current Temp",
                                             "GPU")) or 0.0,
            power_watts=number(field(_sub(gpu, "Power Readings", "Power"), "Power Draw"))
            or 0.0)


def _sub(section: Mapping[str, Any], *names: str) -> Mapping[str, Any]:
    value = field(section, *names)
    return value if isinstance(value, Mapping) else {}
