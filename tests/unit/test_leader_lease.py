"""Leader election on a Kubernetes Lease, against a stand-in API that keeps
the API server's rules: objects in the official client's models, writes
checked against the ``resourceVersion`` they carry (409 Conflict), 404 for
a missing Lease. Virtual clocks: no sleeping."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from kubernetes.client import V1Lease
from kubernetes.client.exceptions import ApiException

from controlplane.services import leader
from controlplane.services.leader_lease import ADDRESS_ANNOTATION, LeaseElector

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


class FakeLeases:
    """``CoordinationV1Api``'s Lease calls over one stored object."""

    def __init__(self) -> None:
        self.lease: V1Lease | None = None
        self.version = 0
        self.fail: Exception | None = None  # the next calls raise this
        self.writes = 0

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> V1Lease:
        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace: str, body: V1Lease, **_: Any) -> V1Lease:
        self._check()
        assert isinstance(body, V1Lease) and body.metadata.namespace == namespace
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: V1Lease,
                                 **_: Any) -> V1Lease:
        self._check()
        assert isinstance(body, V1Lease) and body.metadata.name == name
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)

    def _store(self, body: V1Lease) -> V1Lease:
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(body)
        stored.metadata.resource_version = str(self.version)
        self.lease = stored
        return copy.deepcopy(stored)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.t)


class Replica:
    """One control-plane replica's elector and what it was told."""

    def __init__(self, api: FakeLeases, clock: Clock, name: str, terms: list[int]) -> None:
        self.events: list[str] = []
        self.terms = terms

        def begin_term() -> int:
            terms.append(len(terms) + 1)
            return terms[-1]

        self.elector = LeaseElector(api, "xinhe", "xinhe-cp", f"{name}_id", f"{name}:50051",
                                    begin_term, lease_s=8, renew_deadline_s=5, retry_s=1,
                                    monotonic=clock.monotonic, now=clock.now)
        self.elector._on_elected = lambda: self.events.append("elected")
        self.elector._on_deposed = lambda: self.events.append("deposed")

    def poll(self) -> None:
        self.elector.poll()

    @property
    def leads(self) -> bool:
        return self.elector.is_leader()


@pytest.fixture
def world() -> tuple[FakeLeases, Clock, list[int]]:
    return FakeLeases(), Clock(), []


def replicas(world: tuple[FakeLeases, Clock, list[int]], *names: str) -> list[Replica]:
    api, clock, terms = world
    return [Replica(api, clock, name, terms) for name in names]


def test_the_first_replica_creates_the_lease_and_the_others_follow_it(world) -> None:
    api, _, terms = world
    a, b = replicas(world, "a", "b")
    a.poll()
    b.poll()
    assert a.leads and not b.leads and a.events == ["elected"] and terms == [1]
    assert a.elector.term == 1
    assert api.lease.spec.holder_identity == "a_id"
    assert api.lease.metadata.annotations[ADDRESS_ANNOTATION] == "a:50051"
    assert b.elector.leader_address() == "a:50051" and a.elector.leader_address() == "a:50051"


def test_of_two_replicas_creating_at_once_one_wins(world) -> None:
    api, _, _ = world
    a, b = replicas(world, "a", "b")
    a.elector._create()
    b.elector._create()  # it read "no Lease" too, before a's create landed
    assert a.leads and not b.leads and api.writes == 1


def test_a_leader_renews_and_a_live_lease_is_never_taken(world) -> None:
    api, clock, _ = world
    a, b = replicas(world, "a", "b")
    a.poll()
    for _ in range(30):  # 30 s: far past the lease, but renewed every second
        clock.t += 1
        a.poll()
        b.poll()
    assert a.leads and not b.leads and api.lease.spec.renew_time == clock.now()


def test_a_crashed_leader_is_replaced_once_its_lease_ran_out(world) -> None:
    api, clock, terms = world
    a, b = replicas(world, "a", "b")
    a.poll()
    b.poll()  # b observes a's record
    clock.t += 7.5  # a is gone: no renewals
    b.poll()
    assert not b.leads  # not yet: 8 s since b saw the record change
    clock.t += 0.5
    b.poll()
    assert b.leads and terms == [1, 2] and b.elector.term == 2
    assert api.lease.spec.holder_identity == "b_id" and api.lease.spec.lease_transitions == 1
    a.poll()  # a resumes (it was only paused): it finds the Lease taken
    assert not a.leads and a.events == ["elected", "deposed"]


def test_expiry_is_judged_on_the_local_clock_not_the_leaders(world) -> None:
    """A leader whose wall clock runs far behind still holds its Lease while
    it renews: followers time the record's changes, not its timestamps."""
    _, clock, _ = world
    a, b = replicas(world, "a", "b")
    a.elector.now = lambda: T0 - dt.timedelta(days=1)  # skewed, even stuck
    a.poll()
    for _ in range(20):
        clock.t += 1
        a.poll()
        b.poll()
    assert a.leads and not b.leads


def test_a_leader_that_cannot_renew_steps_down_before_the_lease_runs_out(world) -> None:
    api, clock, _ = world
    a, = replicas(world, "a")
    a.poll()
    api.fail = ApiException(status=500, reason="etcd timeout")
    for _ in range(4):
        clock.t += 1
        a.poll()
    assert a.leads  # 4 s without a renewal: within the 5 s deadline
    clock.t += 1
    a.poll()
    assert not a.leads and a.events == ["elected", "deposed"]


def test_a_stopping_leader_releases_the_lease_at_once(world) -> None:
    api, clock, _ = world
    a, b = replicas(world, "a", "b")
    a.poll()
    b.poll()
    a.elector.stop()
    assert not a.leads and api.lease.spec.holder_identity == ""
    clock.t += 1  # far less than the lease
    b.poll()
    assert b.leads


def test_of_two_followers_taking_an_expired_lease_one_wins(world) -> None:
    api, clock, terms = world
    a, b, c = replicas(world, "a", "b", "c")
    a.poll()
    b.poll()
    c.poll()
    clock.t += 9
    stale = api.read_namespaced_lease("xinhe-cp", "xinhe")
    b.poll()
    c.elector._take(stale)  # c read before b's replace landed
    assert b.leads and not c.leads and terms == [1, 2]


def test_no_fencing_term_no_leadership(world) -> None:
    api, _, _ = world
    a, = replicas(world, "a")

    def broken() -> int:
        raise OSError("database unreachable")

    a.elector.begin_term = broken
    a.poll()
    assert not a.leads and a.events == [] and api.lease.spec.holder_identity == ""


def test_the_deadline_must_fall_inside_the_lease() -> None:
    with pytest.raises(ValueError, match="renew_deadline_s < lease_s"):
        LeaseElector(FakeLeases(), "ns", "l", "id", "a:1", lambda: 1, lease_s=5,
                     renew_deadline_s=5)


def test_make_elector_builds_a_lease_elector_in_the_pods_namespace(monkeypatch) -> None:
    from kubernetes import config

    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    elector = leader.make_elector("kubernetes", "postgresql://x@db/xinhe", "10.0.0.1:50051",
                                  lease_name="cp-lease", lease_namespace="xinhe-system")
    assert isinstance(elector, LeaseElector)
    assert (elector.namespace, elector.name, elector.address) == ("xinhe-system", "cp-lease",
                                                                  "10.0.0.1:50051")
