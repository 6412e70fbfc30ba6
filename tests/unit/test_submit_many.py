"""SubmitJobs (service level): each item judged like SubmitJob and answered
in order; valid items committed in one transaction; the rate counts items."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.api.errors import InvalidArgument, ResourceExhausted, Unavailable
from controlplane.model import states
from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.host import InlineHost
from controlplane.services import jobs as jobs_module
from controlplane.services.controller import Controller
from controlplane.services.limits import SubmissionLimiter
from controlplane.services.submit_many import MAX_ITEMS, submit_many
from controlplane.settings import ServerSettings
from controlplane.store.sqlite import KEY_LOOKUP, SqliteStore
from xinhe.v1 import agent_pb2, common_pb2, jobs_pb2

J = common_pb2
Code = grpc.StatusCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    store = SqliteStore(tmp_path / "x.db")
    settings = ServerSettings(scheduler="inline", submit_rate_per_tenant=1,
                              submit_burst_per_tenant=20)
    controller = Controller(store, default_catalogue(), settings, InlineHost(), clock=Clock())
    yield controller
    controller.stop()
    store.close()


def item(key: str = "", queue: str = "lab-a/default",
         replicas: int = 1) -> jobs_pb2.SubmitJobRequest:
    spec = J.JobSpec(name="t", queue=queue, command=["true"], replicas=replicas)
    spec.resources.accelerators = 1
    return jobs_pb2.SubmitJobRequest(spec=spec, client_key=key)


def stored(controller: Controller) -> list[J.Job]:
    return controller.ctx.store.jobs_in_states(states.ALL_STATES)


def test_each_item_is_answered_in_order_and_bad_ones_name_their_index(
        controller: Controller) -> None:
    out = submit_many(controller.jobs, [item("a"), item("b", replicas=0), item("c"),
                                        item("d", queue="no-slash"), item("x" * 200)])
    assert [o.code for o in out] == [Code.OK, Code.INVALID_ARGUMENT, Code.OK,
                                     Code.INVALID_ARGUMENT, Code.INVALID_ARGUMENT]
    assert out[1].message.startswith("requests[1].spec.replicas: ")
    assert out[3].message.startswith("requests[3].spec.queue: ")
    assert out[4].message.startswith("requests[4].client_key: ")
    assert out[0].created and out[2].created and out[0].job.id != out[2].job.id
    assert sorted(j.client_key for j in stored(controller)) == ["a", "c"]
    assert {p.job_id for p in controller.ctx.pending.pending()} == {out[0].job.id, out[2].job.id}


def test_keys_are_idempotent_per_item_across_and_within_calls(controller: Controller) -> None:
    first = submit_many(controller.jobs, [item("k1"), item("k2"), item("k1")])
    assert [o.created for o in first] == [True, True, False]
    assert first[2].job.id == first[0].job.id
    again = submit_many(controller.jobs, [item("k2"), item("k3"), item("k1")])
    assert [o.created for o in again] == [False, True, False]
    assert (again[0].job.id, again[2].job.id) == (first[1].job.id, first[0].job.id)
    assert len(stored(controller)) == 3


def test_a_scoped_caller_cannot_submit_into_another_tenants_queue(
        controller: Controller) -> None:
    out = submit_many(controller.jobs, [item("mine"), item("theirs", queue="lab-b/default")],
                      scope="lab-a")
    assert out[0].code == Code.OK
    assert out[1].code == Code.PERMISSION_DENIED and out[1].message.startswith("requests[1]")
    assert [j.tenant for j in stored(controller)] == ["lab-a"]


def test_the_rate_counts_items_and_a_refused_call_stores_nothing(
        controller: Controller) -> None:
    submit_many(controller.jobs, [item(f"a{i}") for i in range(15)])
    with pytest.raises(ResourceExhausted, match="lab-a"):
        submit_many(controller.jobs, [item(f"b{i}") for i in range(6)])  # 5 tokens left
    assert len(stored(controller)) == 15
    # Other tenants are not held back by lab-a; a mixed call is all or nothing.
    with pytest.raises(ResourceExhausted):
        submit_many(controller.jobs, [item("c0", queue="lab-c/q"),
                                      *(item(f"b{i}") for i in range(6))])
    assert submit_many(controller.jobs, [item("c0", queue="lab-c/q")])[0].created
    with pytest.raises(ResourceExhausted, match="smaller batches"):
        submit_many(controller.jobs, [item(f"d{i}", queue="lab-d/q") for i in range(21)])


def test_call_limits_name_requests(controller: Controller) -> None:
    with pytest.raises(InvalidArgument, match=r"^requests: "):
        submit_many(controller.jobs, [])
    with pytest.raises(InvalidArgument, match=f"at most {MAX_ITEMS}"):
        submit_many(controller.jobs, [item()] * (MAX_ITEMS + 1))


def test_a_failed_transaction_stores_no_item(controller: Controller,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    existing = submit_many(controller.jobs, [item("old")])[0].job
    ids = iter(["j-fresh", existing.id])  # the second item collides inside the transaction
    monkeypatch.setattr(jobs_module, "new_job_id", lambda: next(ids))
    with pytest.raises(Unavailable, match="nothing was stored"):
        submit_many(controller.jobs, [item("new1"), item("new2")])
    assert [j.client_key for j in stored(controller)] == ["old"]


def test_limiter_admits_counts_all_or_nothing() -> None:
    clock = Clock()
    limiter = SubmissionLimiter(rate=10, burst=10, clock=clock)
    limiter.admit_counts({"a": 8, "b": 3})
    with pytest.raises(ResourceExhausted, match="tenant a"):
        limiter.admit_counts({"b": 7, "a": 3})
    limiter.admit_counts({"b": 7})  # b's tokens were given back
    clock.now += 0.5  # 2 left + 5 refilled
    limiter.admit_counts({"a": 7})


def test_key_lookups_use_the_partial_key_index(tmp_path: Path) -> None:
    """Without "client_key != ''" SQLite cannot use the partial index and
    every keyed submission scans the whole jobs table."""
    SqliteStore(tmp_path / "k.db").close()
    with sqlite3.connect(tmp_path / "k.db") as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN " + KEY_LOOKUP, ("t", "k")).fetchall()
    assert "USING INDEX jobs_client_key" in str(plan), plan


def test_the_fit_check_follows_devices_a_heartbeat_changed(controller: Controller) -> None:
    """The can-ever-fit answers are cached per fleet inventory version."""
    def devices(n: int) -> list[J.Device]:
        return [J.Device(index=i, model="H100", family="nvidia", memory_bytes=80 * 10**9,
                         healthy=True) for i in range(n)]

    fleet = controller.ctx.fleet
    response = controller.agents.register(agent_pb2.RegisterRequest(
        protocol_version=agent_pb2.PROTOCOL_VERSION_1, node_name="n1", pool="p", region="r",
        address="127.0.0.1", devices=devices(2)))
    session = fleet.attach(response.session_id)
    two = item("two")
    two.spec.resources.accelerators = 2
    assert submit_many(controller.jobs, [two])[0].created
    version = fleet.inventory_version
    fleet.heartbeat(session, devices(2), 1001.0)  # telemetry only: same inventory
    assert fleet.inventory_version == version
    fleet.heartbeat(session, devices(1), 1002.0)
    two.client_key = "two-again"
    out = submit_many(controller.jobs, [two])[0]
    assert out.code == Code.INVALID_ARGUMENT and "can never be placed" in out.message
