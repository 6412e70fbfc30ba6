"""Learned throughput end to end: a job type that runs faster on Ascend than
on NVIDIA (the opposite of the catalogue prior) is placed on Ascend once
both chips have been measured, with the learned estimate in the explanation."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model.catalogue import default_catalogue
from tests.integration.conftest import FAST, job_logs, wait_ready_nodes, wait_terminal
from xinhe.v1 import common_pb2

J = common_pb2
AGENTS = (AgentSpec("p-h100", "h100", "east", ("H100:1",)),
          AgentSpec("p-910b", "910b", "west", ("910B:1",)))
REFERENCE_S = 3600
SLEEP = {"nvidia": "0.2", "ascend": "0.02"}  # ~5 vs ~50 steps/s


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XinheClient]:
    root: Path = tmp_path_factory.mktemp("progress")
    with LocalFleet(root, AGENTS, scheduler="inline", server_args=FAST) as fleet, \
            XinheClient(fleet.address) as c:
        wait_ready_nodes(c, len(AGENTS))
        yield c


def demo_spec(name: str, models: tuple[str, ...] = ()) -> J.JobSpec:
    spec = J.JobSpec(name=name, job_type="progress-demo", queue="lab-a/default", replicas=1,
                     command=[sys.executable, "-m", "xinhe_runtime.examples.progress_demo"],
                     args=["--seconds", "2.5"])
    spec.resources.accelerators = 1
    spec.resources.models.extend(models)
    spec.reference_runtime.FromSeconds(REFERENCE_S)
    for family, sleep in SLEEP.items():
        spec.variants[family].env["DEMO_STEP_SECONDS"] = sleep
    return spec


def estimates(explanation: str) -> dict[str, float]:
    """Model -> estimated seconds from "chose pool p (M): est. finish H:MM:SS; others: ..."."""
    out = {}
    for model, h, m, s in re.findall(r"\((\w+)\):?(?: est\. finish)? (\d+):(\d\d):(\d\d)",
                                     explanation):
        out[model] = int(h) * 3600 + int(m) * 60 + int(s)
    return out


def test_measured_speed_overrides_the_prior_for_the_next_job_of_the_type(
        client: XinheClient) -> None:
    cat = default_catalogue()
    assert cat.relative_speed("H100") > cat.relative_speed("910B")  # the prior says H100
    for model in ("H100", "910B"):  # one run on each chip teaches the control plane
        done = wait_terminal(client, client.submit(demo_spec(f"learn-{model}", (model,))).id)
        assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
        assert done.placement.model == model
        assert f'"model": "{model}"' in job_logs(client, done.id)
    placed = wait_terminal(client, client.submit(demo_spec("after-learning")).id)
    assert placed.state == J.JOB_STATE_SUCCEEDED, placed.state_reason
    assert placed.placement.model == "910B", placed.placement.explanation
    est = estimates(placed.placement.explanation)
    assert set(est) == {"910B", "H100"}, placed.placement.explanation
    # Measured ~10x faster on 910B; the prior alone would estimate REFERENCE_S / 910B's
    # prior there (and ~3x faster on H100 than on 910B).
    assert est["910B"] * 3 < est["H100"], placed.placement.explanation
    assert est["910B"] * 3 < REFERENCE_S / cat.relative_speed("910B")


def test_another_job_type_still_follows_the_prior(client: XinheClient) -> None:
    spec = demo_spec("untyped")
    spec.job_type = "never-measured"
    spec.args[:] = ["--seconds", "0.5"]
    done = wait_terminal(client, client.submit(spec).id)
    assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
    assert done.placement.model == "H100", done.placement.explanation
