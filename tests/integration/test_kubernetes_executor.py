"""The Kubernetes executor against a real cluster: skipped unless KUBECONFIG is set.

A real control plane runs here; ``xinhe agent --executor kubernetes`` runs
here too and drives the cluster named by $KUBECONFIG. The cluster needs at
least one node with an accelerator resource the catalogue knows, and the
kubeconfig's user needs the rights the Helm chart's executor Role grants
(pods, pods/log, pods/exec, services in the namespace) plus list and watch
on nodes.

Knobs: XINHE_K8S_TEST_NAMESPACE (default "default"), XINHE_K8S_TEST_IMAGE
(default busybox:1.36; any image with ``sh``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, ManagedProcess, start_agent, start_server
from tests.integration.conftest import FAST, job_logs, wait_for, wait_terminal
from xinhe.v1 import common_pb2

pytestmark = pytest.mark.skipif(not os.environ.get("KUBECONFIG"),
                                reason="needs a real cluster: set KUBECONFIG")
NAMESPACE = os.environ.get("XINHE_K8S_TEST_NAMESPACE", "default")
IMAGE = os.environ.get("XINHE_K8S_TEST_IMAGE", "busybox:1.36")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XinheClient]:
    root = tmp_path_factory.mktemp("k8s")
    server, address = start_server(root / "data", extra=FAST, log_dir=root)
    executor: ManagedProcess | None = None
    try:
        executor = start_agent(address, AgentSpec("k8s", "k8s", "cluster", extra=(
            "--executor", "kubernetes", "--namespace", NAMESPACE,
            "--kubeconfig", os.environ["KUBECONFIG"], "--image", IMAGE)), root, root)
        with XinheClient(address) as c:
            c.wait_ready(60)
            wait_for(lambda: any(n.status == common_pb2.NODE_STATUS_READY for n in c.nodes()),
                     120, "a Kubernetes node registered by the executor")
            yield c
    finally:
        for proc in (executor, server):
            if proc is not None:
                proc.stop(grace=30.0)


def shell_job(name: str, script: str) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(name=name, queue="lab-a/default", replicas=1,
                              command=["sh", "-c", script])
    spec.resources.accelerators = 1
    spec.reference_runtime.FromSeconds(60)
    return spec


def test_tiny_job_runs_as_a_pod_and_streams_its_log(client: XinheClient) -> None:
    job = client.submit(shell_job(
        "k8s-hello", 'echo "hello rank $XINHE_RANK/$XINHE_WORLD_SIZE on $XINHE_DEVICE"'))
    done = wait_terminal(client, job.id, timeout=300)  # image pulls take a while
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason
    assert done.placement.replicas[0].node.startswith("k8s.")  # <executor>.<k8s node>
    assert "hello rank 0/1 on " in job_logs(client, job.id)


def test_cancel_deletes_the_pod(client: XinheClient) -> None:
    job = client.submit(shell_job("k8s-sleep", "echo up; sleep 600"))
    wait_for(lambda: client.get(job.id).state == common_pb2.JOB_STATE_RUNNING, 300, "running")
    client.cancel(job.id, "integration test")
    done = wait_terminal(client, job.id, timeout=120)
    assert done.state == common_pb2.JOB_STATE_CANCELLED
    wait_for(lambda: not job_pods(job.id), 120, "the job's pods to be deleted")


def job_pods(job_id: str) -> list[str]:
    """Names of the job's pods still in the namespace (read with the real client)."""
    from kubernetes import client, config

    from agents.kubernetes.pods import LABEL_JOB, dns_label

    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    pods = client.CoreV1Api().list_namespaced_pod(
        NAMESPACE, label_selector=f"{LABEL_JOB}={dns_label(job_id)}")
    return [p.metadata.name for p in pods.items]
