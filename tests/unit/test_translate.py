"""Stored jobs as the scheduler core sees them."""

from __future__ import annotations

from controlplane.services.translate import running_view
from xinhe.v1 import common_pb2


def placed_job(scheduled: int, started: int | None) -> common_pb2.Job:
    job = common_pb2.Job(id="j-1", tenant="lab-a")
    job.placement.pool, job.placement.model = "h100", "H100"
    job.placement.replicas.add(rank=0, node="n", device_indices=[0, 1])
    job.placement.estimated_runtime.FromSeconds(600)
    job.scheduled_at.FromSeconds(scheduled)
    if started is not None:
        job.started_at.FromSeconds(started)
    return job


def test_expected_end_counts_from_the_start_once_running() -> None:
    view = running_view(placed_job(1000, 1030))
    assert (view.expected_end, view.devices, view.tenant) == (1630.0, 2, "lab-a")


def test_expected_end_counts_from_placement_while_starting() -> None:
    assert running_view(placed_job(1000, None)).expected_end == 1600.0
