"""Iluvatar CoreX GPUs through ``ixsmi``, which takes nvidia-smi's query flags.

One CSV line per GPU with the same fields the NVIDIA adapter asks for (a
BI-V150 board shows as two GPUs), so the NVIDIA parser reads it: unsupported
readings print ``[N/A]`` (telemetry 0); ``ERR!`` or a bracketed error such as
``[GPU is lost]`` marks the device unhealthy; a line with the wrong number of
fields (output cut short) is skipped with a warning.
"""

from __future__ import annotations

from agents.accelerators.nvidia import QUERY_FLAGS, NvidiaAdapter


class IluvatarAdapter(NvidiaAdapter):
    """Iluvatar GPUs (BI-V100, BI-V150, MR-V100...) from ``ixsmi``."""

    family = "iluvatar"
    command = ("ixsmi", *QUERY_FLAGS)
