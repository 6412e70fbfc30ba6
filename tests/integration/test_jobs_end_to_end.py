"""Submit -> placed on the right family -> runs -> logs -> succeeded, with a
real server and real agent processes."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.client import XinheClient
from tests.integration.conftest import job_logs, train_spec, wait_for, wait_terminal
from xinhe.v1 import common_pb2

J = common_pb2


def results(text: str) -> list[dict]:
    return [json.loads(line.split(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("result ")]


def test_job_pinned_to_ascend_runs_with_the_ascend_environment(client: XinheClient) -> None:
    job = client.submit(train_spec("ascend-one", families=("ascend",)))
    assert job.state == J.JOB_STATE_QUEUED
    done = wait_terminal(client, job.id)
    assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
    assert (done.placement.family, done.placement.model, done.placement.pool) == (
        "ascend", "910B", "910b")
    text = job_logs(client, job.id)
    assert "device=npu backend=hccl" in text
    assert results(text)[0]["world_size"] == 1
    kinds = [e.kind for e in client.watch(job.id)]
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded" and "placed" in kinds


def test_fastest_chip_is_chosen_when_any_chip_will_do(client: XinheClient) -> None:
    done = wait_terminal(client, client.submit(train_spec("any-chip")).id)
    assert done.state == J.JOB_STATE_SUCCEEDED
    assert done.placement.model == "H100"  # 3.2x the reference chip; the others are slower
    assert "H100" in done.placement.explanation


def test_cambricon_job_gets_mlu_devices(client: XinheClient) -> None:
    done = wait_terminal(client, client.submit(
        train_spec("mlu-two", families=("cambricon",), devices=2)).id)
    assert done.state == J.JOB_STATE_SUCCEEDED
    text = job_logs(client, done.id)
    assert "device=mlu backend=cncl" in text
    assert len(done.placement.replicas[0].device_indices) == 2


def test_gang_of_four_across_two_nodes_agrees_on_rank_and_world(client: XinheClient) -> None:
    spec = train_spec("gang-4", families=("ascend",), replicas=4, devices=4, steps=30)
    done = wait_terminal(client, client.submit(spec).id, timeout=90)
    assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
    nodes = {r.node for r in done.placement.replicas}
    assert nodes == {"n-910b-0", "n-910b-1"}
    out = results(job_logs(client, done.id))
    assert sorted(r["rank"] for r in out) == [0, 1, 2, 3]
    assert {r["world_size"] for r in out} == {4}
    assert len({r["gang_loss_sum"] for r in out}) == 1  # every rank saw the same all-reduce
    assert pytest.approx(out[0]["gang_loss_sum"]) == sum(r["loss"] for r in out)
    assert {r["master"] for r in out} == {
        f"{done.placement.master_addr}:{done.placement.master_port}"}


def test_failing_job_reports_exit_code_and_retries_per_policy(client: XinheClient) -> None:
    spec = train_spec("fails", extra_args=("--fail",), retries=1, models=("H100",))
    done = wait_terminal(client, client.submit(spec).id)
    assert done.state == J.JOB_STATE_FAILED
    assert done.exit_code == 3 and done.attempt == 2
    assert "exited with code 3" in done.state_reason


def test_cancel_stops_a_running_job_and_frees_its_devices(client: XinheClient) -> None:
    spec = train_spec("long", models=("H100",), steps=100000, step_sleep=0.01)
    job = client.submit(spec)
    wait_for(lambda: client.get(job.id).state == J.JOB_STATE_RUNNING, 30, "running")
    cancelled = client.cancel(job.id, "test says stop")
    assert cancelled.state == J.JOB_STATE_CANCELLED
    assert client.cancel(job.id).state == J.JOB_STATE_CANCELLED  # idempotent
    wait_for(lambda: not any(n.allocated_device_indices for n in client.nodes("h100")), 20,
             "devices freed")
    assert "test says stop" in [e.message for e in client.watch(job.id)][-1]


def test_resubmitting_with_the_same_key_returns_the_same_job(client: XinheClient) -> None:
    spec = train_spec("idem", models=("H100",))
    first = client.submit_full(spec, client_key="key-1")
    again = client.submit_full(spec, client_key="key-1")
    assert first.created and not again.created
    assert again.job.id == first.job.id
    other_tenant = train_spec("idem", queue="uni-b/default", models=("H100",))
    assert client.submit(other_tenant, client_key="key-1").id != first.job.id


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.ClearField("command"), "spec.command"),
    (lambda s: setattr(s, "replicas", 0), "spec.replicas"),
    (lambda s: s.resources.families.append("quantum"), "spec.resources.families"),
    (lambda s: setattr(s.resources, "accelerators", 16), "spec.resources"),
    (lambda s: setattr(s, "queue", "no-slash"), "spec.queue"),
    (lambda s: s.env.__setitem__("CUDA_VISIBLE_DEVICES", "0"), "spec.env"),
    (lambda s: setattr(s, "name", "x" * 500), "spec.name"),
])
def test_bad_specs_get_invalid_argument_naming_the_field(client: XinheClient, mutate,
                                                         field: str) -> None:
    spec = train_spec("bad")
    mutate(spec)
    with pytest.raises(grpc.RpcError) as err:
        client.submit(spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_unknown_job_is_not_found(client: XinheClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.get("j-doesnotexist")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_filters_by_state_and_paginates(client: XinheClient) -> None:
    for i in range(3):
        client.submit(train_spec(f"page-{i}", queue="pager/q", models=("H100",)))
    jobs = list(client.list(queue="pager/q", page_size=2))
    assert len(jobs) == 3
    succeeded = set()
    for j in jobs:
        succeeded.add(wait_terminal(client, j.id).id)
    listed = {j.id for j in client.list(states=(J.JOB_STATE_SUCCEEDED,), queue="pager/q")}
    assert listed == succeeded


def test_cordoned_node_gets_no_new_work(client: XinheClient) -> None:
    client.cordon("n-mlu", "maintenance")
    try:
        job = client.submit(train_spec("wait-mlu", families=("cambricon",)))
        wait_for(lambda: "cordon" in client.get(job.id).state_reason.lower()
                 or "unavailable" in client.get(job.id).state_reason.lower(), 10, "wait reason")
        assert client.get(job.id).state == J.JOB_STATE_QUEUED
    finally:
        client.uncordon("n-mlu")
    assert wait_terminal(client, job.id).state == J.JOB_STATE_SUCCEEDED


def test_pools_and_summary_report_capacity(client: XinheClient) -> None:
    pools = {p.pool: p for p in client.pools()}
    assert pools["910b"].devices_total == 16 and pools["910b"].family == "ascend"
    assert pools["mlu"].model == "MLU370-X8" and pools["h100"].region == "east"
    summary = client.summary()
    assert summary.agents_connected == 4


def test_health_and_reflection_are_served(client: XinheClient, fleet) -> None:
    channel = grpc.insecure_channel(fleet.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "xinhe.v1.JobService", "xinhe.v1.AgentService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"xinhe.v1.JobService", "xinhe.v1.AdminService", "xinhe.v1.AgentService"} <= names
    channel.close()


def test_watch_follows_until_the_end_and_resumes_from_a_cursor(client: XinheClient) -> None:
    job = client.submit(train_spec("watched", models=("H100",), steps=20, step_sleep=0.02))
    events = list(client.watch(job.id, follow=True))  # returns when the job ends
    assert events[-1].to_state == J.JOB_STATE_SUCCEEDED
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert [e.to_state for e in events][:2] == [J.JOB_STATE_QUEUED, J.JOB_STATE_SCHEDULED]
    resumed = list(client.watch(job.id, after=events[1].sequence))
    assert [e.sequence for e in resumed] == sequences[2:]


def test_cancelling_a_queued_job_ends_it_at_once(client: XinheClient) -> None:
    # Needs more H100 devices than exist free... so it waits; cancel it there.
    blocker = client.submit(train_spec("blocker", models=("H100",), devices=8, steps=100000,
                                       step_sleep=0.01))
    wait_for(lambda: client.get(blocker.id).state == J.JOB_STATE_RUNNING, 30, "blocker")
    waiting = client.submit(train_spec("waiting", models=("H100",), devices=8))
    wait_for(lambda: client.get(waiting.id).state_reason, 10, "a wait reason")
    assert client.get(waiting.id).state == J.JOB_STATE_QUEUED
    assert client.cancel(waiting.id).state == J.JOB_STATE_CANCELLED
    client.cancel(blocker.id)
    assert wait_terminal(client, blocker.id).state == J.JOB_STATE_CANCELLED
    assert not client.get(waiting.id).placement.replicas
