"""``xinhe agent --executor kubernetes``: one agent per accelerator node of a cluster.

Each Kubernetes node with accelerators becomes a Xinhe node named
``<--node>.<kubernetes node>`` in the executor's pool, with its own Agent
(own registration, stream and heartbeats) and a backend that pins pods to
that node. Nodes are discovered at start; a node added later is picked up
when the executor restarts (noted in the README as a known limit).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from agents.agent import Agent, AgentConfig
from agents.kubernetes.executor import KubernetesCluster
from agents.kubernetes.inventory import adapters_for_node
from agents.kubernetes.pods import PodSettings

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


def build_agents(cluster: KubernetesCluster, base: AgentConfig) -> list[Agent]:
    """One agent per accelerator node, named ``<base.node_name>.<node>``."""
    agents = []
    for node in sorted(cluster.nodes.nodes()):
        adapters = adapters_for_node(cluster.nodes, node)
        config = replace(base, node_name=f"{base.node_name}.{node}",
                         work_dir=base.work_dir / node)
        agents.append(Agent(config, adapters, catalogue=cluster.nodes.catalogue,
                            backend=cluster.backend_for(node, adapters)))
    return agents


def settings_from_args(args: argparse.Namespace, executor: str = "xinhe") -> PodSettings:
    return PodSettings(namespace=args.namespace, executor=executor,
                       default_image=args.image or "",
                       family_images=parse_family_images(args.family_image),
                       service_account=args.pod_service_account or "")


def start_executor(args: argparse.Namespace, base: AgentConfig,
                   api: Any | None = None) -> tuple[KubernetesCluster, list[Agent]]:
    """Build and start the agents; ValueError when the cluster has no accelerators."""
    settings = settings_from_args(args, base.node_name)
    cluster = KubernetesCluster(api if api is not None else load_api(args.kubeconfig),
                                settings)
    cluster.reap_orphans()
    agents = build_agents(cluster, base)
    if not agents:
        raise ValueError("no Kubernetes node reports an accelerator resource the catalogue "
                         "knows (extended resources such as nvidia.com/gpu, huawei.com/npu)")
    for agent in agents:
        agent.start()
    summary: Mapping[str, int] = {a.config.node_name: len(a.inventory.refresh())
                                  for a in agents}
    log.info("kubernetes executor: namespace %s, %d nodes: %s", settings.namespace,
             len(agents), ", ".join(f"{k} ({v} devices)" for k, v in summary.items()))
    return cluster, agents
