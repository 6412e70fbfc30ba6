"""Forward gRPC calls, as raw bytes, to another server (the API front ends'
way to the control plane that owns the state; ``frontend.py``).

The caller's metadata (its bearer token above all), deadline and
cancellation travel with the call; the answer's status, message and
trailing metadata (a follower's ``x-xinhe-leader`` hint) come back as they
are. Nothing is decoded, so the owner judges every byte as if it had been
called directly (malformed requests included). Which methods exist and how
they stream is read from the services' descriptors: a method they do not
declare is UNIMPLEMENTED, as on the owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import FileDescriptor

# Upstream calls that carry no deadline of their own still end: a front end
# never holds a thread for ever on an owner that stopped answering.
NO_DEADLINE_S = 24 * 3600.0

Kind = tuple[bool, bool]  # (request streaming, response streaming)


def methods_of(*files: FileDescriptor) -> dict[str, Kind]:
    """``/package.Service/Method`` -> its streaming kind, for every method
    of every service the files declare."""
    out: dict[str, Kind] = {}
    for file in files:
        for service in file.services_by_name.values():
            for m in service.methods:
                out[f"/{service.full_name}/{m.name}"] = (m.client_streaming,
                                                         m.server_streaming)
    return out


def forwarded_metadata(context: grpc.ServicerContext) -> tuple[tuple[str, Any], ...]:
    """The caller's own metadata, without the transport's reserved keys."""
    return tuple((k, v) for k, v in (context.invocation_metadata() or ())
                 if not k.startswith(("grpc-", ":")) and k != "user-agent")


def remaining(context: grpc.ServicerContext) -> float:
    """Seconds left of the caller's deadline (NO_DEADLINE_S when it set none)."""
    left = context.time_remaining()
    return NO_DEADLINE_S if left is None or left > NO_DEADLINE_S else max(left, 0.0)


def error_status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str,
                                                 tuple[tuple[str, Any], ...]]:
    """An upstream error's code (never OK), message and trailing metadata
    (the transport's own keys left out), to answer a caller with."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return (code if code not in (None, grpc.StatusCode.OK) else grpc.StatusCode.UNKNOWN,
            details or "",
            tuple((k, v) for k, v in (trailing or ()) if not k.startswith("grpc-")))


def relay_error(context: grpc.ServicerContext, error: grpc.RpcError) -> NoReturn:
    """End the call with the upstream's status, message and trailing metadata."""
    code, details, trailing = error_status(error)
    if trailing:
        context.set_trailing_metadata(trailing)
    context.abort(code, details)
    raise AssertionError("unreachable")  # abort raises


class Forwarder(grpc.GenericRpcHandler):
    """Serves every method in ``methods`` by calling it on ``channel``;
    ``local`` handlers (same method names) are served here instead."""

    def __init__(self, channel: grpc.Channel, methods: dict[str, Kind],
                 local: dict[str, grpc.RpcMethodHandler] | None = None) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {
            name: _forwarding(channel, name, kind) for name, kind in methods.items()}
        self._handlers.update(local or {})

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


def forward_unary(channel: grpc.Channel, method: str
                  ) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    """A handler body forwarding unary ``method`` (request bytes in, answer
    bytes out) to ``channel``."""
    return _unary_unary(channel.unary_unary(method))


def _forwarding(channel: grpc.Channel, method: str, kind: Kind) -> grpc.RpcMethodHandler:
    request_streaming, response_streaming = kind
    if not request_streaming and not response_streaming:
        return grpc.unary_unary_rpc_method_handler(forward_unary(channel, method))
    if not request_streaming:
        return grpc.unary_stream_rpc_method_handler(_to_stream(channel.unary_stream(method)))
    if not response_streaming:
        return grpc.stream_unary_rpc_method_handler(_unary_unary(channel.stream_unary(method)))
    return grpc.stream_stream_rpc_method_handler(_to_stream(channel.stream_stream(method)))


def _unary_unary(call: Any) -> Callable[[Any, grpc.ServicerContext], bytes]:
    """One answer: a unary or client-streaming method (``request`` is the
    request's bytes or the iterator of them)."""

    def handle(request: Any, context: grpc.ServicerContext) -> bytes:
        try:
            future = call.future(request, timeout=remaining(context),
                                 metadata=forwarded_metadata(context))
            context.add_callback(future.cancel)
            return future.result()
        except grpc.RpcError as exc:
            relay_error(context, exc)

    return handle


def _to_stream(call: Any) -> Callable[[Any, grpc.ServicerContext], Iterator[bytes]]:
    """A stream of answers: a server- or bidirectional-streaming method.
    The caller going away cancels the upstream call, and the reverse."""

    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        responses: Iterable[bytes] = call(request, timeout=remaining(context),
                                          metadata=forwarded_metadata(context))
        context.add_callback(responses.cancel)  # type: ignore[attr-defined]
        try:
            yield from responses
        except grpc.RpcError as exc:
            relay_error(context, exc)

    return handle
