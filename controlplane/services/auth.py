"""Who may call what: bearer tokens, the identity they carry, and the audit.

Three kinds of token: ``tenant`` (JobService, only its own tenant's queues
and jobs), ``admin`` (every service) and ``agent`` (AgentService only). Only
the SHA-256 of a token is stored; the secret is shown once, at creation.
An agent token may be bound to one node: it then registers and connects
only as that node, so a leaked join token cannot impersonate the fleet. A
binding ``NAME.*`` covers the nodes ``NAME.<anything>``: the per-node agents
one Kubernetes agent process runs (agents/kubernetes/run.py names them so).

The server is open (every call allowed, the embedded demo) until a token
exists in the store or ``--auth-token`` is set; from then on every call needs
a valid, unrevoked bearer token. The static ``--auth-token`` acts as an
admin token. Refused calls and admin actions go to the audit table and the
log, so an operator can see who tried what.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from controlplane.api.errors import InvalidArgument, PermissionDenied, Unauthenticated
from controlplane.store.base import AuditRecord, Store, TokenRecord

log = logging.getLogger(__name__)

TENANT, ADMIN, AGENT = "tenant", "admin", "agent"
KINDS = (TENANT, ADMIN, AGENT)
OPEN = "open"  # no token configured: every call allowed

# Which token kinds may use which service.
ALLOWED: dict[str, frozenset[str]] = {
    "JobService": frozenset({TENANT, ADMIN, OPEN}),
    "AdminService": frozenset({ADMIN, OPEN}),
    "AgentService": frozenset({AGENT, ADMIN, OPEN}),
}
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # the tenant part of a queue
NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")  # as agents register them
NODE_FAMILY = ".*"  # a binding ending so covers NAME.<anything>
MAX_DESCRIPTION = 256


@dataclass(frozen=True)
class Identity:
    """The caller of one RPC, as established from its token."""

    kind: str  # one of KINDS, or OPEN
    tenant: str = ""
    actor: str = OPEN  # how the audit names the caller
    node: str = ""  # the only node a bound agent token may act as

    @property
    def tenant_scope(self) -> str | None:
        """The only tenant this caller may see, or None for all."""
        return self.tenant if self.kind == TENANT else None

    def check_node(self, node: str) -> None:
        """PermissionDenied unless this caller may act as agent of ``node``
        (any node, unless its agent token is bound to another)."""
        if self.node and not node_in_binding(node, self.node):
            raise PermissionDenied(f"this agent token is bound to node {self.node!r}; "
                                   f"it may not act as node {node!r}")


OPEN_IDENTITY = Identity(OPEN)


def node_in_binding(node: str, binding: str) -> bool:
    """Whether ``node`` is the bound node, or one of a ``NAME.*`` family."""
    if binding.endswith(NODE_FAMILY):
        prefix = binding[:-1]  # "NAME."
        return node.startswith(prefix) and len(node) > len(prefix)
    return node == binding


def hash_token(secret: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Auditor:
    """Appends to the store's audit table and mirrors each record to the log."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store, self.clock = store, clock

    def record(self, actor: str, action: str, target: str, outcome: str,
               detail: str = "") -> AuditRecord:
        level = logging.WARNING if outcome != "ok" else logging.INFO
        log.log(level, "audit: %s %s %s -> %s %s", actor, action, target, outcome, detail)
        return self.store.append_audit(AuditRecord(0, self.clock(), actor, action, target,
                                                   outcome, detail))


TOKEN_PREFIX = "xh_"


