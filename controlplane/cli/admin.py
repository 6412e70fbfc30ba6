"""`xinhe admin`: operator tasks on the server host, against the store itself.

``xinhe admin tokens create --kind tenant --tenant lab-a`` prints a new
token once (only its SHA-256 is stored); ``--kind agent --node NAME`` makes
a join token that registers only as node NAME; ``tokens list`` and ``tokens revoke
ID`` manage them; ``audit`` shows the audit trail. These open the store the
server uses (``--data-dir`` / ``--store-dsn``, defaulting like ``xinhe
server`` to XINHE_DATA_DIR / XINHE_STORE_DSN), so they work before any token
exists and need no network access to the API. A running server sees new and
revoked tokens on its next call.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from controlplane.settings import ServerSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="operator tasks on the server host (tokens, audit)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="store directory (default XINHE_DATA_DIR "
                                                 "or ./xinhe-data)")
    p.add_argument("--store-dsn", help="postgresql://... store (default XINHE_STORE_DSN)")
    topics = p.add_subparsers(dest="topic", metavar="TOPIC", required=True)
    tokens = topics.add_parser("tokens", help="create, list and revoke bearer tokens")
    actions = tokens.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--kind", required=True, choices=("tenant", "admin", "agent"))
    create.add_argument("--tenant", default="", help="the tenant a tenant token acts for")
    create.add_argument("--node", default="", help="bind an agent token to this node: it "
                                                  "registers and connects only as it "
                                                  "(NAME.* = the nodes NAME.<anything>)")
    create.add_argument("--description", default="", help="a note for `tokens list`")
    create.set_defaults(func=_create)
    actions.add_parser("list", help="all tokens, revoked ones included").set_defaults(
        func=_list)
    revoke = actions.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id", metavar="ID")
    revoke.set_defaults(func=_revoke)
    audit = topics.add_parser("audit", help="the audit trail, oldest first")
    audit.add_argument("--limit", type=int, default=100)
    audit.set_defaults(func=_audit)


def _store(args: argparse.Namespace):
    from controlplane.store import open_store

    settings = ServerSettings.from_env().override(data_dir=args.data_dir,
                                                  store_dsn=args.store_dsn)
    return open_store(settings)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _run(args: argparse.Namespace, action) -> int:
    """Run ``action(TokenAdmin)``; domain errors print one line and exit 1."""
    from controlplane.api.errors import DomainError
    from controlplane.services.auth import TokenAdmin
    from controlplane.store.base import StoreError

    try:
        store = _store(args)
    except (StoreError, ValueError) as exc:
        print(f"xinhe admin: cannot open the store: {exc}", file=sys.stderr)
        return 1
    try:
        action(TokenAdmin(store, time.time))
    except (DomainError, StoreError) as exc:
        print(f"xinhe admin: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _create(args: argparse.Namespace) -> int:
    def create(admin) -> None:
        record, secret = admin.create(args.kind, args.tenant, args.description, _actor(),
                                      node=args.node)
        print(f"created {record.kind} token {record.id}"
              + (f" for tenant {record.tenant}" if record.tenant else "")
              + (f" for node {record.node}" if record.node else ""), file=sys.stderr)
        print(secret)  # alone on stdout, for scripts; it is never shown again

    return _run(args, create)


def _list(args: argparse.Namespace) -> int:
    def show(admin) -> None:
        print(f"{'ID':<16} {'KIND':<7} {'TENANT':<16} {'NODE':<16} {'CREATED':<21} "
              f"{'REVOKED':<21} DESCRIPTION")
        for t in admin.list():
            print(f"{t.id:<16} {t.kind:<7} {t.tenant or '-':<16} {t.node or '-':<16} "
                  f"{_when(t.created_at):<21} {_when(t.revoked_at):<21} {t.description}")

    return _run(args, show)


def _revoke(args: argparse.Namespace) -> int:
    def revoke(admin) -> None:
        record = admin.revoke(args.token_id, _actor())
        print(f"revoked {record.id} at {_when(record.revoked_at)}")

    return _run(args, revoke)


def _audit(args: argparse.Namespace) -> int:
    def show(admin) -> None:
        records = admin.store.audit_events(limit=max(1, args.limit))
        for r in records:
            print(f"{_when(r.time)} {r.actor} {r.action} {r.target or '-'} {r.outcome}"
                  + (f" ({r.detail})" if r.detail else ""))

    return _run(args, show)
