"""Fuzz every RPC of the real server with arbitrary and adversarial input.

One real control plane (SQLite, inline scheduler) and two simulated agents,
as processes, for the module. Every RPC of JobService, AdminService and
AgentService gets (a) arbitrary messages built from the proto descriptors
and (b) raw bytes through a generic channel with identity serialisers.
Every answer must be a proper status: never UNKNOWN, never INTERNAL (an
unhandled exception; undecodable bytes included), never a traceback in the
details or the server log. Afterwards the server must still be alive and
healthy, and the store must pass the consistency checker.

Submitted jobs only ever run ``true``: the fuzzer chooses arguments and
environment, never the program, so nothing it generates runs on this host.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import message as pb_message
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.store.check import check_store
from controlplane.store.sqlite import SqliteStore
from tests.fuzz.strategies import binary, messages
from xinhe.v1 import admin_pb2, agent_pb2, common_pb2, jobs_pb2

FLEET = (AgentSpec("fz-h100", "h100", "east", ("H100:8",)),
         AgentSpec("fz-910b", "910b", "west", ("910B:8",)))
ARGS = ["--schedule-interval", "0.2", "--stop-grace", "1", "--heartbeat-interval", "0.5"]
SERVICES = (jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"])
METHODS = {f"{s.name}.{m.name}": m for s in SERVICES for m in s.methods}
# A status a well-behaved server may answer to nonsense. INTERNAL, UNKNOWN
# and UNAVAILABLE (store failure) are bugs; DEADLINE_EXCEEDED means it hung.
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED,
           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.CANCELLED}
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TIMEOUT_S = 20.0


def valid_spec() -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(name="fuzz", queue="fuzz/default", command=["true"], replicas=1)
    spec.resources.accelerators = 1
    return spec


def make_harmless(request: pb_message.Message) -> pb_message.Message:
    """Submitted jobs run `true` in the agent's own directory, whatever else
    the fuzzer put in the spec."""
    if isinstance(request, jobs_pb2.SubmitJobRequest):
        spec = request.spec
        del spec.command[:]
        spec.command.append("true")
        for variant in spec.variants.values():
            del variant.command[:]
        spec.working_dir = spec.checkpoint_dir = ""
    return request


def _near_valid_submit(noise: jobs_pb2.SubmitJobRequest) -> jobs_pb2.SubmitJobRequest:
    request = jobs_pb2.SubmitJobRequest(spec=valid_spec())
    request.MergeFrom(noise)  # a valid spec with a few fields gone strange
    request.spec.name, request.spec.queue = "fuzz", "fuzz/default"
    request.client_key = request.client_key[:128]
    return request


def _near_valid_register(noise: agent_pb2.RegisterRequest) -> agent_pb2.RegisterRequest:
    """Odd devices and held replicas from a node that passes the basic checks."""
    request = agent_pb2.RegisterRequest()
    request.MergeFrom(noise)
    request.protocol_version = agent_pb2.PROTOCOL_VERSION_1
    request.node_name, request.pool, request.region = "fz-reg", "fz-pool", "fz-region"
    return request


NEAR_VALID = {"SubmitJob": _near_valid_submit, "Register": _near_valid_register}


def requests_for(method: MethodDescriptor) -> st.SearchStrategy[pb_message.Message]:
    """Arbitrary requests; for SubmitJob and Register half of them start from
    a valid request, so the fuzzer gets past the first check."""
    arbitrary = messages(method.input_type)
    if method.name in NEAR_VALID:
        arbitrary = st.one_of(arbitrary, arbitrary.map(NEAR_VALID[method.name]))
    return arbitrary.map(make_harmless)


def check_status(name: str, code: grpc.StatusCode, details: str) -> None:
    assert "Traceback" not in details and 'File "' not in details, (name, details)
    assert len(details) < 2048, f"{name}: details of {len(details)} characters"
    assert code in ALLOWED, f"{name} answered {code.name}: {details}"


def invoke(channel: grpc.Channel, method: MethodDescriptor, payload: object,
           raw: bool) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` with one request (a message, or bytes when ``raw``);
    streams are read to the end. Returns the final status."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = None if raw else (lambda m: m.SerializeToString())
    try:
        if method.client_streaming:
            call = channel.stream_stream(path, request_serializer=serialize)
            items = payload if isinstance(payload, list) else [payload]
            for _ in call(iter(items), timeout=TIMEOUT_S):
                pass
        elif method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=serialize)(
                    payload, timeout=TIMEOUT_S):
                pass
        else:
            channel.unary_unary(path, request_serializer=serialize)(payload, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    root = tmp_path_factory.mktemp("fuzz")
    with LocalFleet(root, FLEET, scheduler="inline", server_args=ARGS) as running:
        with XinheClient(running.address) as client:
            client.wait_ready(60)
            client.submit(valid_spec())  # at least one job goes through the fleet
        yield running
        assert running.server is not None and running.server.alive(), \
            "server died:\n" + running.server.log_text()[-4000:]
    log = running.server.log_text()
    first = log.find("Traceback")
    assert first < 0, "server logged an unhandled error:\n" + log[max(0, first - 300):first + 3000]
    with SqliteStore(root / "data" / "xinhe.db") as store:
        report = check_store(store)
    assert report.ok, report.violations[:20]
    assert report.jobs >= 1


@pytest.fixture(scope="module")
def channel(fleet: LocalFleet) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(fleet.address, options=options) as ch:
        yield ch


def session_id(channel: grpc.Channel) -> str:
    """A real session of a fuzz-only node (no devices, so nothing lands on it)."""
    register = channel.unary_unary("/xinhe.v1.AgentService/Register",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=agent_pb2.RegisterResponse.FromString)
    reply = register(agent_pb2.RegisterRequest(
        node_name="fz-ghost", pool="ghost", region="nowhere",
        protocol_version=agent_pb2.PROTOCOL_VERSION_1), timeout=TIMEOUT_S)
    return reply.session_id


UNARY = sorted(n for n, m in METHODS.items() if not m.client_streaming)


@pytest.mark.parametrize("name", UNARY)
def test_arbitrary_messages(channel: grpc.Channel, name: str) -> None:
    method = METHODS[name]

    @settings(FUZZ, max_examples=120 if method.name in NEAR_VALID else 40)
    @given(request=requests_for(method))
    def run(request: pb_message.Message) -> None:
        code, details = invoke(channel, method, request, raw=False)
        check_status(name, code, details)

    run()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_raw_bytes(channel: grpc.Channel, name: str) -> None:
    method = METHODS[name]

    @settings(FUZZ, max_examples=20)
    @given(payload=st.one_of(binary(), st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f",
                                                        b"\x08" + b"\xff" * 10, b"\x12"])))
    def run(payload: bytes) -> None:
        code, details = invoke(channel, method, payload, raw=True)
        check_status(name, code, details)

    run()


def test_connect_with_arbitrary_agent_messages(channel: grpc.Channel) -> None:
    """Streams of arbitrary agent messages, led by a real session id, a
    bogus one or none: status reports for unknown jobs, odd telemetry, logs."""
    method = METHODS["AgentService.Connect"]
    leads = st.sampled_from(["<fresh>", "<fresh>", "", "bogus", "s-" + "0" * 32])

    @settings(FUZZ, max_examples=60)
    @given(lead=leads, body=st.lists(messages(agent_pb2.AgentMessage.DESCRIPTOR), max_size=6))
    def run(lead: str, body: list[agent_pb2.AgentMessage]) -> None:
        lead = session_id(channel) if lead == "<fresh>" else lead
        first = agent_pb2.AgentMessage(session_id=lead)
        if body:
            first.MergeFrom(body[0])
            first.session_id = lead
        code, details = invoke(channel, method, [first, *body[1:]], raw=False)
        check_status("Connect", code, details)

    run()


def test_oversized_request_is_resource_exhausted(channel: grpc.Channel) -> None:
    """Past the server's message limit gRPC refuses before our code runs."""
    big = jobs_pb2.SubmitJobRequest(spec=valid_spec(), client_key="x" * (5 * 1024 * 1024))
    code, _ = invoke(channel, METHODS["JobService.SubmitJob"], big, raw=False)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

