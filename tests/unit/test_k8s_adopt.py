"""A restarted executor adopts its earlier run's pods (recorded pod lists): its
agents register holding them, so the control plane keeps the current ones and
stops stale ones instead of losing or double-running them."""

from __future__ import annotations

import argparse
import copy

from agents.agent import AgentConfig
from agents.kubernetes.adopt import spec_of, survey
from agents.kubernetes.executor import KubernetesCluster
from agents.kubernetes.inventory import adapters_for_node
from agents.kubernetes.pods import ANNOTATION_REPLICA, PodSettings
from agents.kubernetes.run import start_executor
from agents.launcher import ReplicaSpec
from tests.fixtures.kubernetes.fake_api import FakeCoreV1
from tests.unit.test_agent_protocol import (  # noqa: F401  (fake: pytest fixture)
    RUNNING,
    STOPPED,
    fake,
    wait_for,
)
from xinhe.v1 import agent_pb2

SETTINGS = PodSettings(namespace="xinhe-jobs", executor="k8s", default_image="reg/base:1")
ARGS = argparse.Namespace(namespace="xinhe-jobs", image="reg/base:1", family_image=[],
                          pod_service_account=None, kubeconfig=None)


def earlier_run(api: FakeCoreV1) -> None:
    """What the previous executor process left: a running pod of job j-keep
    (epoch 3), one of j-stale (epoch 1), and a pod of an older executor
    version without the replica annotation."""
    cluster = KubernetesCluster(api, SETTINGS, poll_interval=3600)
    backend = cluster.backend_for("gpu-h100-01", adapters_for_node(cluster.nodes, "gpu-h100-01"))
    for job, devices, epoch in (("j-keep", (0, 1), 3), ("j-stale", (2,), 1)):
        backend.start(ReplicaSpec(job_id=job, attempt=1, rank=0, command=("python", "t.py"),
                                  family="nvidia", device_indices=devices, epoch=epoch,
                                  checkpoint_dir=f"/ckpt/{job}"),
                      {}, lambda *_: None)
    old = copy.deepcopy(api.pods["xj-j-keep-a1-r0"]["manifest"])
    old["metadata"]["name"] = "xj-j-old-a1-r0"
    del old["metadata"]["annotations"][ANNOTATION_REPLICA]
    api.create_namespaced_pod("xinhe-jobs", body=old)


def test_the_annotation_gives_back_the_replica():
    api = FakeCoreV1(nodes="nodes-gpu.json", script="pods-running.json")
    earlier_run(api)
    found = {f.name: f for f in survey(api.list_namespaced_pod("xinhe-jobs").items)}
    keep = found["xj-j-keep-a1-r0"]
    assert keep.node == "gpu-h100-01" and keep.spec is not None
    assert (keep.spec.key, keep.spec.epoch, keep.spec.device_indices) == (
        ("j-keep", 1, 0), 3, (0, 1))
    assert keep.spec.checkpoint_dir == "/ckpt/j-keep" and keep.spec.family == "nvidia"
    assert found["xj-j-old-a1-r0"].spec is None
    assert spec_of(found["xj-j-old-a1-r0"].pod) is None


def test_restarted_executor_registers_holding_its_pods_and_stops_stale_ones(
        fake, tmp_path):  # noqa: F811
    api = FakeCoreV1(nodes="nodes-gpu.json", script="pods-running.json")
    earlier_run(api)
    # The control plane's answer at registration: j-stale's epoch is not current.
    fake.stop_on_register = [agent_pb2.ReplicaRef(job_id="j-stale", attempt=1, rank=0,
                                                  epoch=1)]
    base = AgentConfig(server=f"127.0.0.1:{fake.port}", node_name="k8s", pool="k8s",
                       work_dir=tmp_path, stop_grace=1.0, backoff_initial=0.05,
                       backoff_max=0.2, cpu_millis=1000, memory_bytes=1 << 30)
    cluster, fleet = start_executor(ARGS, base, api=api)
    cluster.monitor.interval = 0.05
    try:
        # Deleted at start, not adoptable (j-stale's stop may follow at once).
        assert [name for name, _ in api.deleted_pods][:1] == ["xj-j-old-a1-r0"]
        wait_for(lambda: len(fake.registers) == 2, what="registrations")
        (register,) = [r for r in fake.registers if r.node_name == "k8s.gpu-h100-01"]
        held = {(r.ref.job_id, r.ref.epoch): r.state for r in register.replicas}
        assert held == {("j-keep", 3): RUNNING, ("j-stale", 1): RUNNING}
        wait_for(lambda: STOPPED in fake.states("j-stale"), timeout=10, what="stale stopped")
        assert "xj-j-stale-a1-r0" not in api.pods and "xj-j-keep-a1-r0" in api.pods
        assert sorted(name for name, _ in api.deleted_pods) == ["xj-j-old-a1-r0",
                                                                "xj-j-stale-a1-r0"]
        wait_for(lambda: any([r.job_id for r in h.running] == ["j-keep"]
                             for h in fake.heartbeats()), timeout=10,
                 what="heartbeats naming the kept replica only")
        assert fake.states("j-keep") == [RUNNING]  # not restarted: no STARTING
    finally:
        fleet.shutdown(grace=0.5)
