"""Iluvatar CoreX GPUs through ``ixsmi``, which takes nvidia-smi's query flags.

One CSV line per GPU with the same fields the NVIDIA adapter asks for (a
BI-V150 board shows as two GPUs). Unsupported readings print ``[N/A]``
(telemetry 0); a reading of ``ERR!`` or a bracketed error such as
``[GPU is lost]`` marks the device unhealthy; a line with the wrong number
of fields (output cut short) is skipped with a warning.
"""

from __future__ import annotations

import logging

from agents.accelerators._parse import MIB, is_error, is_missing, number, reading
from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)

QUERY_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used",
                "utilization.gpu", "temperature.gpu", "power.draw")


class IluvatarAdapter(ToolAdapter):
    """Iluvatar GPUs (BI-V100, BI-V150, MR-V100...) from ``ixsmi``."""

    family = "iluvatar"
    command = ("ixsmi", "--format=csv,noheader,nounits",
               "--query-gpu=" + ",".join(QUERY_FIELDS))

    def parse(self, output: str) -> list[DeviceInfo]:
        devices = []
        for line in output.splitlines():
            if line.strip():
                device = self.parse_line(line)
                if device is not None:
                    devices.append(device)
        return devices

    def parse_line(self, line: str) -> DeviceInfo | None:
        """One CSV line to a device; None (with a warning) if unusable."""
        values = [v.strip() for v in line.split(",")]
        index = number(values[0]) if len(values) == len(QUERY_FIELDS) else None
        if index is None:
            log.warning("skipping ixsmi line with %d fields (want %d): %r",
                        len(values), len(QUERY_FIELDS), line[:120])
            return None
        raw = dict(zip(QUERY_FIELDS, values, strict=True))
        faults = [f"{name}={value}" for name, value in raw.items()
                  if is_error(value) or (value.startswith("[") and not is_missing(value))]
        name = "" if raw["name"].startswith("[") else raw["name"]
        return self.device(
            index=int(index), uuid=raw["uuid"] if not raw["uuid"].startswith("[") else "",
            vendor_name=name, memory_bytes=int(reading(raw["memory.total"]) * MIB),
            faults=faults, utilization_percent=reading(raw["utilization.gpu"]),
            memory_used_bytes=reading(raw["memory.used"]) * MIB,
            temperature_celsius=reading(raw["temperature.gpu"]),
            power_watts=reading(raw["power.draw"]))
