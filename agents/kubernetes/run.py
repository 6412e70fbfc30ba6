"""``xinhe agent --executor kubernetes``: one agent per accelerator node of a cluster.

Each Kubernetes node with accelerators becomes a Xinhe node named
``<--node>.<kubernetes node>`` in the executor's pool, with its own Agent
(own registration, stream and heartbeats) and a backend that pins pods to
that node. Nodes are listed at start and then watched: a node that gains
accelerators gets an agent, a deleted node's agent is shut down, device
changes reach the control plane at the next heartbeat. Pods of an earlier
run are adopted by their node's agent before it registers.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from agents.agent import Agent, AgentConfig
from agents.kubernetes.adopt import adopt_or_delete, survey
from agents.kubernetes.executor import KubernetesCluster
from agents.kubernetes.inventory import adapters_for_node
from agents.kubernetes.nodewatch import NodeChange, NodeWatch
from agents.kubernetes.pods import PodSettings
from agents.launcher import ReplicaSpec

log = logging.getLogger(__name__)


def load_api(kubeconfig: str | None) -> Any:
    """A ``CoreV1Api`` from ``kubeconfig`` (or $KUBECONFIG / ~/.kube/config),
    else the in-cluster service account. Imports the client lazily."""
    try:
        from kubernetes import client, config
    except ImportError as err:
        raise RuntimeError("the Kubernetes executor needs the client: "
                           "pip install 'xinhe-orchestrator[k8s]'") from err
    try:
        config.load_kube_config(config_file=kubeconfig)
    except Exception as err:  # ConfigException, OSError, YAML errors...
        if kubeconfig:
            raise RuntimeError(f"cannot load kubeconfig {kubeconfig}: {err}") from err
        try:
            config.load_incluster_config()
        except Exception as inner:
            raise RuntimeError(f"no usable kubeconfig ({err}) and not running in a "
                               f"cluster ({inner})") from inner
    return client.CoreV1Api()


def parse_family_images(items: list[str]) -> dict[str, str]:
    """``["ascend=reg/img:tag", ...]`` to a mapping; ValueError naming a bad item."""
    images: dict[str, str] = {}
    for item in items:
        family, sep, image = item.partition("=")
        if not sep or not family.strip() or not image.strip():
            raise ValueError(f"--family-image {item!r}: expected FAMILY=IMAGE")
        images[family.strip().lower()] = image.strip()
    return images


def build_agent(cluster: KubernetesCluster, base: AgentConfig, node: str) -> Agent:
    """The agent of one Kubernetes node, named ``<base.node_name>.<node>``."""
    adapters = adapters_for_node(cluster.nodes, node)
    config = replace(base, node_name=f"{base.node_name}.{node}", work_dir=base.work_dir / node)
    return Agent(config, adapters, catalogue=cluster.nodes.catalogue,
                 backend=cluster.backend_for(node, adapters))


def build_agents(cluster: KubernetesCluster, base: AgentConfig) -> list[Agent]:
    """One agent per accelerator node known now."""
    return [build_agent(cluster, base, node) for node in sorted(cluster.nodes.nodes())]


class ExecutorFleet:
    """The executor's agents by Kubernetes node, as nodes come and go.

    Iterating gives the agents running now (sorted by node).
    """

    def __init__(self, cluster: KubernetesCluster, base: AgentConfig) -> None:
        self.cluster = cluster
        self.base = base
        self._lock = threading.Lock()
        self._agents: dict[str, Agent] = {}
        self._closed = False

    def __iter__(self) -> Iterator[Agent]:
        with self._lock:
            return iter([self._agents[n] for n in sorted(self._agents)])

    def __len__(self) -> int:
        with self._lock:
            return len(self._agents)

    def agent(self, node: str) -> Agent | None:
        with self._lock:
            return self._agents.get(node)

    def add(self, node: str, start: bool = True) -> Agent | None:
        """Give ``node`` an agent (once); None when it has one or we are closing."""
        with self._lock:
            if self._closed or node in self._agents:
                return None
            agent = self._agents[node] = build_agent(self.cluster, self.base, node)
        if start:
            agent.start()
            log.info("kubernetes node %s: agent %s started", node, agent.config.node_name)
        return agent

    def remove(self, node: str) -> None:
        """Shut the node's agent down (on its own thread: it waits for pods)."""
        with self._lock:
            agent = self._agents.pop(node, None)
        if agent is None:
            return
        log.warning("kubernetes node %s is gone: stopping agent %s", node,
                    agent.config.node_name)
        threading.Thread(target=agent.shutdown, kwargs={"grace": 0.0}, daemon=True,
                         name=f"xinhe-k8s-remove-{node}").start()

    def on_change(self, change: NodeChange) -> None:
        for node in sorted(change.added):
            self.add(node)
        for node in sorted(change.deleted):
            self.remove(node)

    def adopt(self, node: str, spec: ReplicaSpec, pod: Any) -> bool:
        agent = self.agent(node)
        if agent is None:
            return False
        backend = agent.launcher
        return agent.adopt(spec, lambda on_state, on_output: backend.adopt(  # type: ignore[attr-defined]
            spec, pod, on_state, on_output))

    def shutdown(self, grace: float | None = None) -> None:
        """Stop watching, then stop every agent (and their pods)."""
        with self._lock:
            self._closed = True
            agents, self._agents = list(self._agents.values()), {}
        self.cluster.close()
        for agent in agents:
            agent.shutdown(grace)


def settings_from_args(args: argparse.Namespace, executor: str = "xinhe") -> PodSettings:
    return PodSettings(namespace=args.namespace, executor=executor,
                       default_image=args.image or "",
                       family_images=parse_family_images(args.family_image),
                       service_account=args.pod_service_account or "")


def start_executor(args: argparse.Namespace, base: AgentConfig, api: Any | None = None,
                   watch_factory: Any = None) -> tuple[KubernetesCluster, ExecutorFleet]:
    """List (then watch) the nodes, build one agent per accelerator node,
    adopt the pods of an earlier run, start the agents. ValueError when the
    cluster has no accelerators."""
    settings = settings_from_args(args, base.node_name)
    cluster = KubernetesCluster(api if api is not None else load_api(args.kubeconfig),
                                settings)
    fleet = ExecutorFleet(cluster, base)
    watch = NodeWatch(cluster.api, cluster.nodes, fleet.on_change,
                      **({"watch_factory": watch_factory} if watch_factory else {}))
    cluster.node_watch = watch
    try:
        version = watch.relist()
    except Exception as err:  # ApiException (401, 403...), connection refused
        raise RuntimeError(f"cannot list the cluster's nodes: {err}") from err
    for node in sorted(cluster.nodes.nodes()):
        fleet.add(node, start=False)
    if not len(fleet):
        raise ValueError("no Kubernetes node reports an accelerator resource the catalogue "
                         "knows (extended resources such as nvidia.com/gpu, huawei.com/npu)")
    try:
        pods = cluster.list_pods()
    except Exception as err:
        raise RuntimeError(f"cannot list pods in namespace {settings.namespace}: {err}") from err
    adopted, deleted = adopt_or_delete(survey(pods), fleet.adopt, cluster.delete_pod)
    for agent in fleet:
        agent.start()
    watch.run_from(version)
    log.info("kubernetes executor: namespace %s, %d nodes (%s); %d pods adopted, %d deleted",
             settings.namespace, len(fleet), ", ".join(a.config.node_name for a in fleet),
             len(adopted), len(deleted))
    return cluster, fleet
