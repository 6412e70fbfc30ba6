"""Nodes that join, change and leave reach the control plane without a restart:
recorded watch events through the client's own ``Watch``."""

from __future__ import annotations

import argparse

import pytest
from kubernetes.client.exceptions import ApiException

from agents.agent import AgentConfig
from agents.kubernetes.inventory import KubernetesNodeAdapter, NodeCache
from agents.kubernetes.nodewatch import NodeChange, NodeWatch
from agents.kubernetes.run import start_executor
from tests.fixtures.kubernetes.fake_api import FakeCoreV1, load
from tests.unit.test_agent_protocol import fake, wait_for  # noqa: F401  (pytest fixture)

EVENTS = load("node-watch.json")


def watcher(api: FakeCoreV1) -> tuple[NodeWatch, list[NodeChange]]:
    changes: list[NodeChange] = []
    return NodeWatch(api, NodeCache(api.list_node), changes.append, timeout_s=5), changes


def health(cache: NodeCache, node: str) -> list[bool]:
    acc = cache.node(node)[0]
    adapter = KubernetesNodeAdapter(cache, node, acc.resource_name, acc.family)
    return [d.healthy for d in adapter.detect()]


def test_added_modified_and_deleted_nodes_update_the_view():
    api = FakeCoreV1(nodes="nodes-gpu.json")
    watch, changes = watcher(api)
    version = watch.relist()
    assert version == "48213377" and sorted(watch.cache.nodes()) == ["gpu-h100-01",
                                                                     "gpu-h100-02"]
    assert not changes  # the first LIST is the starting point, not a change
    api.push_node_events(*EVENTS["events"])
    assert watch.watch_from(version) == "48213430"  # resume point: the last event's
    assert api.watches[0]["resource_version"] == "48213377"
    assert api.watches[0]["timeout_seconds"] == 5
    assert changes == [NodeChange(added=frozenset({"gpu-h100-03"})),
                       NodeChange(added=frozenset({"cpu-01"})),
                       NodeChange(deleted=frozenset({"gpu-h100-01"}))]
    view = watch.cache.nodes()
    assert sorted(view) == ["cpu-01", "gpu-h100-02", "gpu-h100-03"]
    assert [(a.family, a.model, a.capacity) for a in view["cpu-01"]] == [("nvidia", "A100", 4)]
    assert health(watch.cache, "gpu-h100-02") == [False] * 8  # cordoned
    assert "list_node" in api.calls and api.calls.count("list_node") == 2  # LIST + WATCH


def test_an_expired_watch_falls_back_to_a_list_that_reports_the_difference():
    api = FakeCoreV1(nodes="nodes-gpu.json")
    watch, changes = watcher(api)
    version = watch.relist()
    api.push_node_events(EVENTS["expired"])
    with pytest.raises(ApiException) as expired:
        watch.watch_from(version)
    assert expired.value.status == 410
    # Meanwhile gpu-h100-01 left and gpu-h100-03 joined: the LIST shows it.
    joined = EVENTS["events"][0]["object"]
    api.node_list = {**api.node_list, "items": [*api.node_list["items"][1:], joined]}
    watch.relist()
    assert changes == [NodeChange(added=frozenset({"gpu-h100-03"}),
                                  deleted=frozenset({"gpu-h100-01"}))]


def test_the_watch_loop_keeps_going_until_stopped():
    api = FakeCoreV1(nodes="nodes-gpu.json")
    watch, changes = watcher(api)
    watch.start()
    try:
        api.push_node_events(EVENTS["expired"])  # 410: the loop lists again
        wait_for(lambda: api.calls.count("list_node") >= 4, what="a relist after 410")
        api.push_node_events(EVENTS["events"][0])
        wait_for(lambda: changes, what="the added node")
        assert changes == [NodeChange(added=frozenset({"gpu-h100-03"}))]
    finally:
        watch.stop()


def test_executor_gives_a_joining_node_an_agent_and_stops_a_deleted_ones(
        fake, tmp_path):  # noqa: F811
    api = FakeCoreV1(nodes="nodes-gpu.json")
    args = argparse.Namespace(namespace="xinhe-jobs", image="registry.local/xinhe/base:1",
                              family_image=[], pod_service_account=None, kubeconfig=None)
    base = AgentConfig(server=f"127.0.0.1:{fake.port}", node_name="k8s", pool="k8s",
                       work_dir=tmp_path, stop_grace=1.0, backoff_initial=0.05,
                       backoff_max=0.2, cpu_millis=1000, memory_bytes=1 << 30)
    _cluster, fleet = start_executor(args, base, api=api)
    try:
        wait_for(lambda: len(fake.registers) == 2, what="two registrations")
        api.push_node_events(*EVENTS["events"])
        wait_for(lambda: len(fake.registers) == 4, timeout=10, what="two more registrations")
        joined = {r.node_name: [d.model for d in r.devices] for r in fake.registers[2:]}
        assert joined == {"k8s.gpu-h100-03": ["H100"] * 8, "k8s.cpu-01": ["A100"] * 4}
        wait_for(lambda: [a.config.node_name for a in fleet] == [
            "k8s.cpu-01", "k8s.gpu-h100-02", "k8s.gpu-h100-03"], timeout=10,
            what="the deleted node's agent gone")
        update = wait_for(lambda: [m.inventory for m in list(fake.messages)
                                   if m.HasField("inventory")], timeout=10,
                          what="gpu-h100-02's InventoryUpdate")[0]
        assert [d.healthy for d in update.devices] == [False] * 8
        assert update.devices[0].health_reason == "node cordoned (unschedulable)"
    finally:
        fleet.shutdown(grace=0.5)


def test_an_unreadable_cluster_stops_the_start_with_the_reason(tmp_path):
    api = FakeCoreV1(nodes="nodes-gpu.json")

    def forbidden(**_kwargs):
        raise ApiException(status=403, reason="Forbidden")

    api.list_node = forbidden
    args = argparse.Namespace(namespace="ns", image=None, family_image=[],
                              pod_service_account=None, kubeconfig=None)
    with pytest.raises(RuntimeError, match=r"cannot list the cluster's nodes: .*403"):
        start_executor(args, AgentConfig(work_dir=tmp_path), api=api)
