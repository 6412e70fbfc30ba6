"""Adopt the pods of an earlier run of this executor instead of losing them.

A restarted executor lists the pods carrying its owner labels. Each one
whose ``xinhe.io/replica`` annotation names a node this executor has an
agent for becomes a held replica of that agent again
(:meth:`agents.agent.Agent.adopt`), so the agent registers holding it and
the control plane reconciles as for any agent that reconnects: a replica of
the job's current attempt and epoch is kept (nothing restarts, nothing runs
twice), a stale one is answered with a stop and its pod deleted.

A pod that cannot be adopted (no or unreadable annotation: made by an older
executor; its node has no agent any more) is deleted, as before adoption
existed: the control plane places that work again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.kubernetes.pods import ANNOTATION_REPLICA
from agents.launcher import ReplicaSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    """A pod of this executor and what it runs (``spec`` None: not adoptable)."""

    name: str
    node: str
    spec: ReplicaSpec | None
    pod: Any


def spec_of(pod: Any) -> tuple[str, ReplicaSpec] | None:
    """(Kubernetes node, the replica) a pod was created for, from its
    annotation; None when it has none or it is unreadable."""
    raw = (pod.metadata.annotations or {}).get(ANNOTATION_REPLICA)
    if not raw:
        return None
    try:
        record = json.loads(raw)
        containers = pod.spec.containers if pod.spec is not None else []
        command = tuple(containers[0].command or ()) if containers else ()
        spec = ReplicaSpec(
            job_id=str(record["job_id"]), attempt=int(record["attempt"]),
            rank=int(record["rank"]), epoch=int(record["epoch"]),
            command=command or ("(adopted)",), family=str(record.get("family", "")),
            model=str(record.get("model", "")),
            device_indices=tuple(int(i) for i in record.get("device_indices", ())),
            world_size=int(record.get("world_size", 1)),
            checkpoint_dir=str(record.get("checkpoint_dir", "")))
        return str(record["node"]), spec
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("pod %s: unreadable %s annotation: %s", pod.metadata.name,
                    ANNOTATION_REPLICA, err)
        return None


def survey(pods: list[Any]) -> list[Found]:
    """Every listed pod with what it runs; pods being deleted are not adoptable."""
    found = []
    for pod in pods:
        parsed = None if pod.metadata.deletion_timestamp else spec_of(pod)
        node, spec = parsed if parsed else ("", None)
        found.append(Found(pod.metadata.name, node, spec, pod))
    return found


def adopt_or_delete(found: list[Found], adopt: Callable[[str, ReplicaSpec, Any], bool],
                    delete: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Hand each adoptable pod to ``adopt(node, spec, pod)`` (False: no agent
    for that node, or a duplicate); delete the rest. (adopted, deleted) names."""
    adopted, deleted = [], []
    for item in found:
        if item.spec is not None and adopt(item.node, item.spec, item.pod):
            adopted.append(item.name)
            continue
        log.warning("deleting pod %s left by a previous executor run (not adoptable)",
                    item.name)
        try:
            delete(item.name)
            deleted.append(item.name)
        except Exception as err:
            log.warning("deleting pod %s failed: %s", item.name, err)
    return adopted, deleted
