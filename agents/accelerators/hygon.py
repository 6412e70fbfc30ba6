"""Hygon DCUs through ``hy-smi --json``, falling back to DTK's ``rocm-smi --json``.

hy-smi is a fork of rocm-smi: the same ``{"card0": {...}}`` JSON and flags,
with Hygon spellings — ``"HCU use (%)"`` (``"DCU use (%)"`` on older
drivers) and ``"vram Total Memory (MiB)"``. Older hosts have only the
``rocm-smi`` shipped with DTK; its report is used for the cards whose
vendor is Hygon (Haiguang), the others being AMD's. Parsing is shared with
:mod:`agents.accelerators.amd`. The hy-smi flag set mirrors rocm-smi's
(unverified on every DTK release); a failing hy-smi also falls back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from agents.accelerators._tool import ToolAdapter
from agents.accelerators.amd import ROCM_SMI, is_hygon, parse_rocm_cards
from agents.accelerators.base import DeviceInfo

log = logging.getLogger(__name__)

HY_SMI = ("hy-smi", *ROCM_SMI[1:])


class HygonAdapter(ToolAdapter):
    """Hygon DCUs (K100_AI, Z100L...) from ``hy-smi`` or ``rocm-smi``."""

    family = "hygon"
    command = HY_SMI

    def detect(self) -> list[DeviceInfo]:
        """hy-smi's cards; when hy-smi is absent or unreadable, rocm-smi's Hygon cards."""
        for argv, keep in ((HY_SMI, _any_card), (ROCM_SMI, is_hygon)):
            output = self.query(argv)
            if output is None:
                continue
            try:
                return sorted(parse_rocm_cards(self, output, keep), key=lambda d: d.index)
            except ValueError as err:
                log.warning("cannot read %s output: %s", argv[0], err)
        return []

    def parse(self, output: str) -> list[DeviceInfo]:
        return parse_rocm_cards(self, output, keep=_any_card)


def _any_card(card: Mapping[str, Any]) -> bool:
    """Every card hy-smi reports is a Hygon card, whatever its strings say."""
    return True
