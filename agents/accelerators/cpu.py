"""CPU fallback: the host itself as ``slots`` devices of family ``cpu``.

A node without accelerators still runs CPU-only work (tests, data prep,
the demo); presenting it as a family keeps the scheduler's model uniform.
"""

from __future__ import annotations

import logging
import os
import socket

from agents.accelerators.base import AcceleratorAdapter, DeviceInfo
from controlplane.model.catalogue import Catalogue

log = logging.getLogger(__name__)


def host_memory_bytes() -> int:
    """Physical memory of the host, or 0 when the platform will not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _load_ratio() -> float:
    try:
        load1 = os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0
    return min(1.0, load1 / (os.cpu_count() or 1))


class CpuAdapter(AcceleratorAdapter):
    """Presents the host as ``slots`` CPU devices sharing its memory."""

    family = "cpu"

    def __init__(self, slots: int = 1, catalogue: Catalogue | None = None) -> None:
        if slots < 1:
            raise ValueError(f"cpu slots must be at least 1, got {slots}")
        self.slots = slots
        self._host = socket.gethostname()

    def detect(self) -> list[DeviceInfo]:
        per_slot = host_memory_bytes() // self.slots
        load = _load_ratio()
        return [
            DeviceInfo(index=i, uuid=f"CPU-{self._host}-{i}", family="cpu", model="CPU",
                       memory_bytes=per_slot, utilization_ratio=load)
            for i in range(self.slots)
        ]
