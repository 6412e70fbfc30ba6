"""Accelerators of a Kubernetes cluster, read from its Node objects.

Choice: **one Xinhe node per Kubernetes node** (not one per node pool). The
scheduler packs gangs and counts free devices per node; a pooled view would
let it place a replica on eight devices that no single kubelet can grant.
The executor therefore runs one :class:`~agents.agent.Agent` per Kubernetes
node with accelerators, each presenting that node's devices through a
:class:`KubernetesNodeAdapter`.

Devices are slots, not physical chips: the device plugin picks the chips
when a pod asks for ``count`` of the resource. A node with capacity 8 and
allocatable 6 has two devices its plugin reports unhealthy; a cordoned or
NotReady node has every device unhealthy, so nothing new lands there.

Resource names are discovered, never assumed: every extended resource on the
node whose name the catalogue maps to a family (``family_for_resource``:
``nvidia.com/gpu``, ``huawei.com/Ascend910B3``, ``huawei.com/npu``,
``cambricon.com/mlu370``...) counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.accelerators.base import AcceleratorAdapter, DeviceInfo, render_launch_env
from controlplane.model.catalogue import Catalogue, default_catalogue

log = logging.getLogger(__name__)

# Node labels naming the accelerator model, most specific first. GFD writes
# nvidia.com/gpu.product; Ascend's device plugin the npu chip name; clouds
# and HAMi-style setups a generic "accelerator" label.
MODEL_LABELS = (
    "nvidia.com/gpu.product",
    "node.kubernetes.io/npu.chip.name",
    "huawei.com/npu.chip.name",
    "cambricon.com/mlu.model",
    "amd.com/gpu.product-name",
    "cloud.google.com/gke-accelerator",
    "accelerator",
)
HOSTNAME_LABEL = "kubernetes.io/hostname"


@dataclass(frozen=True)
class NodeAccelerators:
    """One accelerator resource on one Kubernetes node."""

    node: str  # Kubernetes node name
    hostname: str  # value of kubernetes.io/hostname (the pod nodeSelector)
    resource_name: str  # e.g. huawei.com/Ascend910B3, as the plugin spells it
    family: str
    model: str
    capacity: int
    allocatable: int
    memory_bytes: int
    unhealthy_reason: str  # "" when the node takes new pods
    vendor_taints: tuple[tuple[str, str], ...]  # (key, effect) to tolerate


def _count(quantities: Mapping[str, Any] | None, name: str) -> int:
    raw = (quantities or {}).get(name)
    try:
        return max(0, int(str(raw))) if raw is not None else 0
    except ValueError:
        log.warning("resource %s: quantity %r is not a whole number", name, raw)
        return 0


def node_unhealthy_reason(node: Any) -> str:
    """Why no new pod should land on ``node`` ("" if it can take them)."""
    reasons = []
    if node.spec is not None and node.spec.unschedulable:
        reasons.append("node cordoned (unschedulable)")
    conditions = (node.status.conditions or []) if node.status is not None else []
    ready = next((c for c in conditions if c.type == "Ready"), None)
    if ready is None:
        reasons.append("node reports no Ready condition")
    elif ready.status != "True":
        reasons.append(f"node NotReady ({ready.reason or ready.message or ready.status})")
    return "; ".join(reasons)


def model_for(labels: Mapping[str, str], resource_name: str, family: str,
              catalogue: Catalogue) -> str:
    """The catalogue model of a node's accelerators.

    Tries the chip labels, then the resource name itself (per-model spellings
    such as ``huawei.com/Ascend910B3`` name the chip); a label naming an
    unknown chip is kept verbatim so the catalogue's generic profile applies.
    """
    verbatim = ""
    candidates = [labels[k] for k in MODEL_LABELS if labels.get(k)]
    candidates.append(resource_name.rpartition("/")[2])
    for candidate in candidates:
        chip = catalogue.find_model(candidate)
        if chip is not None and chip.family == family:
            return chip.model
        if not verbatim and candidate in labels.values():
            verbatim = candidate
    return verbatim or family


def _vendor_taints(node: Any, resource_name: str) -> tuple[tuple[str, str], ...]:
    """Taints of the resource's vendor domain (``nvidia.com/gpu:NoSchedule``):
    the ones accelerator pods are expected to tolerate. Others (cordon,
    NotReady) are deliberately not tolerated."""
    domain = resource_name.partition("/")[0]
    taints = (node.spec.taints or []) if node.spec is not None else []
    return tuple((t.key, t.effect) for t in taints
                 if t.key and (t.key == resource_name or t.key.startswith(domain)))


def accelerators_of(node: Any, catalogue: Catalogue) -> list[NodeAccelerators]:
    """Every accelerator resource the catalogue recognises on ``node``."""
    status = node.status
    capacity = (status.capacity or {}) if status is not None else {}
    allocatable = (status.allocatable or {}) if status is not None else {}
    labels = node.metadata.labels or {}
    name = node.metadata.name
    found = []
    for resource in sorted(capacity):
        family = catalogue.family_for_resource(resource)
        if family is None or family == "cpu":
            continue
        total = _count(capacity, resource)
        if total == 0:
            continue
        model = model_for(labels, resource, family, catalogue)
        chip = catalogue.find_model(model)
        found.append(NodeAccelerators(
            node=name, hostname=labels.get(HOSTNAME_LABEL, name), resource_name=resource,
            family=family, model=model, capacity=total,
            allocatable=min(total, _count(allocatable, resource)),
            memory_bytes=chip.memory_bytes if chip else 0,
            unhealthy_reason=node_unhealthy_reason(node),
            vendor_taints=_vendor_taints(node, resource)))
    return found


def cluster_accelerators(nodes: Iterable[Any],
                         catalogue: Catalogue | None = None) -> dict[str, list[NodeAccelerators]]:
    """Kubernetes node name -> its accelerator resources (nodes without any omitted)."""
    catalogue = catalogue or default_catalogue()
    result = {}
    for node in nodes:
        found = accelerators_of(node, catalogue)
        if found:
            result[node.metadata.name] = found
    return result


class NodeCache:
    """The cluster's nodes, listed at most once per ``ttl`` seconds, or kept
    current by a watch (:mod:`agents.kubernetes.nodewatch`) once one feeds it.

    Every per-node agent reads inventory each heartbeat; sharing one view
    keeps the API server load at one LIST per ``ttl`` (or one WATCH),
    whatever the fleet size. A failed LIST keeps the previous answer (devices
    do not vanish because the API server blinked) and is logged.
    """

    def __init__(self, list_nodes: Callable[[], Any], catalogue: Catalogue | None = None,
                 ttl: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._list_nodes = list_nodes
        self.catalogue = catalogue or default_catalogue()
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._nodes: dict[str, list[NodeAccelerators]] = {}
        self.watched = False  # True once a watch keeps the view current: no LIST here

    def replace(self, nodes: Iterable[Any]) -> None:
        """The whole view from a LIST (the watch's starting point)."""
        found = cluster_accelerators(nodes, self.catalogue)
        with self._lock:
            self._nodes, self._at, self.watched = found, self._clock(), True

    def apply(self, event_type: str, node: Any) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) for one Node object."""
        name = node.metadata.name
        found = [] if event_type == "DELETED" else accelerators_of(node, self.catalogue)
        with self._lock:
            if found:
                self._nodes = {**self._nodes, name: found}
            elif name in self._nodes:
                self._nodes = {k: v for k, v in self._nodes.items() if k != name}

    def nodes(self) -> dict[str, list[NodeAccelerators]]:
        with self._lock:
            now = self._clock()
            if self.watched:
                return self._nodes
            if self._at is None or now - self._at >= self.ttl:
                try:
                    self._nodes = cluster_accelerators(self._list_nodes().items, self.catalogue)
                    self._at = now
                except Exception as err:  # API errors of any kind: keep the last view
                    log.warning("listing Kubernetes nodes failed: %s", err)
            return self._nodes

    def node(self, name: str) -> list[NodeAccelerators]:
        return self.nodes().get(name, [])


class KubernetesNodeAdapter(AcceleratorAdapter):
    """The devices of one accelerator resource on one Kubernetes node.

    Indices start at ``first_index`` so several resources on one node do not
    collide. The launch env renumbers the replica's devices from 0 and leaves
    out the container-runtime variables (``NVIDIA_VISIBLE_DEVICES``...):
    inside the pod the device plugin has already chosen and exposed the chips.
    """

    def __init__(self, cache: NodeCache, node: str, resource_name: str, family: str,
                 first_index: int = 0) -> None:
        self.cache = cache
        self.node = node
        self.resource_name = resource_name
        self.family = family
        self.first_index = first_index

    def current(self) -> NodeAccelerators | None:
        return next((a for a in self.cache.node(self.node)
                     if a.resource_name == self.resource_name), None)

    def detect(self) -> list[DeviceInfo]:
        acc = self.current()
        if acc is None:
            return []  # node or resource gone: NodeInventory marks the devices unhealthy
        devices = []
        for slot in range(acc.capacity):
            reason = acc.unhealthy_reason or (
                "" if slot < acc.allocatable else "device plugin reports it unallocatable")
            devices.append(DeviceInfo(
                index=self.first_index + slot, uuid=f"{acc.node}/{acc.resource_name}/{slot}",
                family=acc.family, model=acc.model, memory_bytes=acc.memory_bytes,
                healthy=not reason, health_reason=reason))
        return devices

    def launch_env(self, device_indices: Sequence[int],
                   catalogue: Catalogue | None = None) -> dict[str, str]:
        profile = (catalogue or self.cache.catalogue).family(self.family)
        env = render_launch_env(profile, range(len(device_indices)))
        for var in profile.container_visible_devices_env:
            env.pop(var, None)
        return env


def adapters_for_node(cache: NodeCache, node: str) -> list[KubernetesNodeAdapter]:
    """One adapter per accelerator resource of ``node``, with disjoint indices."""
    adapters, first = [], 0
    for acc in cache.node(node):
        adapters.append(KubernetesNodeAdapter(cache, node, acc.resource_name, acc.family, first))
        first += acc.capacity
    return adapters
