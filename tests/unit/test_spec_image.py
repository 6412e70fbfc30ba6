"""The job's container image: validated, resolved per chip, carried to the agent."""

from __future__ import annotations

import grpc
import pytest

from agents.agent import spec_from_launch
from controlplane.api.errors import status_of
from controlplane.model.spec import (
    SpecError,
    resolve_image,
    spec_from_yaml,
    spec_to_yaml_dict,
    validate_spec,
)
from controlplane.services.translate import launch_messages
from xinhe.v1 import common_pb2

BASE = {"name": "t", "queue": "lab-a/default", "run": "python t.py",
        "resources": {"accelerators": 1, "cpu": "1500m", "memory": "2GiB"}}


def spec(**extra) -> common_pb2.JobSpec:
    return spec_from_yaml({**BASE, **extra})


@pytest.mark.parametrize("image", [
    "busybox", "busybox:1.36", "registry.local:5000/xinhe/base:1",
    "nvcr.io/nvidia/pytorch:24.05-py3", "reg.example/a/b@sha256:" + "0" * 64,
    "reg.example/a/b:v1@sha256:" + "f" * 64,
])
def test_sane_image_references_are_accepted(image):
    validate_spec(spec(image=image))


@pytest.mark.parametrize("image", [
    "Busybox", "busybox:", "http://reg/a:1", "a b", "reg/a:tag@sha256:xyz", "a//b",
    "-lead", "x" * 600,
])
def test_bad_image_is_invalid_argument_naming_the_field(image):
    with pytest.raises(SpecError) as caught:
        validate_spec(spec(image=image))
    assert caught.value.field == "spec.image"
    code, message = status_of(caught.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("spec.image:")


def test_a_bad_variant_image_names_the_variant():
    with pytest.raises(SpecError) as caught:
        validate_spec(spec(variants={"ascend": {"image": "NOT OK"}}))
    assert caught.value.field == "spec.variants[ascend].image"


def test_yaml_round_trip_keeps_the_image():
    parsed = spec(image="reg.example/t:1")
    assert parsed.image == "reg.example/t:1"
    assert spec_from_yaml(spec_to_yaml_dict(parsed)) == parsed


def test_model_variant_beats_family_variant_beats_spec():
    s = spec(image="reg/base:1", variants={"ascend": {"image": "reg/ascend:1"},
                                           "910B": {"image": "reg/910b:1"}})
    assert resolve_image(s, "ascend", "910B") == "reg/910b:1"
    assert resolve_image(s, "ascend", "910") == "reg/ascend:1"
    assert resolve_image(s, "nvidia", "H100") == "reg/base:1"
    assert resolve_image(spec(), "nvidia", "H100") == ""


def test_launch_carries_image_cpu_and_memory_to_the_agent():
    job = common_pb2.Job(id="j-1", tenant="lab-a", attempt=2, epoch=5,
                         spec=spec(image="reg/base:1",
                                   variants={"ascend": {"image": "reg/ascend:1"}}))
    job.placement.family, job.placement.model = "ascend", "910B"
    job.placement.replicas.add(rank=0, node="n1", device_indices=[3])
    ((node, message),) = launch_messages(job)
    assert node == "n1" and message.launch.image == "reg/ascend:1"
    replica = spec_from_launch(message.launch)
    assert (replica.image, replica.cpu_millis, replica.memory_bytes) == (
        "reg/ascend:1", 1500, 2 << 30)
