"""Objectives and regions end to end: a real server with a policy file that
charges a transfer between east and west, and two real agents: a dear, fast
H100 node in the east and a cheap 910B node in the west, each reporting its
pool price (`--cost-per-device-hour`)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from controlplane.cli.main import main
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import FAST, train_spec, wait_ready_nodes, wait_terminal
from xinhe.v1 import common_pb2

J = common_pb2
POLICY = "transfer_penalty_s: {east: {west: 600}}\n"
AGENTS = (
    AgentSpec("o-h100", "h100-east", "east", ("H100:8",), ("--cost-per-device-hour", "5")),
    AgentSpec("o-910b", "910b-west", "west", ("910B:8",), ("--cost-per-device-hour", "1")),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[XinheClient, str]]:
    root = tmp_path_factory.mktemp("objective-fleet")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    with LocalFleet(root, AGENTS, scheduler="inline",
                    server_args=[*FAST, "--policy", str(policy)]) as fleet, \
            XinheClient(fleet.address) as c:
        wait_ready_nodes(c, len(AGENTS))
        yield c, fleet.address


def run(c: XinheClient, name: str, **fields: object) -> J.Job:
    spec = train_spec(name)
    for key, value in fields.items():
        setattr(spec, key, value)
    done = wait_terminal(c, c.submit(spec).id)
    assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
    return done


def test_nodes_report_their_pool_price(client: tuple[XinheClient, str]) -> None:
    c, _ = client
    prices = {n.name: (n.region, n.cost_per_device_hour) for n in c.nodes()}
    assert prices == {"o-h100": ("east", 5.0), "o-910b": ("west", 1.0)}


def test_fastest_by_default_takes_the_fast_chip(client: tuple[XinheClient, str]) -> None:
    job = run(client[0], "fast", data_region="east")
    assert (job.placement.pool, job.placement.objective) == ("h100-east", "fastest")


def test_batch_cost_goes_to_the_cheap_far_region(client: tuple[XinheClient, str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    c, address = client
    job = run(c, "cheap", objective=J.OBJECTIVE_COST, data_region="east")
    p = job.placement
    assert (p.pool, p.region, p.objective) == ("910b-west", "west", "cost")
    # 1 device x (1 h at the 910B's catalogue speed + 10 min transfer) x 1.00
    assert p.estimated_cost == pytest.approx((3600 * 312 / 313 + 600) / 3600)
    assert "incl. 0:10:00 data transfer" in p.explanation
    assert p.explanation.endswith("objective: lowest cost")
    assert main(["job", job.id, "--server", address]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "cost (placed by cost: est. cost 1.16" in shown
    assert "data region east, batch" in shown


def test_interactive_stays_in_its_data_region(client: tuple[XinheClient, str]) -> None:
    job = run(client[0], "near", data_region="west",
              latency_class=J.LATENCY_CLASS_INTERACTIVE)
    assert job.placement.pool == "910b-west"


@pytest.mark.parametrize(("fields", "field"), [
    ({"data_region": "north", "latency_class": J.LATENCY_CLASS_INTERACTIVE},
     "spec.resources"),  # no pool in that region could ever hold it
    ({"objective": 17}, "spec.objective"),
    ({"latency_class": 5}, "spec.latency_class"),
])
def test_bad_requests_get_invalid_argument(client: tuple[XinheClient, str], fields: dict,
                                           field: str) -> None:
    spec = train_spec("bad")
    for key, value in fields.items():
        setattr(spec, key, value)
    with pytest.raises(grpc.RpcError) as err:
        client[0].submit(spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
