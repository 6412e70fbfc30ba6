"""Cambricon MLUs through ``cnmon info -j`` (JSON, ``{"CnmonInfo": [...]}``).

``cnmon info -j`` writes its report to ``cnmon_info.json`` in the working
directory rather than to stdout, so the default runner runs it in a private
temporary directory and returns that file (or stdout, for versions that
print it). Each entry is one MLU as the driver numbers it (``CardNum``; a
dual-chip MLU370-X8 board appears as two), with ``PhysicalMemUsage``
``{Total, Used}`` in MiB, ``Temperature.Chip``, ``Utilization.MLUAverage``
and ``Power.Usage``. cnmon has no single health field: a device is
unhealthy when it reports uncorrected ECC errors or any reading says
"Error" (format unverified on every driver release; readings it cannot
parse read 0).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.accelerators._parse import MIB, embedded_json, error_fields, field, number, reading
from agents.accelerators._tool import Runner, ToolAdapter
from agents.accelerators.base import DeviceInfo
from controlplane.model.catalogue import Catalogue

log = logging.getLogger(__name__)

REPORT_FILE = "cnmon_info.json"


def run_cnmon(argv: Sequence[str], timeout: float) -> str:
    """Run cnmon in a private directory and return the JSON report it writes."""
    with tempfile.TemporaryDirectory(prefix="xinhe-cnmon-") as work:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=True, cwd=work)
        report = Path(work) / REPORT_FILE
        return report.read_text(encoding="utf-8") if report.exists() else done.stdout


class CambriconAdapter(ToolAdapter):
    """Cambricon MLUs (MLU370, MLU590...) from ``cnmon info -j``."""

    family = "cambricon"
    command = ("cnmon", "info", "-j")

    def __init__(self, runner: Runner | None = None, timeout: float = 10.0,
                 catalogue: Catalogue | None = None) -> None:
        super().__init__(runner=runner or run_cnmon, timeout=timeout, catalogue=catalogue)

    def parse(self, output: str) -> list[DeviceInfo]:
        report = embedded_json(output)
        cards = report.get("CnmonInfo") if isinstance(report, Mapping) else None
        if not isinstance(cards, list):
            raise ValueError("no CnmonInfo list in the report")
        devices = []
        for card in cards:
            index = number(card.get("CardNum")) if isinstance(card, Mapping) else None
            if index is None:
                log.warning("skipping cnmon entry without a CardNum: %r", card)
                continue
            devices.append(self._card(int(index), card))
        return devices

    def _card(self, index: int, card: Mapping[str, Any]) -> DeviceInfo:
        memory = _section(card, "PhysicalMemUsage")
        return self.device(
            index=index, uuid=str(card.get("UUID") or f"MLU-{index}"),
            vendor_name=str(field(card, "ProductName", "Model") or ""),
            memory_bytes=int(reading(field(memory, "Total")) * MIB),
            faults=_faults(card),
            utilization_percent=reading(field(_section(card, "Utilization"), "MLUAverage")),
            memory_used_bytes=reading(field(memory, "Used")) * MIB,
            temperature_celsius=reading(field(_section(card, "Temperature"), "Chip")),
            power_watts=reading(field(_section(card, "Power"), "Usage")))


def _section(card: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = field(card, name)
    return value if isinstance(value, Mapping) else {}


def _faults(card: Mapping[str, Any]) -> list[str]:
    faults = error_fields(card)
    uncorrected = number(field(_section(card, "ECC"), "UncorrectedError"))
    if uncorrected:
        faults.append(f"ECC.UncorrectedError={uncorrected:g}")
    return faults
