"""Kunlunxin XPUs through ``xpu-smi -m`` (machine-readable, one line per device).

Each line is a fixed sequence of whitespace-separated fields with the model
name quoted (``"P800 OAM"``), so lines are split shell-style. Known fields
(1-based, as vendor scripts use them): $1 PCI bus id, $2 device id, $5
temperature °C, $9 power W, $18 used MiB, $19 total MiB, $20 utilisation %,
$22 model name. The other fields are undocumented here; the parser reads only
these. There is no header and no documented health column, so (unverified)
a device whose fields carry an error marker (``ERR``, ``Error``) is reported
unhealthy; a line too short or without a numeric device id is skipped with
a warning (output cut short).
"""

from __future__ import annotations

import logging
import shlex

from agents.accelerators._parse import MIB, is_error, number, reading
from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)

# 0-based positions of the fields read (see the module docstring).
BUS, DEVICE, TEMPERATURE, POWER, USED_MIB, TOTAL_MIB, UTILISATION, MODEL = (
    0, 1, 4, 8, 17, 18, 19, 21)


class KunlunxinAdapter(ToolAdapter):
    """Kunlunxin XPUs (P800, R200...) from ``xpu-smi -m``."""

    family = "kunlunxin"
    command = ("xpu-smi", "-m")

    def parse(self, output: str) -> list[DeviceInfo]:
        devices = []
        for line in output.splitlines():
            if line.strip():
                device = self.parse_line(line)
                if device is not None:
                    devices.append(device)
        return devices

    def parse_line(self, line: str) -> DeviceInfo | None:
        """One device line; None (with a warning) when it is not one."""
        try:
            fields = shlex.split(line)
        except ValueError:  # an unbalanced quote: the line was cut
            fields = []
        index = number(fields[DEVICE]) if len(fields) > MODEL else None
        if index is None:
            log.warning("skipping xpu-smi -m line that is not a device row: %r", line[:120])
            return None
        faults = [f"field {n + 1}={value}" for n, value in enumerate(fields) if is_error(value)]
        return self.device(
            index=int(index), uuid=f"XPU-{fields[BUS]}", vendor_name=fields[MODEL],
            memory_bytes=int(reading(fields[TOTAL_MIB]) * MIB), faults=faults,
            utilization_percent=reading(fields[UTILISATION]),
            memory_used_bytes=reading(fields[USED_MIB]) * MIB,
            temperature_celsius=reading(fields[TEMPERATURE]),
            power_watts=reading(fields[POWER]))
