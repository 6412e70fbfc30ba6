"""Learned throughput survives a control-plane restart, end to end, on a
server scheduling its two pools as two shards: a job type measured faster on
Ascend than on NVIDIA (against the catalogue prior) is still placed on
Ascend by the restarted server, before any job of the type reports again."""

from __future__ import annotations

from pathlib import Path

from controlplane.client import XinheClient
from controlplane.localfleet import LocalFleet
from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.shards import shard_of
from tests.integration.conftest import FAST, wait_ready_nodes, wait_terminal
from tests.integration.test_progress import AGENTS, REFERENCE_S, demo_spec, estimates
from xinhe.v1 import common_pb2

J = common_pb2


def test_learned_speed_is_kept_across_a_restart(tmp_path: Path) -> None:
    assert len({shard_of(a.pool, 2) for a in AGENTS}) == 2  # one pool per shard
    with LocalFleet(tmp_path, AGENTS, scheduler="inline",
                    server_args=[*FAST, "--scheduler-shards", "2"]) as fleet:
        with XinheClient(fleet.address) as client:
            wait_ready_nodes(client, len(AGENTS))
            for model in ("H100", "910B"):
                done = wait_terminal(client, client.submit(
                    demo_spec(f"learn-{model}", (model,))).id)
                assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
        assert fleet.server is not None
        fleet.server.stop()  # SIGTERM: a graceful restart
        fleet.start_server()
        with XinheClient(fleet.address) as client:
            wait_ready_nodes(client, len(AGENTS))
            placed = wait_terminal(client, client.submit(demo_spec("after-restart")).id)
    assert placed.state == J.JOB_STATE_SUCCEEDED, placed.state_reason
    assert placed.placement.model == "910B", placed.placement.explanation
    # Its home shard is the 910B pool's (fastest for the type as learned), so
    # the explanation compares that shard's pools: the estimate is the
    # learned one, far below the catalogue prior's.
    prior_s = REFERENCE_S / default_catalogue().relative_speed("910B")
    assert estimates(placed.placement.explanation)["910B"] * 3 < prior_s

