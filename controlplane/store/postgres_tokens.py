"""Tokens and audit trail of the PostgreSQL store (a part of ``PostgresStore``
kept apart so each module stays small); same contract as SQLite's."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from controlplane.store.base import AuditRecord, ConflictError, NotFoundError, TokenRecord

_TOKEN_COLUMNS = "id, kind, tenant, description, created_at, revoked_at, node"
_AUDIT_COLUMNS = "seq, time, actor, action, target, outcome, detail"


class TokensAndAudit:
    """The token and audit methods of :class:`Store`, on ``self._tx()``."""

    def _tx(self) -> AbstractContextManager[psycopg.Cursor[Any]]:
        raise NotImplementedError  # provided by PostgresStore

    def create_token(self, token: TokenRecord, token_hash: str) -> TokenRecord:
        with self._tx() as cur:
            try:
                cur.execute(f"INSERT INTO tokens ({_TOKEN_COLUMNS}, token_hash)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                            (token.id, token.kind, token.tenant, token.description,
                             token.created_at, token.revoked_at, token.node, token_hash))
            except pg_errors.UniqueViolation as exc:
                raise ConflictError(f"token {token.id} already exists") from exc
        return token

    def find_token(self, token_hash: str) -> TokenRecord | None:
        with self._tx() as cur:
            row = cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = %s",
                              (token_hash,)).fetchone()
        return TokenRecord(*row) if row else None

    def list_tokens(self) -> list[TokenRecord]:
        with self._tx() as cur:
            rows = cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens"
                               " ORDER BY created_at, id").fetchall()
        return [TokenRecord(*row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> TokenRecord:
        with self._tx() as cur:
            row = cur.execute("UPDATE tokens SET revoked_at = coalesce(revoked_at, %s)"
                              f" WHERE id = %s RETURNING {_TOKEN_COLUMNS}",
                              (now, token_id)).fetchone()
            if row is None:
                raise NotFoundError(f"token {token_id} not found")
        return TokenRecord(*row)

    def tokens_exist(self) -> bool:
        with self._tx() as cur:
            return bool(cur.execute("SELECT EXISTS (SELECT 1 FROM tokens)").fetchone()[0])

    def append_audit(self, record: AuditRecord) -> AuditRecord:
        with self._tx() as cur:
            seq = cur.execute(
                "INSERT INTO audit (time, actor, action, target, outcome, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING seq",
                (record.time, record.actor, record.action, record.target, record.outcome,
                 record.detail)).fetchone()[0]
        return replace(record, seq=seq)

    def audit_events(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        with self._tx() as cur:
            rows = cur.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > %s"
                               " ORDER BY seq LIMIT %s", (after_seq, limit)).fetchall()
        return [AuditRecord(*row) for row in rows]
