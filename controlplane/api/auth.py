"""Who is calling. The bearer token of each call is resolved to an
:class:`Identity` by ``services.auth.Authenticator``; with no token configured
the server is open (embedded default, local demo)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from controlplane.api.errors import PermissionDenied, Unauthenticated
from controlplane.services.auth import Authenticator, Identity

SCHEME = "Bearer "


def bearer(context: grpc.ServicerContext) -> str | None:
    """The call's bearer token, None when it sends none. Unauthenticated for
    an ``authorization`` header of another scheme (a likely client bug)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            if not value.startswith(SCHEME):
                raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
            return value[len(SCHEME):].strip() or None
    return None


class Guard:
    """Checks every call of one service (thin servicers call ``guard(...)``)."""

    def __init__(self, auth: Authenticator, service: str) -> None:
        self.auth, self.service = auth, service

    def __call__(self, context: grpc.ServicerContext, method: str) -> Identity:
        return self.auth.check(bearer(context), self.service, method)

    @contextmanager
    def audited(self, who: Identity, method: str, target: str) -> Iterator[None]:
        """Audit a PermissionDenied raised inside (a rule finer than the
        service, e.g. another tenant's queue) and let it propagate."""
        try:
            yield
        except PermissionDenied as exc:
            self.auth.denied(who, method, target, str(exc))
            raise

    def admin_action(self, who: Identity, method: str, target: str, detail: str = "") -> None:
        """Audit an admin action that succeeded."""
        self.auth.audit.record(who.actor, method, target, "ok", detail)
