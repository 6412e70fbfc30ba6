"""Objectives and regions through the API: YAML, validation, translation
into the core's PendingJob and NodeView, and back out in the placement."""

from __future__ import annotations

import pytest

from controlplane.model.catalogue import default_catalogue
from controlplane.model.spec import SpecError, spec_from_yaml, spec_to_yaml_dict, validate_spec
from controlplane.scheduler.types import Candidate, PlacementDecision, ReplicaAssignment
from controlplane.services.allocations import Allocations
from controlplane.services.translate import node_views, pending_job, placement_proto
from xinhe.v1 import common_pb2

J = common_pb2
BASE = {"name": "train", "queue": "lab-a/default", "command": ["python", "train.py"],
        "resources": {"accelerators": 8, "accelerator_models": ["910B", "H100"]}}


def parsed(**overrides: object) -> common_pb2.JobSpec:
    return spec_from_yaml({**BASE, **overrides})


def test_yaml_keys_fill_the_spec_and_round_trip() -> None:
    spec = parsed(objective="Cost", data_region="east", latency_class="interactive")
    assert (spec.objective, spec.data_region, spec.latency_class) == (
        J.OBJECTIVE_COST, "east", J.LATENCY_CLASS_INTERACTIVE)
    validate_spec(spec)
    assert spec_from_yaml(spec_to_yaml_dict(spec)) == spec
    assert "objective" not in spec_to_yaml_dict(parsed())  # defaults omitted


@pytest.mark.parametrize(("overrides", "field", "message"), [
    ({"objective": "greenest"}, "objective", "known: fastest, cost, energy, pinned"),
    ({"objective": "unspecified"}, "objective", "unknown objective"),
    ({"latency_class": "realtime"}, "latency_class", "known: batch, interactive"),
])
def test_yaml_refuses_unknown_names(overrides: dict, field: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parsed(**overrides)
    assert err.value.field == field
    assert message in str(err.value)


def spec_with(**fields: object) -> common_pb2.JobSpec:
    spec = parsed()
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"objective": 9}, "spec.objective", "unknown objective 9"),
    ({"latency_class": 7}, "spec.latency_class", "unknown latency class 7"),
    ({"data_region": "east west"}, "spec.data_region", "is not a region name"),
    ({"data_region": "x" * 64}, "spec.data_region", "is not a region name"),
])
def test_validation_names_the_field(fields: dict, field: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(spec_with(**fields))
    assert err.value.field == field
    assert message in str(err.value)


def test_pinned_needs_a_family_to_pin_to() -> None:
    spec = spec_with(objective=J.OBJECTIVE_PINNED)
    validate_spec(spec)
    del spec.resources.models[:]
    with pytest.raises(SpecError, match=r"name one in resources\.families") as err:
        validate_spec(spec)
    assert err.value.field == "spec.objective"


@pytest.mark.parametrize(("resources", "first"), [
    ({"accelerator_models": ["Ascend910B3", "H100"]}, "ascend"),
    ({"accelerator_families": ["nvidia", "ascend"], "accelerator_models": ["910B"]}, "nvidia"),
    ({}, ""),
])
def test_translate_carries_objective_region_and_first_family(resources: dict,
                                                            first: str) -> None:
    spec = parsed(objective="pinned", data_region="east", latency_class="interactive",
                  resources={"accelerators": 1, **resources})
    job = J.Job(id="j-1", tenant="lab-a", spec=spec)
    view = pending_job(job, 3, default_catalogue())
    assert (view.objective, view.data_region, view.latency_class, view.first_family) == (
        "pinned", "east", "interactive", first)
    plain = pending_job(J.Job(id="j-2", tenant="lab-a", spec=parsed()), 4, default_catalogue())
    assert (plain.objective, plain.data_region, plain.latency_class) == ("", "", "")


def test_node_views_carry_the_pool_price() -> None:
    node = J.Node(name="n1", pool="p", region="west", status=J.NODE_STATUS_READY,
                  cost_per_device_hour=1.25)
    node.devices.add(index=0, family="ascend", model="910B", memory_bytes=64 * 10**9,
                     healthy=True)
    [view] = node_views([node], Allocations(), default_catalogue())
    assert (view.region, view.cost_per_device_hour) == ("west", 1.25)


def test_placement_proto_carries_the_objective_and_estimates() -> None:
    chosen = Candidate("p", "910B", 0.0, 3600.0, 3600.0, True, cost=8.0, energy_kwh=3.2)
    decision = PlacementDecision(
        job_id="j-1", pool="p", region="west", family="ascend", model="910B",
        replicas=(ReplicaAssignment(0, "n1", (0,)),), estimated_runtime_s=3600.0,
        candidates=(chosen,), objective="cost")
    proto = placement_proto(decision, "10.0.0.1", 29500)
    assert (proto.objective, proto.estimated_cost, proto.estimated_energy_kwh) == (
        "cost", 8.0, 3.2)
    assert "objective: lowest cost" in proto.explanation
    default = placement_proto(PlacementDecision(
        job_id="j-2", pool="p", region="west", family="ascend", model="910B",
        replicas=(), estimated_runtime_s=1.0), "a", 1)
    assert default.objective == "fastest"


def test_xinhe_job_shows_objective_region_and_estimates() -> None:
    from controlplane.cli.job import objective_text

    job = J.Job(spec=parsed(objective="cost", data_region="east"))
    assert objective_text(job) == "cost; data region east, batch"
    job.placement.objective, job.placement.estimated_cost = "cost", 9.333
    job.placement.estimated_energy_kwh = 1.4
    assert objective_text(job) == (
        "cost (placed by cost: est. cost 9.33, 1.4 kWh); data region east, batch")
    queued = J.Job(spec=parsed(latency_class="interactive"))
    assert objective_text(queued) == "queue default; no data region, interactive"


def test_a_migration_target_wins_over_the_pinned_family() -> None:
    spec = parsed(objective="pinned")  # names 910B first: pinned to ascend
    job = J.Job(id="j-1", tenant="lab-a", spec=spec)
    assert pending_job(job, 0, default_catalogue()).first_family == "ascend"
    job.placement_target = "family:nvidia"
    moved = pending_job(job, 0, default_catalogue())
    assert (moved.first_family, moved.models) == ("", frozenset({"H100"}))


def test_agent_flag_sets_the_pool_price_it_registers_with() -> None:
    import argparse

    from agents.main import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = build_config(parser.parse_args(["--cost-per-device-hour", "2.75"]))
    assert config.cost_per_device_hour == 2.75
    assert build_config(parser.parse_args([])).cost_per_device_hour == 0.0
    for bad in ("-1", "nan", "cheap"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--cost-per-device-hour", bad])
