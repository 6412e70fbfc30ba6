"""Manifests for one replica (a Pod) and one gang (a headless Service).

Rendezvous: every replica of a (job, attempt) gets ``hostname`` = its pod
name and ``subdomain`` = the gang's headless Service, so rank 0 is reachable
at the stable DNS name ``<rank0-pod>.<service>.<namespace>.svc`` before any
pod IP is known. That name is MASTER_ADDR; the control plane's master port
is kept (each pod has its own network namespace, so no port clashes).

Names and label values must be DNS-safe (lower-case alphanumerics and '-',
at most 63 characters). Job ids are sanitised and, when anything had to be
cut or changed, suffixed with a short hash so two jobs never share a name;
the raw id is kept in an annotation.

The runtime environment comes from :func:`agents.launcher.job_env`, the
same rendering the process launcher uses; only the agent host's own
environment is left out (a pod does not inherit the executor's).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agents.kubernetes.inventory import HOSTNAME_LABEL, NodeAccelerators
from agents.launcher import ReplicaSpec, job_env

LABEL_PREFIX = "xinhe.io/"
LABEL_JOB = LABEL_PREFIX + "job-id"
LABEL_ATTEMPT = LABEL_PREFIX + "attempt"
LABEL_RANK = LABEL_PREFIX + "rank"
LABEL_EPOCH = LABEL_PREFIX + "epoch"
LABEL_EXECUTOR = LABEL_PREFIX + "executor"  # which executor owns the pod
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "xinhe-executor"
ANNOTATION_JOB = LABEL_PREFIX + "job-id-raw"
# What a restarted executor needs to adopt the pod (agents/kubernetes/adopt.py).
ANNOTATION_REPLICA = LABEL_PREFIX + "replica"
CONTAINER = "replica"
DEFAULT_MASTER_PORT = 29500
MAX_NAME = 63


class ManifestError(ValueError):
    """A replica that cannot be turned into a valid pod (the message says why)."""


def dns_label(text: str, limit: int = MAX_NAME) -> str:
    """``text`` as an RFC 1123 label of at most ``limit`` characters.

    Unchanged when already valid and short enough; otherwise cleaned, cut and
    given an 8-character hash of the original so distinct inputs stay distinct.
    """
    if limit < 10:
        raise ValueError("dns_label: limit must leave room for the hash suffix")
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if clean == text and 0 < len(clean) <= limit:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    head = clean[: limit - 9].rstrip("-")
    return f"{head}-{digest}" if head else f"x{digest}"


@dataclass(frozen=True)
class PodSettings:
    """Executor-wide choices about pods (flags of ``xinhe agent --executor kubernetes``)."""

    namespace: str = "default"
    executor: str = "xinhe"  # this executor's name (--node): its pods carry it
    default_image: str = ""
    family_images: Mapping[str, str] = field(default_factory=dict)  # family -> image
    service_account: str = ""
    image_pull_secrets: tuple[str, ...] = ()


def gang_name(spec: ReplicaSpec) -> str:
    """The headless Service of a (job, attempt); leaves room for ``-r<rank>``."""
    return dns_label(f"xj-{spec.job_id}-a{spec.attempt}", MAX_NAME - 8)


def pod_name(spec: ReplicaSpec) -> str:
    return f"{gang_name(spec)}-r{spec.rank}"


def master_addr(spec: ReplicaSpec, namespace: str) -> str:
    """Stable DNS name of rank 0 through the gang's headless Service."""
    rank0 = pod_name(replace(spec, rank=0))
    return f"{rank0}.{gang_name(spec)}.{namespace}.svc"


def gang_labels(spec: ReplicaSpec) -> dict[str, str]:
    """Labels selecting every pod of the replica's (job, attempt)."""
    return {LABEL_JOB: dns_label(spec.job_id), LABEL_ATTEMPT: str(spec.attempt)}


