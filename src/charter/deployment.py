"""A deployment's stores, opened together on one database: what `charter serve` builds in each
worker, and what `charter db upgrade | status | grant` walk.

    stores = open_stores(Database.from_env(home), lease_seconds=30)
    stores.registry, stores.audit, stores.idempotency, stores.sessions, stores.tokens

On SQLite each store is its file in `database.home` (charter.db, audit.db, idempotency.db,
ui-sessions.db, tokens.yaml), as before; on PostgreSQL all are tables of the one database,
reached through the process's pool (open them after a worker forks, never before).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from charter.db import Database

if TYPE_CHECKING:
    from charter.audit import AuditLog
    from charter.db import PgSchema
    from charter.migrations import Schema
    from charter.registry import Registry
    from charter.server import IdempotencyStore, TokenStore
    from charter.ui import SessionStore

__all__ = ["StoreSchema", "Stores", "open_stores", "store_schemas"]


@dataclass(frozen=True, slots=True)
class Stores:
    """Every store of one deployment, on one database. `close` closes the connections the
    idempotency and session stores hold (the audit log's writer lives as long as the process)."""

    database: Database
    registry: Registry
    audit: AuditLog
    idempotency: IdempotencyStore
    sessions: SessionStore
    tokens: TokenStore

    def close(self) -> None:
        self.idempotency.close()
        self.sessions.close()


def open_stores(
    database: Database, *, lease_seconds: float = 30.0, tokens: Path | None = None, sessions: Path | None = None
) -> Stores:
    """Open (on first use: create) every store of `database`.

    `lease_seconds`: an Idempotency-Key claim's lease (IdempotencyStore). `tokens`: the token
    file of a SQLite deployment (default `database.home / "tokens.yaml"`; a PostgreSQL one keeps
    its tokens in the table `api_tokens`); `sessions`: the review-app session file (SQLite).
    Raises SchemaMismatch (a store of another schema version, naming both versions) and
    StoreUnavailable (PostgreSQL cannot be reached)."""
    from charter.audit import AuditLog
    from charter.registry import Registry
    from charter.server import IdempotencyStore, TokenStore
    from charter.ui import SessionStore

    registry = Registry(database=database)
    idempotency = IdempotencyStore(database=database, lease_seconds=lease_seconds)
    session_store = SessionStore(sessions, database=database)
    token_store = TokenStore(tokens, database=database)
    audit = AuditLog(database=database)
    return Stores(database, registry, audit, idempotency, session_store, token_store)


@dataclass(frozen=True, slots=True)
class StoreSchema:
    """One store's schema on each engine: its SQLite file in the home (None: not a SQLite
    database, e.g. the YAML token file) and its PostgreSQL schema (None: not in PostgreSQL yet)."""

    filename: str | None
    sqlite: Schema | None
    pg: PgSchema | None

    @property
    def store(self) -> str:
        named = self.sqlite or self.pg
        assert named is not None
        return named.store


def store_schemas() -> list[StoreSchema]:
    """Every store a deployment may hold, in the order `charter db` lists and migrates them."""
    from charter.audit._pg_schema import AUDIT_PG_SCHEMA
    from charter.audit.store import AUDIT_SCHEMA
    from charter.registry.store import REGISTRY_PG_SCHEMA, REGISTRY_SCHEMA
    from charter.server._idempotency import IDEMPOTENCY_PG_SCHEMA, IDEMPOTENCY_SCHEMA
    from charter.server._token_table import TOKENS_PG_SCHEMA
    from charter.ui._sessions import SESSIONS_PG_SCHEMA

    return [
        StoreSchema("charter.db", REGISTRY_SCHEMA, REGISTRY_PG_SCHEMA),
        StoreSchema("audit.db", AUDIT_SCHEMA, AUDIT_PG_SCHEMA),
        StoreSchema("idempotency.db", IDEMPOTENCY_SCHEMA, IDEMPOTENCY_PG_SCHEMA),
        # The SQLite session file is not listed (as before): its version 1 has had no upgrade.
        StoreSchema(None, None, SESSIONS_PG_SCHEMA),
        StoreSchema(None, None, TOKENS_PG_SCHEMA),
    ]
