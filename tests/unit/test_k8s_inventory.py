"""Kubernetes executor inventory: recorded NodeLists -> per-node devices."""

from __future__ import annotations

import pytest

from agents.kubernetes.inventory import NodeCache, adapters_for_node, cluster_accelerators
from tests.fixtures.kubernetes.fake_api import FakeCoreV1, deserialize, load


def summary(fixture: str) -> dict[str, tuple]:
    nodes = deserialize(load(fixture), "V1NodeList").items
    return {name: tuple((a.resource_name, a.family, a.model, a.capacity, a.allocatable)
                        for a in accs)
            for name, accs in cluster_accelerators(nodes).items()}


@pytest.mark.parametrize(("fixture", "expected"), [
    ("nodes-gpu.json", {  # GFD product label; the control-plane node has no GPU
        "gpu-h100-01": (("nvidia.com/gpu", "nvidia", "H100", 8, 8),),
        "gpu-h100-02": (("nvidia.com/gpu", "nvidia", "H100", 8, 6),),
    }),
    ("nodes-ascend.json", {  # generic spelling + chip label; per-model spellings
        "ascend-910b-01": (("huawei.com/Ascend910", "ascend", "910B", 8, 8),),
        "ascend-910b-02": (("huawei.com/Ascend910B3", "ascend", "910B", 8, 8),),
        "ascend-910b4-03": (("huawei.com/Ascend910B4", "ascend", "910B4", 8, 7),),
    }),
    ("nodes-mixed.json", {  # cambricon label, A100 PCIe, HAMi's hygon.com/dcunum
        "mlu-370-01": (("cambricon.com/mlu", "cambricon", "MLU370-X8", 8, 8),),
        "mlu-370-02": (("cambricon.com/mlu", "cambricon", "MLU370-X8", 8, 8),),
        "a100-pcie-01": (("nvidia.com/gpu", "nvidia", "A100", 4, 4),),
        "dcu-01": (("hygon.com/dcunum", "hygon", "hygon", 8, 8),),
    }),
])
def test_resources_are_discovered_per_node(fixture, expected):
    assert summary(fixture) == expected


def devices(fixture: str, node: str):
    cache = NodeCache(FakeCoreV1(nodes=fixture).list_node)
    return [d for adapter in adapters_for_node(cache, node) for d in adapter.detect()]


def test_unallocatable_devices_are_reported_unhealthy():
    found = devices("nodes-gpu.json", "gpu-h100-02")
    assert [d.index for d in found] == list(range(8))
    assert [d.healthy for d in found] == [True] * 6 + [False] * 2
    assert "unallocatable" in found[7].health_reason
    assert {d.memory_bytes for d in found} == {80 * 1000**3}


def test_cordoned_not_ready_node_has_every_device_unhealthy():
    found = devices("nodes-mixed.json", "mlu-370-02")
    assert len(found) == 8 and not any(d.healthy for d in found)
    assert found[0].health_reason == ("node cordoned (unschedulable); "
                                      "node NotReady (NodeStatusUnknown)")


def test_vendor_taints_are_tolerated_but_not_cordon_or_unreachable():
    nodes = deserialize(load("nodes-gpu.json"), "V1NodeList").items
    gpu = cluster_accelerators(nodes)["gpu-h100-01"][0]
    assert gpu.vendor_taints == (("nvidia.com/gpu", "NoSchedule"),)
    mixed = cluster_accelerators(deserialize(load("nodes-mixed.json"), "V1NodeList").items)
    assert mixed["mlu-370-02"][0].vendor_taints == ()


def test_launch_env_renumbers_inside_the_pod_and_leaves_the_runtime_var_to_the_plugin():
    cache = NodeCache(FakeCoreV1(nodes="nodes-ascend.json").list_node)
    (adapter,) = adapters_for_node(cache, "ascend-910b-02")
    env = adapter.launch_env([5, 6, 7])
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2"
    assert env["XINHE_DEVICE"] == "npu" and env["XINHE_DIST_BACKEND"] == "hccl"
    assert "ASCEND_VISIBLE_DEVICES" not in env  # the device plugin sets it
    assert adapter.launch_env([]) == {**env, "ASCEND_RT_VISIBLE_DEVICES": "",
                                      "XINHE_VISIBLE_DEVICES": ""}


def test_node_cache_lists_once_per_ttl_and_keeps_the_last_view_on_errors():
    api = FakeCoreV1(nodes="nodes-gpu.json")
    now = [0.0]
    cache = NodeCache(api.list_node, ttl=10.0, clock=lambda: now[0])
    assert set(cache.nodes()) == {"gpu-h100-01", "gpu-h100-02"}
    cache.nodes()
    assert api.calls.count("list_node") == 1
    now[0] = 11.0
    api.list_node = lambda: (_ for _ in ()).throw(OSError("connection refused"))
    assert set(cache.nodes()) == {"gpu-h100-01", "gpu-h100-02"}
