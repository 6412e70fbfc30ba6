"""`xinhe demo --with-prometheus`: the demo fleet exports metrics and a local
Prometheus (own config, data directory and port) scrapes it with Xinhe's alert
rules loaded, so a user can look at the numbers and try the dashboards'
queries. When the jobs are done the fleet and Prometheus keep running until
Ctrl-C.

Disabled (the default), every method is a no-op, so the demo reads the same
either way.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from controlplane.localfleet import AgentSpec
from controlplane.observability import promlocal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoObservation:
    """Metrics ports for the demo's processes and the Prometheus watching them."""

    def __init__(self, root: Path, enabled: bool, prometheus_port: int = 9090) -> None:
        self.root = root
        self.enabled = enabled
        self.prometheus_port = prometheus_port
        self.control_plane_port = free_port() if enabled else 0
        self._agent_ports: list[int] = []
        self.prometheus: promlocal.LocalPrometheus | None = None

    def server_args(self) -> list[str]:
        return ["--metrics-port", str(self.control_plane_port)] if self.enabled else []

    def agents(self, specs: Sequence[AgentSpec]) -> list[AgentSpec]:
        """The agent specs, each with a metrics port when enabled."""
        if not self.enabled:
            return list(specs)
        self._agent_ports = [free_port() for _ in specs]
        return [replace(s, extra=(*s.extra, "--metrics-port", str(p)))
                for s, p in zip(specs, self._agent_ports, strict=True)]

    def start(self, console: Console) -> None:
        """Start Prometheus (before the fleet is fine: targets come up later)."""
        if not self.enabled:
            return
        config = promlocal.write_config(
            self.root / "prometheus" / "prometheus.yml", f"127.0.0.1:{self.control_plane_port}",
            [f"127.0.0.1:{p}" for p in self._agent_ports])
        self.prometheus = promlocal.start_prometheus(config, self.root / "prometheus" / "data",
                                                     self.prometheus_port)
        console.print(f"Prometheus at [bold]{self.prometheus.url}[/bold] (config {config}); "
                      f"control plane metrics at "
                      f"http://127.0.0.1:{self.control_plane_port}/metrics")

    def hold(self, console: Console) -> None:
        """Keep everything up for looking around, until Ctrl-C."""
        if self.prometheus is None:
            return
        console.print(f"fleet and Prometheus keep running: open {self.prometheus.url}/graph, "
                      f"or run `xinhe top --metrics http://127.0.0.1:"
                      f"{self.control_plane_port}/metrics`; Ctrl-C stops everything")
        threading.Event().wait()

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
