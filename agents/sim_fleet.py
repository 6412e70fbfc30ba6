"""Many simulated node agents in one process: ``xinhe agent --simulated-count N``.

Each agent is a real :class:`~agents.agent.Agent` — its own node name
(``<node>-0000`` ...), simulated devices, Register, Connect stream,
heartbeats, acks and fencing — so the control plane sees N ordinary nodes.
Only the replicas are simulated (agents/simulated_backend.py: no process is
spawned) and the agents share a few gRPC channels, so a 200-node fleet fits
a small machine for soaks and load tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import grpc

from agents.accelerators.simulated import simulated_adapters
from agents.agent import Agent, AgentConfig
from agents.simulated_backend import SimulatedBackend
from controlplane.api.tls import channel_credentials, make_channel
from controlplane.client import parse_targets

log = logging.getLogger(__name__)

AGENTS_PER_CHANNEL = 25  # streams multiplexed on one HTTP/2 connection


def node_names(prefix: str, count: int) -> list[str]:
    width = max(4, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


class SimulatedFleet:
    """``count`` agents sharing one simulated backend; start, then shutdown."""

    def __init__(self, base: AgentConfig, simulate: Sequence[str], count: int,
                 default_seconds: float = 0.0) -> None:
        if count < 1:
            raise ValueError("--simulated-count must be at least 1")
        if not simulate:
            raise ValueError("--simulated-count needs --simulate MODEL:COUNT")
        self.backend = SimulatedBackend(default_seconds)
        target = parse_targets(base.server)[0]
        tls = channel_credentials(base.tls_ca, base.tls_cert, base.tls_key)
        self.channels: list[grpc.Channel] = []
        self.agents: list[Agent] = []
        for i, node in enumerate(node_names(base.node_name, count)):
            if i % AGENTS_PER_CHANNEL == 0:
                self.channels.append(make_channel(target, tls, _OPTIONS))
            config = replace(base, node_name=node, work_dir=base.work_dir / node)
            self.agents.append(Agent(config, simulated_adapters(simulate, node=node),
                                     channel=self.channels[-1], backend=self.backend))

    def start(self, stagger: float = 0.005) -> None:
        """Start every agent, a little apart so Register calls do not all collide."""
        for agent in self.agents:
            agent.start()
            time.sleep(stagger)
        log.info("%d simulated agents started", len(self.agents))

    def shutdown(self) -> None:
        """Stop every agent (in parallel: each waits briefly for its last acks)."""
        stoppers = [threading.Thread(target=agent.shutdown, args=(0.0, 0.5), daemon=True)
                    for agent in self.agents]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(10.0)
        for channel in self.channels:
            channel.close()


# A local subchannel pool: each channel its own connection, not one shared.
_OPTIONS = [("grpc.use_local_subchannel_pool", 1),
            ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_reconnect_backoff_ms", 5_000)]
