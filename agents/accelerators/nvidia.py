"""NVIDIA GPUs through ``nvidia-smi`` (the CSV query interface over NVML).

The tool prints one CSV line per GPU. Fields the GPU does not support read
``[N/A]`` or ``[Not Supported]`` (telemetry then reads 0); a field that
reads ``ERR!`` or another bracketed error (``[GPU is lost]``,
``[Unknown Error]``) marks the device unhealthy. Lines that cannot be parsed
at all are skipped with a warning rather than failing the whole inventory.

Tools that copy nvidia-smi's query flags (Iluvatar's ``ixsmi``) reuse this
parser: their adapter subclasses this one and changes ``family`` and
``command`` only.
"""

from __future__ import annotations

import logging

from agents.accelerators._parse import MIB, is_error, is_missing, number, reading
from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)

QUERY_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used",
                "utilization.gpu", "temperature.gpu", "power.draw")
QUERY_FLAGS = ("--format=csv,noheader,nounits", "--query-gpu=" + ",".join(QUERY_FIELDS))
COMMAND = ("nvidia-smi", *QUERY_FLAGS)


class NvidiaAdapter(ToolAdapter):
    """Devices from ``nvidia-smi``; model names mapped to the catalogue."""

    family = "nvidia"
    command = COMMAND

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
            log.warning("skipping %s line with %d fields (want %d, index first): %r",
                        self.command[0], len(values), len(QUERY_FIELDS), line[:120])
            return None
        raw = dict(zip(QUERY_FIELDS, values, strict=True))
        faults = [f"{name}={value}" for name, value in raw.items()
                  if is_error(value) or (value.startswith("[") and not is_missing(value))]
        return self.device(
            index=int(index), uuid="" if raw["uuid"].startswith("[") else raw["uuid"],
            vendor_name="" if raw["name"].startswith("[") else raw["name"],
            memory_bytes=int(reading(raw["memory.total"]) * MIB), faults=faults,
            utilization_percent=reading(raw["utilization.gpu"]),
            memory_used_bytes=reading(raw["memory.used"]) * MIB,
            temperature_celsius=reading(raw["temperature.gpu"]),
            power_watts=reading(raw["power.draw"]))
