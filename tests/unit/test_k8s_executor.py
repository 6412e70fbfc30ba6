"""Replicas as pods: the executor backend over recorded API objects, alone and
inside a real Agent talking gRPC to a fake AgentService."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from agents.agent import AgentConfig
from agents.kubernetes.executor import KubernetesCluster
from agents.kubernetes.inventory import adapters_for_node
from agents.kubernetes.pods import PodSettings, gang_name
from agents.kubernetes.run import build_agents, parse_family_images, start_executor
from agents.launcher import ReplicaPhase as P
from agents.launcher import ReplicaSpec
from controlplane.client import XinheClient
from controlplane.localfleet import start_server
from tests.fixtures.kubernetes.fake_api import FakeCoreV1
from tests.integration.conftest import FAST, train_spec, wait_ready_nodes, wait_terminal
from tests.unit.test_agent_protocol import (  # the agent protocol's own test double
    RUNNING,
    STARTING,
    SUCCEEDED,
    fake,  # noqa: F401  (pytest fixture)
    launch,
    wait_for,
)
from xinhe.v1 import common_pb2

SETTINGS = PodSettings(namespace="xinhe-jobs", default_image="registry.local/xinhe/base:1")


class Events:
    def __init__(self) -> None:
        self.states: list[tuple] = []
        self.output = b""

    def on_state(self, _handle, phase, code, message) -> None:
        self.states.append((phase, code, message))

    def on_output(self, _handle, stream, data) -> None:
        assert stream == "stdout"
        self.output += data


def start(api: FakeCoreV1, rank: int = 0, node: str = "gpu-h100-01", devices=(0, 1)):
    cluster = KubernetesCluster(api, SETTINGS, poll_interval=3600)  # rounds driven by hand
    backend = cluster.backend_for(node, adapters_for_node(cluster.nodes, node))
    events = Events()
    spec = ReplicaSpec(job_id="j-7f3a", attempt=1, rank=rank, command=("python", "t.py"),
                       world_size=2, family="nvidia", device_indices=tuple(devices), epoch=3)
    handle = backend.start(spec, {"CUDA_VISIBLE_DEVICES": "0,1"}, events.on_state,
                           events.on_output)
    return cluster, handle, events


def drive(cluster: KubernetesCluster, handle, rounds: int = 6) -> None:
    for _ in range(rounds):
        if handle.done:
            return
        cluster.monitor.poll_once()


def test_pod_runs_to_success_with_its_log_before_the_verdict():
    api = FakeCoreV1(script="pods-succeeded.json")
    cluster, handle, events = start(api)
    drive(cluster, handle)
    assert [s[0] for s in events.states] == [P.STARTING, P.RUNNING, P.SUCCEEDED]
    assert events.output.endswith(b"done\n") and api.streams[0].released
    (container,) = handle.manifest["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert api.pods == {} and api.services == {}  # pod and gang Service cleaned up
    assert api.deleted_services == ["xj-j-7f3a-a1"]


def test_oom_killed_pod_fails_with_exit_137():
    api = FakeCoreV1(script="pods-oomkilled.json")
    cluster, handle, events = start(api)
    drive(cluster, handle)
    assert events.states[-1] == (P.FAILED, 137, "OOMKilled: exited with code 137")
    assert handle.returncode == 137 and handle.wait(0)


def test_image_pull_backoff_fails_and_releases_the_devices():
    api = FakeCoreV1(script="pods-imagepullbackoff.json")
    cluster, handle, events = start(api)
    drive(cluster, handle)
    assert [s[0] for s in events.states] == [P.STARTING, P.FAILED]
    assert events.states[-1][1] == 127 and "ImagePullBackOff" in events.states[-1][2]
    assert api.pods == {}  # deleted: a pending pod would keep its device request


def test_stop_deletes_the_pod_and_ends_stopped():
    api = FakeCoreV1(script="pods-deleted.json")
    cluster, handle, events = start(api)
    cluster.monitor.poll_once()
    assert events.states[-1][0] is P.RUNNING
    handle.stop(grace=7, reason="cancelled by tenant")
    assert api.deleted_pods == [("xj-j-7f3a-a1-r0", 7)]
    cluster.monitor.poll_once()  # the pod is gone
    assert events.states[-1] == (P.STOPPED, 0, "cancelled by tenant") and handle.done
    handle.stop(1)  # repeats are harmless
    assert len(api.deleted_pods) == 1


def test_pod_deleted_by_someone_else_fails_the_replica():
    api = FakeCoreV1(script="pods-unschedulable.json")
    cluster, _handle, events = start(api)
    cluster.monitor.poll_once()
    api.delete_namespaced_pod("xj-j-7f3a-a1-r0", "xinhe-jobs")
    cluster.monitor.poll_once()
    assert events.states[-1] == (P.FAILED, 0, "pod xj-j-7f3a-a1-r0 was deleted outside Xinhe")


def test_gang_shares_one_service_until_its_last_replica_ends():
    api = FakeCoreV1(script="pods-unschedulable.json")
    cluster, first, _ = start(api, rank=0)
    backend = cluster.backend_for("gpu-h100-02",
                                  adapters_for_node(cluster.nodes, "gpu-h100-02"))
    spec = ReplicaSpec(job_id="j-7f3a", attempt=1, rank=1, command=("python", "t.py"),
                       family="nvidia", device_indices=(0,))
    second = backend.start(spec, {}, Events().on_state)
    assert list(api.services) == ["xj-j-7f3a-a1"] and len(api.pods) == 2
    assert api.calls.count("create_namespaced_service") == 1
    first.stop(0, "x")
    cluster.monitor.poll_once()
    assert list(api.services) == ["xj-j-7f3a-a1"]
    second.stop(0, "x")
    cluster.monitor.poll_once()
    assert api.services == {}


def test_api_rejection_fails_the_replica_with_the_reason():
    api = FakeCoreV1()
    api.fail_create = ApiException(status=403, reason="Forbidden")
    _, _handle, events = start(api)
    assert events.states[-1] == (P.FAILED, 127,
                                 "could not create pod xj-j-7f3a-a1-r0: HTTP 403 Forbidden")
    assert api.services == {}


def test_devices_beyond_the_node_are_refused():
    api = FakeCoreV1()
    _, _handle, events = start(api, devices=(7, 8))
    assert events.states[-1][0] is P.FAILED and "not one resource" in events.states[-1][2]
    assert "create_namespaced_pod" not in api.calls


def test_family_image_flags_are_checked():
    assert parse_family_images(["Ascend=reg/a:1"]) == {"ascend": "reg/a:1"}
    with pytest.raises(ValueError, match="FAMILY=IMAGE"):
        parse_family_images(["reg/a:1"])


def run_executor(fake, tmp_path: Path, api: FakeCoreV1):  # noqa: F811
    args = argparse.Namespace(namespace="xinhe-jobs", image="registry.local/xinhe/base:1",
                              family_image=[], pod_service_account=None, kubeconfig=None)
    base = AgentConfig(server=f"127.0.0.1:{fake.port}", node_name="k8s", pool="k8s",
                       work_dir=tmp_path, stop_grace=1.0, backoff_initial=0.05,
                       backoff_max=0.2, cpu_millis=1000, memory_bytes=1 << 30)
    cluster, agents = start_executor(args, base, api=api)
    cluster.monitor.interval = 0.02
    return cluster, agents


@pytest.fixture
def executors():
    """Stops whatever executors a test started."""
    started = []
    yield started
    for cluster, agents in started:
        cluster.close()
        for agent in agents:
            agent.shutdown(grace=0.5, flush_timeout=0.5)


def test_executor_registers_one_node_per_kubernetes_node(fake, executors, tmp_path):  # noqa: F811
    executors.append(run_executor(fake, tmp_path, FakeCoreV1(nodes="nodes-mixed.json")))
    wait_for(lambda: len(fake.registers) == 4, what="four registrations")
    registered = {r.node_name: [(d.family, d.model, d.healthy) for d in r.devices]
                  for r in fake.registers}
    assert set(registered) == {"k8s.a100-pcie-01", "k8s.dcu-01", "k8s.mlu-370-01",
                               "k8s.mlu-370-02"}
    assert registered["k8s.a100-pcie-01"] == [("nvidia", "A100", True)] * 4
    assert not any(healthy for _, _, healthy in registered["k8s.mlu-370-02"])


def test_executor_runs_a_launched_replica_as_a_pod(fake, executors, tmp_path):  # noqa: F811
    api = FakeCoreV1(nodes="nodes-gpu.json", script="pods-succeeded.json")
    api.node_list = {**api.node_list, "items": api.node_list["items"][:1]}  # one agent
    cluster, (agent,) = run_executor(fake, tmp_path, api)
    executors.append((cluster, [agent]))
    wait_for(agent.connected.is_set, what="the agent's stream")
    fake.send(launch=launch(job_id="j-k8s", devices=(2, 3)))
    wait_for(lambda: SUCCEEDED in fake.states("j-k8s"), timeout=10, what="success")
    assert fake.states("j-k8s") == [STARTING, RUNNING, SUCCEEDED]
    assert fake.logs("j-k8s").endswith(b"done\n")
    (name, _), = api.deleted_pods
    assert name == "xj-j-k8s-a1-r0"


def test_build_agents_skips_clusters_without_accelerators(tmp_path: Path):
    api = FakeCoreV1(nodes="nodes-gpu.json")
    api.node_list = {**api.node_list, "items": api.node_list["items"][2:]}  # cpu-01 only
    cluster = KubernetesCluster(api, SETTINGS)
    assert build_agents(cluster, AgentConfig(work_dir=tmp_path)) == []
    args = argparse.Namespace(namespace="ns", image=None, family_image=[],
                              pod_service_account=None, kubeconfig=None)
    with pytest.raises(ValueError, match="no Kubernetes node reports an accelerator"):
        start_executor(args, AgentConfig(work_dir=tmp_path), api=api)



def test_real_control_plane_places_a_gang_across_kubernetes_nodes(tmp_path, executors):
    """The executor beside a real ``xinhe server``: a two-replica Ascend gang
    lands on two Kubernetes nodes, one pod each, pinned, with one rendezvous."""
    server, address = start_server(tmp_path / "data", extra=FAST)
    try:
        api = FakeCoreV1(nodes="nodes-ascend.json", script="pods-succeeded.json")
        args = argparse.Namespace(namespace="xinhe-jobs", image="reg/ascend:8", family_image=[],
                                  pod_service_account=None, kubeconfig=None)
        base = AgentConfig(server=address, node_name="k8s", pool="k8s-ascend",
                           work_dir=tmp_path, stop_grace=1.0)
        cluster, agents = start_executor(args, base, api=api)
        executors.append((cluster, agents))
        cluster.monitor.interval = 0.05
        with XinheClient(address) as client:
            wait_ready_nodes(client, 3)
            job = client.submit(train_spec("gang", replicas=2, devices=8, families=("ascend",)))
            done = wait_terminal(client, job.id, timeout=30)
        assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason
    finally:
        server.stop(grace=5.0)
    pods = {p["spec"]["nodeSelector"]["kubernetes.io/hostname"]: p for p in api.created_pods}
    assert set(pods) == {r.node.removeprefix("k8s.") for r in done.placement.replicas}
    limits = {node: p["spec"]["containers"][0]["resources"]["limits"] for node, p in pods.items()}
    assert sorted(map(str, limits.values())) == ["{'huawei.com/Ascend910': '8'}",
                                                 "{'huawei.com/Ascend910B3': '8'}"]
    envs = [{e["name"]: e["value"] for e in p["spec"]["containers"][0]["env"]}
            for p in pods.values()]
    assert {e["MASTER_ADDR"] for e in envs} == {
        f"{gang_name_of(job.id)}-r0.{gang_name_of(job.id)}.xinhe-jobs.svc"}
    assert sorted(e["RANK"] for e in envs) == ["0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["XINHE_DIST_BACKEND"] for e in envs} == {"hccl"}
    assert api.pods == {} and api.services == {}


def gang_name_of(job_id: str) -> str:
    return gang_name(ReplicaSpec(job_id=job_id, attempt=1, rank=0, command=("x",)))


def test_restart_adopts_only_this_executors_leftover_pods(tmp_path):
    api = FakeCoreV1(script="pods-unschedulable.json")
    for executor in ("k8s-a", "k8s-b"):  # two executors sharing one namespace
        cluster = KubernetesCluster(api, PodSettings(namespace="xinhe-jobs", executor=executor,
                                                     default_image="i"))
        backend = cluster.backend_for("gpu-h100-01",
                                      adapters_for_node(cluster.nodes, "gpu-h100-01"))
        backend.start(ReplicaSpec(job_id=f"j-{executor}", attempt=1, rank=0,
                                  command=("x",), device_indices=(0,)), {}, Events().on_state)
    args = argparse.Namespace(namespace="xinhe-jobs", image="i", family_image=[],
                              pod_service_account=None, kubeconfig=None)
    cluster, agents = start_executor(args, AgentConfig(node_name="k8s-a", work_dir=tmp_path,
                                                       server="127.0.0.1:1"), api=api)
    try:
        assert api.deleted_pods == []  # k8s-a's pod adopted, k8s-b's not touched
        (holder,) = [a for a in agents if a.held_replicas()]
        assert holder.config.node_name == "k8s-a.gpu-h100-01"
        assert list(holder.held_replicas()) == [("j-k8s-a", 1, 0)]
    finally:
        cluster.close()
        for agent in agents:
            agent.shutdown(grace=0, flush_timeout=0)
    assert [name for name, _ in api.deleted_pods] == ["xj-j-k8s-a-a1-r0"]  # stopped with it
    assert list(api.pods) == ["xj-j-k8s-b-a1-r0"]