class TokenAdmin:
    """Create, list and revoke tokens (the operator's ``xinhe admin tokens``)."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store, self.clock = store, clock
        self.audit = Auditor(store, clock)

    def create(self, kind: str, tenant: str = "", description: str = "",
               actor: str = "cli", node: str = "") -> tuple[TokenRecord, str]:
        """A new token and its secret (shown once, never stored). ``node``
        binds an agent token to that node."""
        _check_token_request(kind, tenant, description, node)
        # A fixed prefix: never starts with "-" (argparse would take `--token -x...`
        # for a missing value) and secret scanners can recognise it.
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(id="t-" + secrets.token_hex(6), kind=kind, tenant=tenant,
                             description=description, created_at=self.clock(), node=node)
        self.store.create_token(record, hash_token(secret))
        self.audit.record(actor, "tokens.create", record.id, "ok",
                          f"kind={kind}" + (f" tenant={tenant}" if tenant else "")
                          + (f" node={node}" if node else ""))
        return record, secret

    def list(self) -> list[TokenRecord]:
        return self.store.list_tokens()

    def revoke(self, token_id: str, actor: str = "cli") -> TokenRecord:
        """Revoke a token (NotFoundError for an unknown id); calls with it
        are refused from the next RPC on."""
        record = self.store.revoke_token(token_id, self.clock())
        self.audit.record(actor, "tokens.revoke", token_id, "ok")
        return record


def _check_token_request(kind: str, tenant: str, description: str, node: str = "") -> None:
    if kind not in KINDS:
        raise InvalidArgument("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    if kind == TENANT and not TENANT_RE.fullmatch(tenant):
        raise InvalidArgument("tenant", f"a tenant token needs a tenant name (the first part "
                                        f"of its queues, [a-z0-9-]), got {tenant!r}")
    if kind != TENANT and tenant:
        raise InvalidArgument("tenant", f"only tenant tokens name a tenant, not {kind} tokens")
    if node and kind != AGENT:
        raise InvalidArgument("node", f"only agent tokens are bound to a node, not {kind} tokens")
    if node and not NODE_RE.fullmatch(node.removesuffix(NODE_FAMILY)):
        raise InvalidArgument("node", f"not a node name (letters, digits, '.', '_', '-'): "
                                      f"{node!r}")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument("description", f"longer than {MAX_DESCRIPTION} characters")


OPEN_RECHECK_S = 1.0


class Authenticator:
    """Resolves a call's bearer token to an :class:`Identity` and checks the
    service is allowed to it; every refusal is audited."""

    def __init__(self, store: Store, static_token: str, clock: Callable[[], float]) -> None:
        self.store = store
        self.static_token = static_token
        self.audit = Auditor(store, clock)
        self._clock = clock
        self._closed = bool(static_token)  # once closed, never open again
        self._open_until = 0.0  # an "open" answer is trusted until then

    def required(self) -> bool:
        """Whether calls need a token (a static one, or any in the store).

        Tokens are created out of process (``xinhe admin tokens create``), so
        an open server asks the store again, at most once per
        OPEN_RECHECK_S: a first token closes the server within that delay.
        """
        if self._closed:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        if self.store.tokens_exist():
            self._closed = True
            return True
        self._open_until = now + OPEN_RECHECK_S
        return False

    def check(self, bearer: str | None, service: str, method: str) -> Identity:
        """The caller's identity; Unauthenticated for a missing, unknown or
        revoked token, PermissionDenied when its kind may not use ``service``."""
        if not self.required():
            return OPEN_IDENTITY
        identity = self._authenticate(bearer, method)
        if identity.kind not in ALLOWED[service]:
            self.audit.record(identity.actor, method, service, "denied",
                              f"{identity.kind} tokens may not use {service}")
            raise PermissionDenied(f"a {identity.kind} token may not call {service}.{method}")
        return identity

    def _authenticate(self, bearer: str | None, method: str) -> Identity:
        if not bearer:
            self._refuse("anonymous", method, "no bearer token")
        if self.static_token and hmac.compare_digest(bearer.encode(),
                                                     self.static_token.encode()):
            return Identity(ADMIN, actor="static-token")
        record = self.store.find_token(hash_token(bearer))
        if record is None:
            self._refuse("anonymous", method, "unknown token")
        if record.revoked_at is not None:
            self._refuse(f"token:{record.id}", method, "revoked token")
        return Identity(record.kind, record.tenant, actor=f"token:{record.id}",
                        node=record.node if record.kind == AGENT else "")

    def _refuse(self, actor: str, method: str, why: str) -> NoReturn:
        self.audit.record(actor, method, "", "unauthenticated", why)
        raise Unauthenticated(f"{why}: send 'authorization: Bearer <token>' with a valid token")

    def denied(self, identity: Identity, method: str, target: str, why: str) -> None:
        """Audit a call refused by a rule finer than the service (another
        tenant's queue); the caller raises the matching error."""
        self.audit.record(identity.actor, method, target, "denied", why)