def owner_labels(settings: PodSettings) -> dict[str, str]:
    """Labels marking a pod as this executor's (and no other executor's)."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_EXECUTOR: dns_label(settings.executor)}


def owner_selector(settings: PodSettings) -> str:
    return ",".join(f"{k}={v}" for k, v in owner_labels(settings).items())


def pod_labels(spec: ReplicaSpec, settings: PodSettings) -> dict[str, str]:
    return {**gang_labels(spec), LABEL_RANK: str(spec.rank), LABEL_EPOCH: str(spec.epoch),
            **owner_labels(settings)}


def choose_image(spec: ReplicaSpec, settings: PodSettings) -> str:
    """The job's own image (``JobSpec.image`` or its variant's, resolved by the
    control plane into the launch), else the executor's image for the family,
    else its default (``--default-image``)."""
    image = spec.image or settings.family_images.get(spec.family) or settings.default_image
    if not image:
        raise ManifestError(
            f"no container image for {spec.label} (family {spec.family or 'cpu'}): set "
            f"image in the job spec or its variant, or start the executor with "
            f"--default-image or --family-image {spec.family or 'FAMILY'}=IMAGE")
    return image


def cpu_quantity(millis: int) -> str:
    """Millicores as a Kubernetes quantity: whole cores plainly, else ``<n>m``."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def container_resources(spec: ReplicaSpec, acc: NodeAccelerators | None,
                        count: int) -> dict[str, dict[str, str]]:
    """Requests and limits of the replica's container.

    The accelerator, CPU and memory the job asked for per replica are both
    requested (so the kube-scheduler's accounting matches Xinhe's) and
    limited to that amount: extended resources must have limit = request,
    a memory limit keeps one job from starving its node's neighbours, and
    equal CPU request and limit give the pod Guaranteed QoS (the kubelet
    evicts it last). A zero asks for nothing (no reservation, no limit).
    """
    quantity: dict[str, str] = {}
    if acc is not None and count:
        quantity[acc.resource_name] = str(count)
    if spec.cpu_millis:
        quantity["cpu"] = cpu_quantity(spec.cpu_millis)
    if spec.memory_bytes:
        quantity["memory"] = str(spec.memory_bytes)
    return {"limits": quantity, "requests": dict(quantity)} if quantity else {}


def _tolerations(acc: NodeAccelerators | None) -> list[dict[str, str]]:
    if acc is None:
        return []
    return [{"key": key, "operator": "Exists", "effect": effect}
            for key, effect in acc.vendor_taints]


def _container(spec: ReplicaSpec, env: Mapping[str, str], image: str,
               acc: NodeAccelerators | None, count: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER, "image": image, "command": list(spec.command),
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "ports": [{"name": "rendezvous", "containerPort": spec.master_port,
                   "protocol": "TCP"}],
    }
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    resources = container_resources(spec, acc, count)
    if resources:
        container["resources"] = resources
    return container


def build_pod(spec: ReplicaSpec, device_env: Mapping[str, str],
              acc: NodeAccelerators | None, settings: PodSettings) -> dict[str, Any]:
    """The Pod running ``spec`` on ``acc``'s node with ``len(device_indices)`` devices.

    ``acc`` is None only for a replica with no accelerator (it is then
    pinned nowhere). ``max_runtime`` becomes ``activeDeadlineSeconds``.
    """
    if not spec.command:
        raise ManifestError(f"{spec.label}: empty command")
    spec = rendezvous_spec(spec, settings.namespace)
    env = job_env(spec, device_env)
    count = len(spec.device_indices)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never", "hostname": pod_name(spec), "subdomain": gang_name(spec),
        "containers": [_container(spec, env, choose_image(spec, settings), acc, count)],
        "tolerations": _tolerations(acc), "enableServiceLinks": False,
    }
    if acc is not None:
        pod_spec["nodeSelector"] = {HOSTNAME_LABEL: acc.hostname}
    if spec.max_runtime:
        pod_spec["activeDeadlineSeconds"] = max(1, int(spec.max_runtime))
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(spec), "namespace": settings.namespace,
                     "labels": pod_labels(spec, settings),
                     "annotations": {ANNOTATION_JOB: spec.job_id}},
        "spec": pod_spec,
    }


def replica_record(spec: ReplicaSpec, node: str) -> str:
    """The ``xinhe.io/replica`` annotation: the replica's identity and placement
    (Kubernetes ``node`` = the agent it belongs to), as compact JSON."""
    return json.dumps({
        "job_id": spec.job_id, "attempt": spec.attempt, "rank": spec.rank,
        "epoch": spec.epoch, "node": node, "family": spec.family, "model": spec.model,
        "device_indices": list(spec.device_indices), "world_size": spec.world_size,
        "checkpoint_dir": spec.checkpoint_dir}, separators=(",", ":"), sort_keys=True)


def rendezvous_spec(spec: ReplicaSpec, namespace: str) -> ReplicaSpec:
    """``spec`` with the gang's Kubernetes rendezvous address and port."""
    return replace(spec, master_addr=master_addr(spec, namespace),
                   master_port=spec.master_port or DEFAULT_MASTER_PORT)


def build_service(spec: ReplicaSpec, namespace: str) -> dict[str, Any]:
    """The headless Service giving the gang's pods stable DNS names.

    ``publishNotReadyAddresses``: peers must resolve rank 0 while it starts,
    not only once some readiness probe passes.
    """
    port = spec.master_port or DEFAULT_MASTER_PORT
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": gang_name(spec), "namespace": namespace,
                     "labels": {**gang_labels(spec), LABEL_MANAGED_BY: MANAGED_BY},
                     "annotations": {ANNOTATION_JOB: spec.job_id}},
        "spec": {"clusterIP": "None", "selector": gang_labels(spec),
                 "publishNotReadyAddresses": True,
                 "ports": [{"name": "rendezvous", "port": port, "targetPort": port,
                            "protocol": "TCP"}]},
    }
