"""The nodes the control plane knows and the live agent sessions.

A node record is durable (store); its connectivity and telemetry are live
(memory). Each Register starts a new session and invalidates the previous one,
so a stale stream from before a reconnect cannot deliver instructions.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.store.base import Store
from xinhe.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

READY = common_pb2.NODE_STATUS_READY
CORDONED = common_pb2.NODE_STATUS_CORDONED
DISCONNECTED = common_pb2.NODE_STATUS_DISCONNECTED


@dataclass
class AgentSession:
    session_id: str
    node: str
    outbox: queue.Queue = field(default_factory=queue.Queue)
    attached: bool = False
    closed: bool = False

    def send(self, message: agent_pb2.ControlMessage) -> None:
        self.outbox.put(message)

    def close(self) -> None:
        self.closed = True
        self.outbox.put(None)  # wakes the stream's writer so it ends


class Fleet:
    def __init__(self, store: Store, now: float) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._nodes: dict[str, common_pb2.Node] = {n.name: n for n in store.list_nodes()}
        self._sessions: dict[str, AgentSession] = {}
        self._by_id: dict[str, AgentSession] = {}
        self._disconnected_since: dict[str, float] = {}
        # Bumped whenever a node's inventory (name, pool, region, devices)
        # may have changed: readers cache what they derive from it.
        self.inventory_version = 0
        for node in self._nodes.values():
            # Known from before a restart: lost unless its agent comes back.
            node.status = DISCONNECTED
            self._disconnected_since[node.name] = now

    # -- sessions -----------------------------------------------------------
    def register(self, request: agent_pb2.RegisterRequest, now: float) -> AgentSession:
        """Record the node and open a new session, closing any previous one."""
        node = common_pb2.Node(
            name=request.node_name, pool=request.pool, region=request.region,
            address=request.address, agent_version=request.agent_version,
            cpu_millis=request.cpu_millis, memory_bytes=request.memory_bytes,
            cost_per_device_hour=request.cost_per_device_hour,
        )
        node.devices.extend(request.devices)
        self._store.upsert_node(node)
        stored = self._store.get_node(node.name) or node
        with self._lock:
            old = self._sessions.pop(node.name, None)
            if old is not None:
                self._by_id.pop(old.session_id, None)
                old.close()
            session = AgentSession(session_id=secrets.token_hex(16), node=node.name)
            self._sessions[node.name] = session
            self._by_id[session.session_id] = session
            node.cordoned, node.cordon_reason = stored.cordoned, stored.cordon_reason
            node.last_heartbeat.CopyFrom(_ts(now))
            self._nodes[node.name] = node
            self.inventory_version += 1
            self._disconnected_since.pop(node.name, None)
            self._refresh_status(node)
        return session

    def node_of(self, session_id: str) -> str | None:
        """The node a live session belongs to, without attaching to it."""
        with self._lock:
            session = self._by_id.get(session_id)
            return None if session is None or session.closed else session.node

    def attach(self, session_id: str) -> AgentSession | None:
        """The session a Connect stream belongs to, or None if superseded."""
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None or session.closed:
                return None
            session.attached = True
            return session

    def detach(self, session: AgentSession, now: float) -> bool:
        """The session's stream ended. Returns True if the node is now
        disconnected (no newer session replaced it)."""
        with self._lock:
            session.attached = False
            if self._sessions.get(session.node) is not session:
                return False
            del self._sessions[session.node]
            self._by_id.pop(session.session_id, None)
            self._disconnected_since[session.node] = now
            node = self._nodes.get(session.node)
            if node is not None:
                node.status = DISCONNECTED
            session.close()
            return True

    def heartbeat(self, session: AgentSession, devices: list[common_pb2.Device],
                  now: float) -> bool:
        """Record liveness and telemetry. Returns True when device health or
        inventory changed (the scheduler should look again)."""
        with self._lock:
            node = self._nodes.get(session.node)
            if node is None:
                return False
            node.last_heartbeat.CopyFrom(_ts(now))
            if not devices:
                return False
            changed = _health_map(node.devices) != _health_map(devices)
            if _kinds(node.devices) != _kinds(devices):
                self.inventory_version += 1
            del node.devices[:]
            node.devices.extend(devices)
            return changed

    def send(self, node: str, message: agent_pb2.ControlMessage) -> bool:
        """Queue a message for a node's agent; False when it is not connected."""
        with self._lock:
            session = self._sessions.get(node)
        if session is None:
            return False
        session.send(message)
        return True

    def is_connected(self, node: str) -> bool:
        with self._lock:
            return node in self._sessions

    def connected_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close_all(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()

    # -- nodes --------------------------------------------------------------
    def nodes(self) -> list[common_pb2.Node]:
        """Copies of every node record with live status, sorted by name."""
        with self._lock:
            out = []
            for name in sorted(self._nodes):
                copy = common_pb2.Node()
                copy.CopyFrom(self._nodes[name])
                out.append(copy)
            return out

    def node(self, name: str) -> common_pb2.Node | None:
        with self._lock:
            node = self._nodes.get(name)
            if node is None:
                return None
            copy = common_pb2.Node()
            copy.CopyFrom(node)
            return copy

    def set_cordon(self, name: str, cordoned: bool, reason: str) -> common_pb2.Node:
        stored = self._store.set_cordon(name, cordoned, reason)
        with self._lock:
            if name not in self._nodes:
                self.inventory_version += 1
            node = self._nodes.setdefault(name, stored)
            node.cordoned, node.cordon_reason = cordoned, reason if cordoned else ""
            self._refresh_status(node)
        return self.node(name) or stored

    def lost_nodes(self, now: float, timeout_s: float) -> list[str]:
        """Nodes disconnected for longer than ``timeout_s``."""
        with self._lock:
            return sorted(n for n, since in self._disconnected_since.items()
                          if now - since >= timeout_s)

    def forget_lost(self, name: str) -> None:
        """The node's loss has been handled; do not report it again."""
        with self._lock:
            self._disconnected_since.pop(name, None)

    def _refresh_status(self, node: common_pb2.Node) -> None:
        if node.name not in self._sessions:
            node.status = DISCONNECTED
        else:
            node.status = CORDONED if node.cordoned else READY


def _kinds(devices: object) -> list[tuple[int, str, str, int]]:
    """What a node's devices are (not how they are doing)."""
    return [(d.index, d.family, d.model, d.memory_bytes)  # type: ignore[attr-defined]
            for d in devices]  # type: ignore[attr-defined]


def _health_map(devices: object) -> list[tuple[int, bool]]:
    return sorted((d.index, d.healthy) for d in devices)  # type: ignore[attr-defined]


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
