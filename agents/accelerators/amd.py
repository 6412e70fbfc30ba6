"""AMD Instinct GPUs through ``rocm-smi --json`` (``{"card0": {...}, "system": {...}}``).

Key spellings drift between ROCm releases (``"Card series"`` then ``"Card
Series"``; ``"Average Graphics Package Power (W)"`` then, on MI300,
``"Current Socket Graphics Package Power (W)"``; edge temperature ``N/A`` on
MI300, where the junction sensor is the one to read), so keys are looked up
by name with alternatives, and memory units are read from the key
(``"VRAM Total Memory (B)"``, Hygon's ``"vram Total Memory (MiB)"``).
rocm-smi may print warnings around the JSON; they are skipped.

rocm-smi has no health field: a card whose readings come back as error
strings is unhealthy, one whose readings are ``N/A`` is merely quiet. Hygon
DCUs speak the same format and may ship a ``rocm-smi``; cards from the
Hygon vendor are left to the hygon adapter (:func:`is_hygon`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from agents.accelerators._parse import embedded_json, error_fields, field, memory_bytes, number
from agents.accelerators._tool import ToolAdapter
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)

ROCM_SMI = ("rocm-smi", "--showid", "--showproductname", "--showuse", "--showmeminfo", "vram",
            "--showtemp", "--showpower", "--showuniqueid", "--json")
UTILISATION_KEYS = ("GPU use (%)", "HCU use (%)", "DCU use (%)")
TEMPERATURE_KEYS = ("Temperature (Sensor junction)", "Temperature (Sensor edge)", "Temperature")
POWER_KEYS = ("Average Graphics Package Power", "Current Socket Graphics Package Power", "Power")
MODEL_KEYS = ("Card Series", "Device Name", "Card Model")
_HYGON_VENDOR = re.compile(r"haiguang|hygon", re.IGNORECASE)

CardFilter = Callable[[Mapping[str, Any]], bool]


def is_hygon(card: Mapping[str, Any]) -> bool:
    """True for a Hygon DCU: Haiguang vendor string or HCU/DCU reading names."""
    vendor = str(field(card, "Card Vendor") or "")
    return bool(_HYGON_VENDOR.search(vendor)) or any(
        str(key).lower().startswith(("hcu ", "dcu ")) for key in card)


def _first_reading(card: Mapping[str, Any], names: tuple[str, ...]) -> float:
    """The first of ``names`` that holds a number (skipping ``N/A`` sensors)."""
    for name in names:
        value = number(field(card, name))
        if value is not None:
            return value
    return 0.0


def _vram(card: Mapping[str, Any], name: str) -> int:
    """A VRAM figure in bytes, its unit taken from the key (``(B)``, ``(MiB)``)."""
    for key, value in card.items():
        if str(key).lower().replace(" ", "").startswith(name.replace(" ", "")):
            unit = re.search(r"\((\w+)\)\s*$", str(key))
            return memory_bytes(value, unit.group(1) if unit else "B")
    return 0


def parse_rocm_cards(adapter: ToolAdapter, output: str, keep: CardFilter) -> list[DeviceInfo]:
    """Devices in rocm-smi / hy-smi JSON for the cards ``keep`` accepts."""
    report = embedded_json(output)
    if not isinstance(report, Mapping):
        raise ValueError("the JSON report is not an object")
    devices = []
    for key, card in report.items():
        found = re.fullmatch(r"card(\d+)", str(key))
        if not found or not isinstance(card, Mapping):
            continue  # "system" and other non-card sections
        if keep(card):
            devices.append(_card(adapter, int(found.group(1)), card))
    return devices


def _card(adapter: ToolAdapter, index: int, card: Mapping[str, Any]) -> DeviceInfo:
    name = next((str(v) for k in MODEL_KEYS if (v := field(card, k)) and str(v).strip()
                 and not str(v).startswith("0x")), "")
    return adapter.device(
        index=index, uuid=str(field(card, "Unique ID") or f"{adapter.family}-card{index}"),
        vendor_name=name, memory_bytes=_vram(card, "vram total memory"),
        faults=error_fields(card),
        utilization_percent=_first_reading(card, UTILISATION_KEYS),
        memory_used_bytes=_vram(card, "vram total used memory"),
        temperature_celsius=_first_reading(card, TEMPERATURE_KEYS),
        power_watts=_first_reading(card, POWER_KEYS))


class AmdAdapter(ToolAdapter):
    """AMD Instinct GPUs (MI250X, MI300X...) from ``rocm-smi --json``."""

    family = "amd"
    command = ROCM_SMI

    def parse(self, output: str) -> list[DeviceInfo]:
        return parse_rocm_cards(self, output, keep=lambda card: not is_hygon(card))
