"""Domain errors and their gRPC status codes, mapped in one place.

Services raise these; servicers never build status codes themselves. Any
other exception becomes INTERNAL with an opaque message (the traceback goes
to the server log, never to the client).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from controlplane.model.spec import SpecError
from controlplane.store.base import ConflictError, FencedError, NotFoundError, StoreError

log = logging.getLogger(__name__)


class DomainError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(DomainError):
    """A limit (rate, size, quota) was hit; the message says which and when
    to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an exception raised by a service."""
    if isinstance(exc, DomainError):
        return exc.code, str(exc)
    if isinstance(exc, SpecError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc) or "not found"
    if isinstance(exc, ConflictError):
        return grpc.StatusCode.ABORTED, str(exc) or "concurrent update; retry"
    if isinstance(exc, FencedError):
        return grpc.StatusCode.UNAVAILABLE, "this replica no longer leads; retry (on the leader)"
    if isinstance(exc, StoreError):
        return grpc.StatusCode.UNAVAILABLE, "store unavailable; retry later"
    return grpc.StatusCode.INTERNAL, "internal error"


F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    code, message = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
    else:
        log.debug("%s -> %s: %.1000s", method, code.name, message)
    context.abort(code, clip(message))


# Status details travel in HTTP/2 trailers, which clients cap (8 KiB by
# default): a message echoing a huge input would replace the real status by
# "metadata size exceeds limit" on the client.
MAX_DETAILS = 1024


def clip(message: str) -> str:
    """``message`` cut to MAX_DETAILS characters, marked when cut."""
    if len(message) <= MAX_DETAILS:
        return message
    return message[:MAX_DETAILS] + f"... ({len(message) - MAX_DETAILS} more characters)"


def unary(fn: F) -> F:
    """Wrap a unary servicer method: domain errors become statuses."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            _abort(context, exc, fn.__qualname__)
            return None

    return wrapper  # type: ignore[return-value]


def streaming(fn: F) -> F:
    """Wrap a server-streaming servicer method the same way."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            _abort(context, exc, fn.__qualname__)

    return wrapper  # type: ignore[return-value]


def _is_abort(exc: BaseException) -> bool:
    # grpc's context.abort() raises a bare, argument-less Exception.
    return (type(exc) is Exception and not exc.args) or isinstance(exc, grpc.RpcError)


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""


def _bad_bytes() -> InvalidArgument:
    return InvalidArgument("request", "bytes are not a valid message of this RPC's type")


# Wrapped handlers an interceptor remembers (more only when handlers are made
# per call, then the memory is cleared).
HANDLER_CACHE = 256


class MalformedRequests(grpc.ServerInterceptor):
    """Undecodable request bytes become INVALID_ARGUMENT.

    Left alone, gRPC answers them INTERNAL and logs a traceback, which
    reads like a server bug; a client sending garbage is a client error. The
    deserializer is made tolerant and the handler refuses the stand-in.
    """

    def __init__(self) -> None:
        # handler id -> (handler, its tolerant copy): built once per method,
        # not per call (the registered handlers live as long as the server).
        self._made: dict[int, tuple[Any, Any]] = {}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        made = self._made.get(id(handler))
        if made is not None and made[0] is handler:
            return made[1]
        tolerant = self._tolerant(handler)
        if len(self._made) >= HANDLER_CACHE:  # handlers made per call (a follower's)
            self._made.clear()
        self._made[id(handler)] = (handler, tolerant)
        return tolerant

    @staticmethod
    def _tolerant(handler: Any) -> Any:
        parse = handler.request_deserializer

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception:
                return _Undecodable()

        kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                    if getattr(handler, k))
        wrap = _refuse_stream if kind.startswith("stream") else _refuse_unary
        return handler._replace(request_deserializer=tolerant,
                                **{kind: wrap(getattr(handler, kind))})


def _refuse_unary(behavior: Callable) -> Callable:
    def check(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(_bad_bytes()))
        return behavior(request, context)
    return check


def _refuse_stream(behavior: Callable) -> Callable:
    def requests(iterator: Iterator[Any]) -> Iterator[Any]:
        for request in iterator:
            if isinstance(request, _Undecodable):
                raise _bad_bytes()  # the servicer maps it like any domain error
            yield request

    def check(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behavior(requests(request_iterator), context)
    return check
