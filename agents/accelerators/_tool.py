"""What every vendor-tool adapter shares: running the tool safely, naming models.

A family adapter subclasses :class:`ToolAdapter`, names its ``command`` and
implements :meth:`ToolAdapter.parse` (tool output -> devices). Running the
tool, turning every way it can fail into ``[]`` plus a warning, and mapping
vendor model names to the catalogue (with a generic profile and one warning
for a model the catalogue does not know) live here, so a new family is only
its parser.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence

from agents.accelerators.base import AcceleratorAdapter, DeviceInfo
from controlplane.model.catalogue import Catalogue, ChipProfile, default_catalogue

log = logging.getLogger(__name__)

#: Runs argv with a timeout in seconds and returns stdout. Raises
#: FileNotFoundError when the tool is absent, subprocess errors otherwise.
Runner = Callable[[Sequence[str], float], str]


def run_tool(argv: Sequence[str], timeout: float) -> str:
    """The default runner: the tool's stdout, CalledProcessError on failure."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=True)
    return done.stdout


def query_tool(run: Runner, argv: Sequence[str], timeout: float) -> str | None:
    """The tool's output, or None (absent: quietly; broken: with a warning).

    Never raises: a missing or misbehaving vendor tool means "no devices of
    this family here", not a crashed agent.
    """
    tool = argv[0]
    try:
        return run(argv, timeout)
    except FileNotFoundError:
        log.debug("%s not found: no devices of its family", tool)
    except subprocess.TimeoutExpired:
        log.warning("%s did not answer within %.0fs", tool, timeout)
    except subprocess.CalledProcessError as err:
        detail = (err.stdout or err.stderr or "").strip()
        log.warning("%s failed (exit %s): %s", tool, err.returncode, detail[:200])
    except (OSError, UnicodeDecodeError) as err:
        log.warning("cannot run %s: %s", tool, err)
    return None


class ToolAdapter(AcceleratorAdapter):
    """An adapter that reads one vendor tool's output (``command``)."""

    #: argv of the query; the first element is the tool.
    command: tuple[str, ...] = ()
    auto_detect = True

    def __init__(self, runner: Runner | None = None, timeout: float = 10.0,
                 catalogue: Catalogue | None = None) -> None:
        self._run = runner or run_tool
        self._timeout = timeout
        self._catalogue = catalogue or default_catalogue()
        self._warned_models: set[str] = set()

    def detect(self) -> list[DeviceInfo]:
        """Devices from the tool; [] when it is absent, fails or prints nothing usable."""
        output = self.query(self.command)
        if output is None:
            return []
        try:
            devices = self.parse(output)
        except ValueError as err:
            log.warning("cannot read %s output: %s", self.command[0], err)
            return []
        return sorted(devices, key=lambda d: d.index)

    def query(self, argv: Sequence[str]) -> str | None:
        return query_tool(self._run, argv, self._timeout)

    def parse(self, output: str) -> list[DeviceInfo]:
        """The devices in one output of ``command`` (ValueError if unreadable)."""
        raise NotImplementedError

    def chip(self, vendor_name: str) -> ChipProfile | None:
        """The catalogue profile of a vendor model name, None (warned once) if unknown.

        A name that matches a model of another family counts as unknown: the
        fuzzy vendor-name match must not turn a new chip into a foreign one.
        """
        found = self._catalogue.find_model(vendor_name) if vendor_name else None
        if found is not None and found.family == self.family:
            return found
        if vendor_name not in self._warned_models:
            self._warned_models.add(vendor_name)
            log.warning("unknown %s model %r: reported as is, scheduled with a generic "
                        "profile", self.family, vendor_name)
        return None

    def device(self, index: int, uuid: str, vendor_name: str, memory_bytes: int,
               faults: Sequence[str] = (), **telemetry: float) -> DeviceInfo:
        """A DeviceInfo with the catalogue's model name and memory as a fallback.

        ``faults`` non-empty marks the device unhealthy with them as the reason.
        """
        name = vendor_name.strip() or f"unknown {self.family} device"
        chip = self.chip(name)
        if not memory_bytes and chip is not None:
            memory_bytes = chip.memory_bytes
        return DeviceInfo(
            index=index, uuid=uuid, family=self.family,
            model=chip.model if chip is not None else name,
            memory_bytes=int(memory_bytes), healthy=not faults,
            health_reason=f"{self.command[0]} reports " + ", ".join(faults) if faults else "",
            utilization_ratio=min(1.0, max(0.0, telemetry.get("utilization_percent", 0) / 100)),
            memory_used_bytes=int(telemetry.get("memory_used_bytes", 0)),
            temperature_celsius=float(telemetry.get("temperature_celsius", 0.0)),
            power_watts=float(telemetry.get("power_watts", 0.0)),
        )
