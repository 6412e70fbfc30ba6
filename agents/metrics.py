"""The node agent's Prometheus exporter: per-device telemetry from the
adapters, replicas running on the node, connectivity and build info.

Values are read at scrape time from the agent's latest heartbeat readings,
so a scrape never runs the vendor tool a second time and always shows what
the control plane was last told. Metric names come from
``controlplane.observability.metrics`` like every other Xinhe metric.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.accelerators.base import DeviceInfo
from agents.agent import AGENT_VERSION, Agent
from controlplane.observability import metrics as m
from controlplane.observability.endpoint import MetricsEndpoint
from xinhe.v1 import agent_pb2

log = logging.getLogger(__name__)

LIVE = frozenset({agent_pb2.REPLICA_STATE_STARTING, agent_pb2.REPLICA_STATE_RUNNING})
# Device metric -> how to read it from a DeviceInfo.
DEVICE_READINGS = {
    "xinhe_device_utilization_ratio": lambda d: d.utilization_ratio,
    "xinhe_device_memory_used_bytes": lambda d: d.memory_used_bytes,
    "xinhe_device_memory_bytes": lambda d: d.memory_bytes,
    "xinhe_device_temperature_celsius": lambda d: d.temperature_celsius,
    "xinhe_device_power_watts": lambda d: d.power_watts,
    "xinhe_device_healthy": lambda d: 1.0 if d.healthy else 0.0,
}


def _gauge(name: str) -> GaugeMetricFamily:
    defn = m.get(name)
    return GaugeMetricFamily(defn.name, defn.help, labels=defn.labels)


class AgentCollector(Collector):
    """Yields every agent metric of :mod:`controlplane.observability.metrics`."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def describe(self) -> list[GaugeMetricFamily]:
        return [_gauge(d.name) for d in m.of(m.Source.AGENT)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        config = self.agent.config
        node = config.node_name
        info = _gauge("xinhe_agent_build_info")
        info.add_metric([AGENT_VERSION, node, config.pool, config.region], 1)
        yield info
        connected = _gauge("xinhe_agent_connected")
        connected.add_metric([node], 1 if self.agent.connected.is_set() else 0)
        yield connected
        running = _gauge("xinhe_agent_replicas_running")
        statuses = self.agent.held_replicas().values()
        running.add_metric([node], sum(1 for s in statuses if s is not None and s.state in LIVE))
        yield running
        yield from device_gauges(self._devices(), node, config.pool)

    def _devices(self) -> list[DeviceInfo]:
        # Before the first heartbeat there is no reading yet: take one.
        return list(self.agent.last_devices) or self.agent.inventory.refresh(telemetry=True)


def device_gauges(devices: Sequence[DeviceInfo], node: str,
                  pool: str) -> Iterator[GaugeMetricFamily]:
    """One gauge family per device reading, one series per device."""
    for name, read in DEVICE_READINGS.items():
        gauge = _gauge(name)
        for dev in devices:
            gauge.add_metric([node, pool, dev.family, dev.model, str(dev.index)],
                             float(read(dev)))
        yield gauge


class AgentMetricsServer:
    """``/metrics`` for one agent on its own port."""

    def __init__(self, agent: Agent) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(AgentCollector(agent))
        self.endpoint = MetricsEndpoint(self.registry, "agent metrics")

    def serve(self, host: str, port: int) -> int:
        """Listen on host:port (0 = a free port); returns the port."""
        return self.endpoint.serve(host, port)

    @property
    def url(self) -> str:
        return self.endpoint.url

    def close(self) -> None:
        self.endpoint.close()
