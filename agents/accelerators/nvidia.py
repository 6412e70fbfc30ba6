"""NVIDIA GPUs through ``nvidia-smi`` (the CSV query interface over NVML).

The tool prints one CSV line per GPU. Fields the GPU does not support read
``[N/A]`` or ``[Not Supported]`` (telemetry then reads 0); a field that
reads ``ERR!`` or another bracketed error (``[GPU is lost]``,
``[Unknown Error]``) marks the device unhealthy. Lines that cannot be parsed
at all are skipped with a warning rather than failing the whole inventory.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence

from agents.accelerators.base import AcceleratorAdapter, DeviceInfo
from controlplane.model.catalogue import Catalogue, default_catalogue

log = logging.getLogger(__name__)

MIB = 1024 * 1024
QUERY_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used",
                "utilization.gpu", "temperature.gpu", "power.draw")
COMMAND = ("nvidia-smi", "--format=csv,noheader,nounits",
           "--query-gpu=" + ",".join(QUERY_FIELDS))
_NOT_AVAILABLE = {"", "n/a", "[n/a]", "not supported", "[not supported]"}

#: Runs argv with a timeout in seconds and returns stdout. Raises
#: FileNotFoundError when the tool is absent, subprocess errors otherwise.
Runner = Callable[[Sequence[str], float], str]


def run_tool(argv: Sequence[str], timeout: float) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=True)
    return done.stdout


class _FieldError(ValueError):
    """A field reported an error state."""


def _value(raw: str, name: str) -> str | None:
    """The field's text, None when unsupported; _FieldError on an error."""
    text = raw.strip()
    if text.lower() in _NOT_AVAILABLE:
        return None
    if "ERR!" in text or text.startswith("["):
        raise _FieldError(f"{name}={text}")
    return text


class NvidiaAdapter(AcceleratorAdapter):
    """Devices from ``nvidia-smi``; model names mapped to the catalogue."""

    family = "nvidia"
    auto_detect = True

    def __init__(self, runner: Runner | None = None, timeout: float = 10.0,
                 catalogue: Catalogue | None = None) -> None:
        self._run = runner or run_tool
        self._timeout = timeout
        self._catalogue = catalogue or default_catalogue()
        self._warned_models: set[str] = set()

    def detect(self) -> list[DeviceInfo]:
        output = self._query()
        if output is None:
            return []
        devices = []
        for line in output.splitlines():
            if not line.strip():
                continue
            device = self.parse_line(line)
            if device is not None:
                devices.append(device)
        return devices

    def _query(self) -> str | None:
        try:
            return self._run(COMMAND, self._timeout)
        except FileNotFoundError:
            log.debug("nvidia-smi not found: no NVIDIA devices")
        except subprocess.TimeoutExpired:
            log.warning("nvidia-smi did not answer within %.0fs", self._timeout)
        except subprocess.CalledProcessError as err:
            detail = (err.stdout or err.stderr or "").strip()
            log.warning("nvidia-smi failed (exit %s): %s", err.returncode, detail[:200])
        except OSError as err:
            log.warning("cannot run nvidia-smi: %s", err)
        return None

    def parse_line(self, line: str) -> DeviceInfo | None:
        """One CSV line to a device; None (with a warning) if unusable."""
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(QUERY_FIELDS):
            log.warning("skipping nvidia-smi line with %d fields (want %d): %r",
                        len(fields), len(QUERY_FIELDS), line)
            return None
        raw = dict(zip(QUERY_FIELDS, fields, strict=True))
        try:
            index = int(raw["index"])
        except ValueError:
            log.warning("skipping nvidia-smi line without a device index: %r", line)
            return None
        errors: list[str] = []
        values = {}
        for name in QUERY_FIELDS[1:]:
            try:
                values[name] = _value(raw[name], name)
            except _FieldError as err:
                errors.append(str(err))
                values[name] = None
        return self._device(index, values, errors)

    def _device(self, index: int, values: dict[str, str | None],
                errors: list[str]) -> DeviceInfo:
        vendor_name = values["name"] or "unknown NVIDIA GPU"
        chip = self._catalogue.find_model(vendor_name)
        if chip is None and vendor_name not in self._warned_models:
            self._warned_models.add(vendor_name)
            log.warning("unknown NVIDIA model %r: reported as is, scheduled as generic",
                        vendor_name)
        memory = int(_number(values["memory.total"]) * MIB)
        if not memory and chip is not None:
            memory = chip.memory_bytes
        return DeviceInfo(
            index=index,
            uuid=values["uuid"] or "",
            family=self.family,
            model=chip.model if chip is not None else vendor_name,
            memory_bytes=memory,
            healthy=not errors,
            utilization_ratio=_number(values["utilization.gpu"]) / 100.0,
            memory_used_bytes=int(_number(values["memory.used"]) * MIB),
            temperature_celsius=_number(values["temperature.gpu"]),
            power_watts=_number(values["power.draw"]),
            health_reason=("nvidia-smi reports " + ", ".join(errors)) if errors else "",
        )


def _number(text: str | None) -> float:
    """A numeric reading; 0 for missing or unparsable ones."""
    if text is None:
        return 0.0
    try:
        return float(text)
    except ValueError:
        log.debug("unparsable nvidia-smi reading %r", text)
        return 0.0
