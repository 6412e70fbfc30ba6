"""The contract every accelerator adapter implements, and the adapter registry.

One adapter per vendor family lives in ``agents/accelerators/<family>.py``.
An adapter answers two questions about its node: which devices are here (and
how are they doing), and what environment makes a process see a given subset
of them. The second answer comes from the chip catalogue, not from code, so
adapters only implement detection.

Adding a family is adding one file with a subclass that sets ``family``
(and ``auto_detect = True`` when it should be probed on real hosts) plus one
catalogue entry; the registry finds it by importing the package's modules.
"""

from __future__ import annotations

import abc
import importlib
import logging
import pkgutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from controlplane.model.catalogue import Catalogue, FamilyProfile, default_catalogue
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)

# Set by the launcher from the assignment, listed here so the whole runtime
# vocabulary is in one place.
ENV_DEVICE = "XINHE_DEVICE"
ENV_DIST_BACKEND = "XINHE_DIST_BACKEND"
ENV_FAMILY = "XINHE_ACCELERATOR_FAMILY"
ENV_MODEL = "XINHE_ACCELERATOR_MODEL"
ENV_VISIBLE = "XINHE_VISIBLE_DEVICES"


@dataclass(frozen=True)
class DeviceInfo:
    """One device as the vendor tool reports it, with live telemetry.

    Telemetry fields are 0 when the tool does not report them. A device the
    tool reports in an error state has ``healthy=False`` and a reason.
    """

    index: int
    uuid: str
    family: str
    model: str
    memory_bytes: int
    healthy: bool = True
    utilization_ratio: float = 0.0
    memory_used_bytes: int = 0
    temperature_celsius: float = 0.0
    power_watts: float = 0.0
    health_reason: str = ""

    def to_proto(self) -> common_pb2.Device:
        return common_pb2.Device(
            index=self.index, uuid=self.uuid, family=self.family, model=self.model,
            memory_bytes=self.memory_bytes, healthy=self.healthy,
            utilization_ratio=self.utilization_ratio,
            memory_used_bytes=self.memory_used_bytes,
            temperature_celsius=self.temperature_celsius, power_watts=self.power_watts,
            health_reason=self.health_reason,
        )


def render_launch_env(profile: FamilyProfile, device_indices: Sequence[int]) -> dict[str, str]:
    """The family's runtime variables for a process given ``device_indices``.

    Every framework and container-runtime visible-devices variable of the
    family gets the comma-joined indices (empty = no device visible), plus the
    portable XINHE_* names a job reads instead of vendor ones.
    """
    joined = ",".join(str(i) for i in device_indices)
    env = {var: joined for var in profile.visible_devices_env}
    env.update({var: joined for var in profile.container_visible_devices_env})
    env[ENV_VISIBLE] = joined
    env[ENV_DEVICE] = profile.torch_device
    env[ENV_DIST_BACKEND] = profile.dist_backend
    env[ENV_FAMILY] = profile.name
    return env


class AcceleratorAdapter(abc.ABC):
    """Detects one family's devices on this node and renders their launch env.

    Contract for implementations:

    * :meth:`detect` returns ``[]`` when the vendor tool is absent or cannot
      talk to the driver; it never raises for a missing tool.
    * A device the tool reports in an error state is returned with
      ``healthy=False`` and a ``health_reason``, so the scheduler can exclude
      it rather than the node silently shrinking.
    * :meth:`telemetry` is called every heartbeat; it may re-run detection.
    """

    family: str = ""
    #: Probe this adapter on real hosts (``adapters_for_host``).
    auto_detect: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            _REGISTRY[cls.family] = cls

    @abc.abstractmethod
    def detect(self) -> list[DeviceInfo]:
        """The family's devices on this node, or [] when there are none."""

    def telemetry(self) -> list[DeviceInfo]:
        """Devices with fresh live readings (default: detect again)."""
        return self.detect()

    def launch_env(self, device_indices: Sequence[int],
                   catalogue: Catalogue | None = None) -> dict[str, str]:
        """Environment that exposes exactly ``device_indices`` to a process."""
        profile = (catalogue or default_catalogue()).family(self.family)
        return render_launch_env(profile, device_indices)

    def mark_busy(self, device_indices: Sequence[int]) -> None:  # noqa: B027 optional hook
        """A replica started on these devices (only simulators care)."""

    def mark_idle(self, device_indices: Sequence[int]) -> None:  # noqa: B027 optional hook
        """The replica on these devices ended (only simulators care)."""


