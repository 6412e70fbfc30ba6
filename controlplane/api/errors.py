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
from controlplane.store.base import ConflictError, NotFoundError, StoreError

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
    if isinstance(exc, StoreError):
        return grpc.StatusCode.UNAVAILABLE, "store unavailable; retry later"
    return grpc.StatusCode.INTERNAL, "internal error"


F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    code, message = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
    else:
        log.debug("%s -> %s: %s", method, code.name, message)
    context.abort(code, message)


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
