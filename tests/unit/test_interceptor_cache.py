"""Interceptors wrap each method's handler once, not once per call, and
stay bounded when handlers are made per call (a follower's refusals)."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from controlplane.api import errors
from controlplane.api.errors import MalformedRequests
from controlplane.observability import grpc_metrics
from controlplane.observability.grpc_metrics import MetricsInterceptor
from controlplane.observability.instruments import ControlPlaneMetrics

METHOD = "/xinhe.v1.JobService/GetJob"


def handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(lambda request, context: request,
                                               request_deserializer=bytes)


class Context:
    def code(self) -> None:
        return None


@pytest.mark.parametrize("make", [lambda: MetricsInterceptor(ControlPlaneMetrics()),
                                  MalformedRequests])
def test_a_registered_handler_is_wrapped_once(make) -> None:
    interceptor, registered = make(), handler()
    details = SimpleNamespace(method=METHOD, invocation_metadata=())
    first = interceptor.intercept_service(lambda _: registered, details)
    assert first is not registered
    assert interceptor.intercept_service(lambda _: registered, details) is first
    assert first.unary_unary(b"x", Context()) == b"x"


@pytest.mark.parametrize(("make", "module"), [
    (lambda: MetricsInterceptor(ControlPlaneMetrics()), grpc_metrics),
    (MalformedRequests, errors)])
def test_handlers_made_per_call_do_not_grow_the_memory(make, module) -> None:
    interceptor = make()
    details = SimpleNamespace(method=METHOD, invocation_metadata=())
    made = [handler() for _ in range(module.HANDLER_CACHE * 2 + 3)]
    for h in made:  # kept alive: distinct ids
        wrapped = interceptor.intercept_service(lambda _, h=h: h, details)
        assert wrapped.unary_unary(b"y", Context()) == b"y"
    assert len(interceptor._made) <= module.HANDLER_CACHE


def test_the_metrics_count_every_call_through_a_cached_wrapper() -> None:
    metrics = ControlPlaneMetrics()
    interceptor, registered = MetricsInterceptor(metrics), handler()
    details = SimpleNamespace(method=METHOD, invocation_metadata=())
    for _ in range(3):
        interceptor.intercept_service(lambda _: registered, details).unary_unary(b"", Context())
    value = metrics.registry.get_sample_value(
        "xinhe_grpc_requests_total",
        {"service": "xinhe.v1.JobService", "method": "GetJob", "code": "OK"})
    assert value == 3
