"""Follower refusal: while this replica does not lead, every call to a Xinhe
service is answered UNAVAILABLE with the leader's address in the trailing
metadata ``x-xinhe-leader`` (when known), so clients and agents retry there.
Health and reflection stay served (probes must reach a follower).

Refusing rather than proxying keeps one writer and one source of truth for
in-memory state (pending queue, agent sessions): a follower holds none."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from controlplane.services.leader import LEADER_METADATA


class LeaderGate(grpc.ServerInterceptor):
    """``serving()`` is True while this replica leads and its controller runs;
    ``leader()`` names the leader's address ("" when unknown)."""

    def __init__(self, services: tuple[str, ...], serving: Callable[[], bool],
                 leader: Callable[[], str]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in services)
        self._serving = serving
        self._leader = leader

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if (handler is None or self._serving()
                or not handler_call_details.method.startswith(self._prefixes)):
            return handler
        return _refusing(handler, self._leader())


def _refusing(handler: grpc.RpcMethodHandler, leader: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that refuses the call."""

    def refuse(_request, context: grpc.ServicerContext):
        if leader:
            context.set_trailing_metadata(((LEADER_METADATA, leader),))
        context.abort(grpc.StatusCode.UNAVAILABLE,
                      f"not the leader; the leader is {leader}" if leader
                      else "not the leader; no leader elected yet, retry shortly")

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
