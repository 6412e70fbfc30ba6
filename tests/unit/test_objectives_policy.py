"""Objectives and regions in the policy file and the chip catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controlplane.model.catalogue import default_catalogue, parse_catalogue
from controlplane.scheduler.types import Policy
from controlplane.services.policy import PolicyError, load_policy, parse_policy

OBJECTIVE_KEYS = """\
default_objective: energy
queue_objectives: {lab-a/batch: cost, lab-b/default: pinned}
transfer_penalty_s:
  east: {west: 1800, north: 600}
default_transfer_penalty_s: 3600
"""


def test_objective_and_region_keys_reach_the_policy() -> None:
    policy = parse_policy(yaml.safe_load(OBJECTIVE_KEYS))
    assert policy == Policy(
        default_objective="energy",
        queue_objectives=(("lab-a/batch", "cost"), ("lab-b/default", "pinned")),
        transfer_penalty_s=(("east", "north", 600.0), ("east", "west", 1800.0)),
        default_transfer_penalty_s=3600.0)


@pytest.mark.parametrize(("text", "message"), [
    ("default_objective: cheapest", "default_objective: expected one of fastest, cost, energy"),
    ("queue_objectives: {lab-a/x: green}", "queue_objectives.lab-a/x: expected one of"),
    ("queue_objectives: [cost]", "queue_objectives: expected a mapping"),
    ("transfer_penalty_s: {east: 5}", "transfer_penalty_s.east: expected a mapping"),
    ("transfer_penalty_s: {east: {west: -1}}", "transfer_penalty_s.east.west: must be"),
    ("transfer_penalty_s: {east: {west: soon}}", "transfer_penalty_s.east.west: expected a"),
    ("default_transfer_penalty_s: -5", "default_transfer_penalty_s: must be"),
])
def test_bad_objective_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="policy file") as err:
        load_policy(path)
    assert message in str(err.value)


def test_every_accelerator_in_the_catalogue_has_a_power_figure() -> None:
    cat = default_catalogue()
    for chip in cat.models.values():
        if chip.family == "cpu":
            assert chip.power_w == 0
        else:
            assert 50 <= chip.power_w <= 1500, chip.model
    assert (cat.power_w("H100"), cat.power_w("a100"), cat.power_w("MLU370")) == (700, 400, 250)
    assert cat.power_w("never-heard-of-it") == cat.reference.power_w
    assert cat.chip_or_generic("X1", "nvidia").power_w == cat.reference.power_w


def test_a_bad_power_figure_is_refused() -> None:
    raw = {"families": {"cpu": {"torch_device": "cpu", "dist_backend": "gloo"}},
           "reference_model": "CPU",
           "models": {"CPU": {"family": "cpu", "tflops": 1, "power_w": "lots"}}}
    with pytest.raises(ValueError, match="CPU power_w must be a number"):
        parse_catalogue(raw)
