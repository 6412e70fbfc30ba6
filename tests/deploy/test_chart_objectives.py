"""The chart's placement objectives, transfer penalties and pool prices reach
the policy file the server loads and the agents' flags."""

from __future__ import annotations

from pathlib import Path

import yaml

from controlplane.scheduler.types import Policy
from controlplane.services.policy import parse_policy
from tests.deploy.chart import containers, of_kind, render

VALUES = """\
policy:
  defaultObjective: cost
  queueObjectives: {lab-a/batch: energy}
  transferPenaltySeconds: {east: {west: 1800}}
  defaultTransferPenaltySeconds: 600
agents:
  families:
    nvidia:
      enabled: true
      pools: [{name: h100, region: east, costPerDeviceHour: 2.5}, {name: a100}]
"""


def test_objectives_and_pool_prices_render(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(VALUES)
    docs = render(values=(str(values),))
    [config] = [d for d in of_kind(docs, "ConfigMap") if "policy.yaml" in d["data"]]
    policy = parse_policy(yaml.safe_load(config["data"]["policy.yaml"]))
    assert (policy.default_objective, policy.queue_objectives) == (
        "cost", (("lab-a/batch", "energy"),))
    assert policy.transfer_penalty_s == (("east", "west", 1800.0),)
    assert policy.default_transfer_penalty_s == 600.0
    args = {d["metadata"]["name"]: containers(d)[0]["args"]
            for d in of_kind(docs, "DaemonSet") if "agent" in d["metadata"]["name"]}
    priced = [a for a in args.values() if "--cost-per-device-hour" in a]
    assert len(priced) == 1 and priced[0][priced[0].index("--cost-per-device-hour") + 1] == "2.5"


def test_the_default_chart_keeps_the_default_objectives() -> None:
    [config] = [d for d in of_kind(render(), "ConfigMap") if "policy.yaml" in d["data"]]
    policy = parse_policy(yaml.safe_load(config["data"]["policy.yaml"]))
    defaults = Policy()
    assert (policy.default_objective, policy.queue_objectives, policy.transfer_penalty_s,
            policy.default_transfer_penalty_s) == (
        defaults.default_objective, (), (), defaults.default_transfer_penalty_s)
