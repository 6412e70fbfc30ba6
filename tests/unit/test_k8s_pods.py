"""Kubernetes executor manifests: valid against the client's models, DNS-safe."""

from __future__ import annotations

import re

import pytest

from agents.kubernetes.inventory import cluster_accelerators
from agents.kubernetes.pods import (
    ManifestError,
    PodSettings,
    build_pod,
    build_service,
    dns_label,
    master_addr,
)
from agents.launcher import ReplicaSpec
from tests.deploy.k8s_schema import validate
from tests.fixtures.kubernetes.fake_api import deserialize, load

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SETTINGS = PodSettings(namespace="xinhe-jobs", default_image="registry.local/xinhe/base:1",
                       family_images={"ascend": "registry.local/xinhe/ascend:8.0"})


def accelerators(fixture: str, node: str):
    nodes = deserialize(load(fixture), "V1NodeList").items
    return cluster_accelerators(nodes)[node][0]


def spec(**extra) -> ReplicaSpec:
    base = dict(job_id="j-7f3a", attempt=2, rank=1, command=("python", "train.py"),
                job_name="llama", env={"EPOCHS": "3"}, world_size=4,
                master_addr="10.0.0.7", master_port=29600, family="ascend", model="910B",
                device_indices=(4, 5, 6, 7), epoch=9, max_runtime=3600.0)
    base.update(extra)
    return ReplicaSpec(**base)


def test_pod_manifest_is_valid_and_carries_the_placement():
    acc = accelerators("nodes-ascend.json", "ascend-910b-02")
    device_env = {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3", "XINHE_DEVICE": "npu"}
    pod = build_pod(spec(), device_env, acc, SETTINGS)
    assert validate(pod) == []
    pod_spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert pod_spec["nodeSelector"] == {"kubernetes.io/hostname": "ascend-910b-02"}
    assert pod_spec["restartPolicy"] == "Never" and pod_spec["activeDeadlineSeconds"] == 3600
    assert container["resources"]["limits"] == {"huawei.com/Ascend910B3": "4"}
    assert container["image"] == "registry.local/xinhe/ascend:8.0"
    assert container["command"] == ["python", "train.py"]
    assert pod["metadata"]["labels"] == {
        "xinhe.io/job-id": "j-7f3a", "xinhe.io/attempt": "2", "xinhe.io/rank": "1",
        "xinhe.io/epoch": "9", "app.kubernetes.io/managed-by": "xinhe-executor",
        "xinhe.io/executor": "xinhe"}
    assert "ownerReferences" not in pod["metadata"]


def test_runtime_env_is_the_launchers_with_kubernetes_rendezvous():
    acc = accelerators("nodes-ascend.json", "ascend-910b-02")
    pod = build_pod(spec(), {"XINHE_DEVICE": "npu"}, acc, SETTINGS)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    rank0 = "xj-j-7f3a-a2-r0.xj-j-7f3a-a2.xinhe-jobs.svc"
    assert env["MASTER_ADDR"] == env["XINHE_MASTER_ADDR"] == rank0
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "4", "29600")
    assert (env["EPOCHS"], env["XINHE_DEVICE"], env["XINHE_JOB_ID"]) == ("3", "npu", "j-7f3a")
    assert "PATH" not in env  # the executor's own environment stays out of pods
    assert pod["spec"]["hostname"] == "xj-j-7f3a-a2-r1"
    assert pod["spec"]["subdomain"] == "xj-j-7f3a-a2"


def test_vendor_taints_become_tolerations():
    acc = accelerators("nodes-gpu.json", "gpu-h100-01")
    pod = build_pod(spec(family="nvidia"), {}, acc, SETTINGS)
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["spec"]["containers"][0]["image"] == "registry.local/xinhe/base:1"


def test_headless_service_selects_the_gang():
    service = build_service(spec(), "xinhe-jobs")
    assert validate(service) == []
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"xinhe.io/job-id": "j-7f3a", "xinhe.io/attempt": "2"}
    assert service["spec"]["ports"][0]["port"] == 29600
    assert service["metadata"]["name"] == "xj-j-7f3a-a2"


@pytest.mark.parametrize("job_id", [
    "j-7f3a", "Job_With.Upper/and_slashes", "x" * 200, "---", "任务-1",
    "3f2a9c7e-1b4d-4e8a-9f0c-6d5e4b3a2c1f",
])
def test_names_and_label_values_are_dns_safe(job_id):
    pod = build_pod(spec(job_id=job_id, rank=127), {}, None, SETTINGS)
    assert validate(pod) == []
    for name in (pod["metadata"]["name"], pod["spec"]["hostname"], pod["spec"]["subdomain"]):
        assert DNS_LABEL.match(name) and len(name) <= 63, name
    for value in pod["metadata"]["labels"].values():
        assert LABEL_VALUE.match(value) and len(value) <= 63, value
    assert pod["metadata"]["annotations"]["xinhe.io/job-id-raw"] == job_id
    assert len(master_addr(spec(job_id=job_id), "ns").split(".")[0]) <= 63


def test_distinct_job_ids_never_share_a_name():
    assert dns_label("A_b") != dns_label("a-b")
    assert dns_label("x" * 80 + "1") != dns_label("x" * 80 + "2")


def test_no_image_is_a_clear_error():
    with pytest.raises(ManifestError, match=r"no container image.*--family-image nvidia"):
        build_pod(spec(family="nvidia"), {}, None, PodSettings(namespace="ns"))
    image = build_pod(spec(image="mine:1"), {}, None,
                      PodSettings(namespace="ns"))["spec"]["containers"][0]["image"]
    assert image == "mine:1"


def test_the_jobs_image_wins_over_the_executors():
    def image_of(**extra) -> str:
        return build_pod(spec(**extra), {}, None, SETTINGS)["spec"]["containers"][0]["image"]

    assert image_of(image="reg.example/team/train:1.4") == "reg.example/team/train:1.4"
    assert image_of() == "registry.local/xinhe/ascend:8.0"  # the family's image
    assert image_of(family="nvidia") == "registry.local/xinhe/base:1"  # the default


@pytest.mark.parametrize(("cpu", "memory", "expected"), [
    (4000, 64 << 30, {"cpu": "4", "memory": str(64 << 30)}),
    (1500, 0, {"cpu": "1500m"}),
    (0, 512 << 20, {"memory": str(512 << 20)}),
])
def test_cpu_and_memory_are_requested_and_limited(cpu, memory, expected):
    acc = accelerators("nodes-ascend.json", "ascend-910b-02")
    pod = build_pod(spec(cpu_millis=cpu, memory_bytes=memory), {}, acc, SETTINGS)
    assert validate(pod) == []
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"huawei.com/Ascend910B3": "4", **expected}
    assert resources["limits"] == resources["requests"]


def test_a_cpu_only_replica_without_reservations_asks_for_nothing():
    pod = build_pod(spec(device_indices=(), family=""), {}, None, SETTINGS)
    assert "resources" not in pod["spec"]["containers"][0]
    with_cpu = build_pod(spec(device_indices=(), family="", cpu_millis=250), {}, None, SETTINGS)
    assert with_cpu["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": "250m"}, "requests": {"cpu": "250m"}}


def test_empty_command_is_rejected():
    with pytest.raises(ManifestError, match="empty command"):
        build_pod(spec(command=()), {}, None, SETTINGS)
