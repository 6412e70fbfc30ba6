"""Who is calling. With no token configured the server is open (embedded
default, local demo); with one, every call must present it."""

from __future__ import annotations

import hmac

import grpc

from controlplane.api.errors import Unauthenticated


def require_token(context: grpc.ServicerContext, token: str) -> None:
    """Raise Unauthenticated unless the call carries ``Bearer <token>``."""
    if not token:
        return
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and value.startswith("Bearer "):
            if hmac.compare_digest(value[7:].encode(), token.encode()):
                return
            raise Unauthenticated("invalid bearer token")
    raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
