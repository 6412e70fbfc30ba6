"""Operator views: nodes with allocations, pool capacity, cluster summary."""

from __future__ import annotations

from collections import defaultdict

from controlplane.api.errors import InvalidArgument, NotFound
from controlplane.services.context import Context
from xinhe.v1 import admin_pb2, common_pb2

J = common_pb2


class AdminService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def nodes(self, pool: str = "") -> list[common_pb2.Node]:
        out = []
        for node in self.ctx.fleet.nodes():
            if pool and node.pool != pool:
                continue
            node.allocated_device_indices.extend(sorted(self.ctx.allocations.held_on(node.name)))
            out.append(node)
        return out

    def pools(self) -> list[admin_pb2.PoolCapacity]:
        groups: dict[tuple[str, str], admin_pb2.PoolCapacity] = {}
        nodes_seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        for node in self.nodes():
            for dev in node.devices:
                key = (node.pool, dev.model)
                cap = groups.get(key)
                if cap is None:
                    cap = groups[key] = admin_pb2.PoolCapacity(
                        pool=node.pool, region=node.region, family=dev.family, model=dev.model,
                        device_memory_bytes=dev.memory_bytes)
                _count(cap, node, dev, nodes_seen[key])
        return [groups[k] for k in sorted(groups)]

    def cordon(self, name: str, cordoned: bool, reason: str) -> common_pb2.Node:
        if not name:
            raise InvalidArgument("node", "required")
        if self.ctx.fleet.node(name) is None:
            raise NotFound(f"node {name} not found")
        node = self.ctx.fleet.set_cordon(name, cordoned, reason)
        self.ctx.wake.set()
        return node

    def summary(self) -> admin_pb2.ClusterSummary:
        counts = self.ctx.store.count_jobs_by_state()
        return admin_pb2.ClusterSummary(
            pools=self.pools(),
            jobs=[admin_pb2.JobStateCount(state=s, count=c) for s, c in sorted(counts.items())],
            agents_connected=self.ctx.fleet.connected_count(),
        )


def _count(cap: admin_pb2.PoolCapacity, node: common_pb2.Node, dev: common_pb2.Device,
           seen: set[str]) -> None:
    if node.name not in seen:
        seen.add(node.name)
        cap.nodes_total += 1
        if node.status != J.NODE_STATUS_DISCONNECTED:
            cap.nodes_ready += 1
    cap.devices_total += 1
    if dev.index in node.allocated_device_indices:
        cap.devices_allocated += 1
    elif not dev.healthy or node.status != J.NODE_STATUS_READY:
        cap.devices_unavailable += 1
    else:
        cap.devices_free += 1
