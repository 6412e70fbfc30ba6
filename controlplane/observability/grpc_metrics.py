"""A gRPC server interceptor counting calls and timing them, by service,
method and status code. Labels come from the method's full name
(``/xinhe.v1.JobService/Submit``), so they are bounded by the protos."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from controlplane.observability.instruments import ControlPlaneMetrics

# Wrapped handlers remembered (more only when handlers are made per call,
# then the memory is cleared).
HANDLER_CACHE = 256


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Wraps every handler; streaming responses are timed to their end."""

    def __init__(self, metrics: ControlPlaneMetrics) -> None:
        self.metrics = metrics
        # (method, handler id) -> (handler, instrumented copy): wrapped once
        # per method, not per call.
        self._made: dict[tuple[str, int], tuple[Any, Any]] = {}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return None
        key = (details.method, id(handler))
        made = self._made.get(key)
        if made is not None and made[0] is handler:
            return made[1]
        instrumented = self._instrumented(handler, details.method)
        if len(self._made) >= HANDLER_CACHE:  # handlers made per call (a follower's)
            self._made.clear()
        self._made[key] = (handler, instrumented)
        return instrumented

    def _instrumented(self, handler: Any, full_method: str) -> Any:
        service, method = split_method(full_method)
        record = self._recorder(service, method)
        if handler.unary_unary:
            return handler._replace(unary_unary=_unary(handler.unary_unary, record))
        if handler.unary_stream:
            return handler._replace(unary_stream=_stream(handler.unary_stream, record))
        if handler.stream_unary:
            return handler._replace(stream_unary=_unary(handler.stream_unary, record))
        return handler._replace(stream_stream=_stream(handler.stream_stream, record))

    def _recorder(self, service: str, method: str) -> Callable[[grpc.ServicerContext, bool,
                                                                 float], None]:
        def record(context: grpc.ServicerContext, failed: bool, started: float) -> None:
            self.metrics.rpc_handled(service, method, _code(context, failed),
                                     time.perf_counter() - started)
        return record


def _unary(behavior: Callable, record: Callable) -> Callable:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        started, failed = time.perf_counter(), True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            record(context, failed, started)
    return wrapped


def _stream(behavior: Callable, record: Callable) -> Callable:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started, failed = time.perf_counter(), True
        try:
            yield from behavior(request, context)
            failed = False
        finally:
            record(context, failed, started)
    return wrapped
