"""The hosts give exactly the core's decisions; a dead Ray actor is replaced."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from controlplane.scheduler.core import schedule
from controlplane.scheduler.host import InlineHost, RayHost, SchedulerHost
from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Policy
from tests.unit.builders import jobs, nodes, snapshot

NOW = 1_000.0
SNAPSHOT: ClusterSnapshot = snapshot(
    nodes(2, model="H100", family="nvidia", pool="h100-east", memory_gb=80),
    nodes(2, model="910B", family="ascend", pool="910b-west"),
)
QUEUE: tuple[PendingJob, ...] = (
    jobs("a", n=5, devices=2)
    + jobs("b", replicas=2, devices=8, first_order=5)
    + jobs("c", families={"mthreads"}, first_order=6)
)


def test_importing_host_does_not_import_ray() -> None:
    probe = "import sys, controlplane.scheduler.host; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_inline_host_gives_the_core_decisions() -> None:
    host: SchedulerHost = InlineHost()
    try:
        assert host.schedule(SNAPSHOT, QUEUE, Policy(), NOW) == schedule(
            SNAPSHOT, QUEUE, Policy(), NOW
        )
    finally:
        host.close()


@pytest.fixture(scope="module")
def ray_host() -> Iterator[RayHost]:
    host = RayHost(num_cpus=1)
    yield host
    host.close()


def test_ray_host_gives_the_core_decisions(ray_host: RayHost) -> None:
    assert ray_host.schedule(SNAPSHOT, QUEUE, Policy(), NOW) == schedule(
        SNAPSHOT, QUEUE, Policy(), NOW
    )


def test_ray_host_replaces_a_dead_actor(ray_host: RayHost) -> None:
    import ray

    dead = ray_host.actor
    ray.kill(dead)
    # ray.kill is asynchronous: wait until the old actor really is gone.
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(200):
            ray.get(dead.schedule.remote(SNAPSHOT, QUEUE, Policy(), NOW))
    decisions = ray_host.schedule(SNAPSHOT, QUEUE, Policy(), NOW)
    assert decisions == schedule(SNAPSHOT, QUEUE, Policy(), NOW)
    assert ray_host.actor is not dead


# -- sharded: one actor per shard of pools (on the Ray the fixture started) --
SHARDED_SNAPSHOT: ClusterSnapshot = snapshot(
    nodes(2, model="H100", family="nvidia", pool="nv", memory_gb=80),
    nodes(2, model="910B", family="ascend", pool="asc"),
)


def test_sharded_ray_host_gives_the_inline_decisions_and_survives_a_dead_shard(
        ray_host: RayHost) -> None:
    import ray

    from controlplane.scheduler.host import ShardedInlineHost, ShardedRayHost

    expected = ShardedInlineHost(2).schedule(SHARDED_SNAPSHOT, QUEUE, Policy(), NOW)
    assert {p.pool for p in expected.placements} == {"nv", "asc"}  # both shards placed
    host = ShardedRayHost(2)  # joins the running Ray: closing it leaves Ray up
    try:
        assert host.schedule(SHARDED_SNAPSHOT, QUEUE, Policy(), NOW) == expected
        dead = host.actors[1]
        ray.kill(dead)
        with pytest.raises(ray.exceptions.RayActorError):
            for _ in range(200):  # ray.kill is asynchronous
                ray.get(dead.run.remote(None))
        assert host.schedule(SHARDED_SNAPSHOT, QUEUE, Policy(), NOW) == expected
        assert host.actors[1] is not dead and host.actors[0] is not None
    finally:
        host.close()