_REGISTRY: dict[str, type[AcceleratorAdapter]] = {}


def _load_plugins() -> None:
    package = importlib.import_module(__package__ or "agents.accelerators")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def registered_families() -> list[str]:
    """Families with an adapter class, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_adapter(family: str, **kwargs: Any) -> AcceleratorAdapter:
    """A new adapter for ``family``; KeyError naming the known ones if none."""
    _load_plugins()
    try:
        cls = _REGISTRY[family.lower()]
    except KeyError:
        raise KeyError(f"no accelerator adapter for family {family!r}; "
                       f"known: {', '.join(sorted(_REGISTRY))}") from None
    return cls(**kwargs)


def adapters_for_host(cpu_slots: int = 1,
                      catalogue: Catalogue | None = None) -> list[AcceleratorAdapter]:
    """Adapters of every auto-detected family that finds devices here.

    When none does, the CPU fallback stands in so CPU-only work still has a
    place to run.
    """
    _load_plugins()
    found: list[AcceleratorAdapter] = []
    for family, cls in sorted(_REGISTRY.items()):
        if not cls.auto_detect:
            continue
        adapter = cls(catalogue=catalogue)
        if adapter.detect():
            log.info("detected %s accelerators", family)
            found.append(adapter)
    if not found:
        found.append(get_adapter("cpu", slots=cpu_slots, catalogue=catalogue))
    return found


class NodeInventory:
    """The node's devices across all its adapters, indexed by device index.

    A tool that stops answering does not make its devices vanish (replicas
    still run on them): they are kept from the last good reading and marked
    unhealthy until the tool answers again.
    """

    def __init__(self, adapters: Sequence[AcceleratorAdapter]) -> None:
        self.adapters = list(adapters)
        self._lock = threading.Lock()
        self._devices: dict[int, tuple[AcceleratorAdapter, DeviceInfo]] = {}

    def refresh(self, telemetry: bool = False) -> list[DeviceInfo]:
        """Read every adapter (``telemetry()`` or ``detect()``); devices by index."""
        fresh: dict[int, tuple[AcceleratorAdapter, DeviceInfo]] = {}
        for adapter in self.adapters:
            try:
                found = adapter.telemetry() if telemetry else adapter.detect()
            except Exception:
                log.exception("%s adapter failed", adapter.family)
                found = []
            if not found:
                found = self._silenced(adapter)
            fresh.update({d.index: (adapter, d) for d in found})
        with self._lock:
            self._devices = fresh
        return [d for _, d in sorted(fresh.values(), key=lambda item: item[1].index)]

    def _silenced(self, adapter: AcceleratorAdapter) -> list[DeviceInfo]:
        with self._lock:
            previous = [d for a, d in self._devices.values() if a is adapter]
        reason = f"{adapter.family} device tool did not answer"
        return [replace(d, healthy=False, health_reason=reason, utilization_ratio=0.0)
                for d in previous]

    def owner(self, index: int) -> AcceleratorAdapter | None:
        """The adapter presenting device ``index``, or None if there is none."""
        with self._lock:
            entry = self._devices.get(index)
        return entry[0] if entry else None


def health_signature(devices: Iterable[DeviceInfo | common_pb2.Device]) -> tuple:
    """What changes an inventory (models and health), as opposed to telemetry."""
    return tuple(sorted((d.index, d.model, d.healthy, d.health_reason) for d in devices))
