"""Schema versions of Charter's stores in PostgreSQL, as `charter.migrations` keeps them in SQLite.

A PostgreSQL database holds every store, so its versions live in one table, one row per store:

    charter_schema (store TEXT PRIMARY KEY, version INTEGER NOT NULL, upgraded_at TIMESTAMPTZ)

Step N takes a store from version N-1 to N, in the same transaction as the row's new version;
a session advisory lock taken before the transaction (`_migrating`) keeps two processes from
migrating at once. The rules are SQLite's (charter.migrations): a store with no row and no tables is
created at the current version on open; one at the current version opens; a newer one is
refused naming both versions; an older one is refused with `charter db upgrade --database URL`.

Why not Alembic or yoyo: the SQLite stores already version themselves with `charter.migrations`
(steps as data, a backfill per step in the same transaction), and the PostgreSQL steps are the
same idea over one table; a migration tool would add SQLAlchemy (Alembic) or a second notion of
a step (yoyo) for ~100 lines of code, and could not share the backfill functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from charter.errors import SchemaMismatch
from charter.migrations import check_numbered

if TYPE_CHECKING:
    from charter.db._postgres import PgConnection

__all__ = ["PG_SCHEMA_TABLE", "PgSchema", "PgStep", "pg_ddl", "pg_versions"]

PG_SCHEMA_TABLE = "charter_schema"
_LOCK_KEY = 0x43484152  # "CHAR": the advisory lock every migration takes

_CREATE_TABLE = f"""CREATE TABLE IF NOT EXISTS {PG_SCHEMA_TABLE} (
    store       TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    upgraded_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class PgStep:
    """One migration of one store in PostgreSQL: `sql` takes it from `version - 1` to `version`;
    `fill` (optional) runs after it in the same transaction (a backfill)."""

    version: int
    summary: str
    sql: tuple[str, ...]
    fill: Callable[[PgConnection], None] | None = None


@dataclass(frozen=True, slots=True)
class PgSchema:
    """A store's tables in PostgreSQL: its name (the `charter_schema` row) and ordered steps."""

    store: str
    steps: tuple[PgStep, ...]
    # What the application's role may do (`charter db grant ROLE`): append-only tables get
    # SELECT and INSERT only, so the log and published contracts cannot be rewritten by the role
    # the workers connect as, whatever the triggers; mutable tables get SELECT, INSERT, UPDATE,
    # DELETE; sequences USAGE and SELECT.
    append_only: tuple[str, ...] = ()
    mutable: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()

    def grants(self, role: str) -> list[str]:
        """GRANT statements giving `role` exactly what the application needs (see the fields).
        `role` must be a plain identifier (letters, digits, _); ValueError otherwise."""
        if not role.replace("_", "").isalnum() or not role.isascii():
            raise ValueError(f"role {role!r} is not a plain identifier (letters, digits, _)")
        statements = [f"GRANT SELECT ON {PG_SCHEMA_TABLE} TO {role}"]
        statements += [f"GRANT SELECT, INSERT ON {table} TO {role}" for table in self.append_only]
        statements += [f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {role}" for table in self.append_only]
        statements += [f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}" for table in self.mutable]
        statements += [f"GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {role}" for sequence in self.sequences]
        return statements

    def __post_init__(self) -> None:
        check_numbered(self.store, [step.version for step in self.steps])

    @property
    def version(self) -> int:
        return self.steps[-1].version

    def open(self, connection: PgConnection, where: str) -> None:
        """Check the store before use; create it when the database has none of it.

        `where` names the database in messages (a URL with its password masked).
        Raises SchemaMismatch for a store at another version."""
        found = self._found(connection)
        if found == self.version:
            return
        if found is None:
            with _migrating(connection):
                found = self._found(connection)  # another process may have created it meanwhile
                if found is None:
                    self._apply(connection, 0)
                    return
            if found == self.version:
                return
        raise self._mismatch(found, where)

    def upgrade(self, connection: PgConnection, where: str) -> tuple[int, int]:
        """Migrate to this release's version in one transaction: (version before, after).
        A store with no row is created (before: 0). Raises SchemaMismatch for a newer store."""
        with _migrating(connection):
            found = self._found(connection) or 0
            if found > self.version:
                raise self._mismatch(found, where)
            self._apply(connection, found)
        return found, self.version

    def _found(self, connection: PgConnection) -> int | None:
        if not _has_table(connection):  # read only: the application's role may not create tables
            return None
        row = connection.execute(f"SELECT version FROM {PG_SCHEMA_TABLE} WHERE store = ?", (self.store,)).fetchone()
        return None if row is None else int(row[0])

    def _apply(self, connection: PgConnection, found: int) -> None:
        if found == self.version:
            return
        for step in self.steps:
            if step.version <= found:
                continue
            connection.execute(_CREATE_TABLE)
            for statement in step.sql:
                connection.execute(statement)
            if step.fill is not None:
                step.fill(connection)
        connection.execute(
            f"INSERT INTO {PG_SCHEMA_TABLE} (store, version) VALUES (?, ?) "
            "ON CONFLICT (store) DO UPDATE SET version = excluded.version, upgraded_at = now()",
            (self.store, self.version),
        )

    def _mismatch(self, found: int, where: str) -> SchemaMismatch:
        if found > self.version:
            return SchemaMismatch(
                f"{where}: the {self.store} is at schema version {found}, newer than version {self.version}, "
                "the newest this release of Charter knows: a later release wrote it. Run that release or a newer "
                "one (`pip install --upgrade charter`); this one will not read or write it.",
                found=found,
                expected=self.version,
            )
        return SchemaMismatch(
            f"{where}: the {self.store} is at schema version {found}, older than version {self.version}, which "
            f"this release of Charter uses; run `charter db upgrade --database URL` (as the database's owner) to "
            "migrate it in place, with every worker stopped.",
            found=found,
            expected=self.version,
        )


_SQLITE_TYPES = (
    (re.compile(r"\bINTEGER\b"), "BIGINT"),  # SQLite's INTEGER is 64-bit; PostgreSQL's is 32
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
)


def pg_ddl(statements: tuple[str, ...]) -> tuple[str, ...]:
    """SQLite DDL as PostgreSQL takes it: the column types renamed (INTEGER -> BIGINT, BLOB ->
    BYTEA, REAL -> DOUBLE PRECISION), nothing else. For the plain tables both engines share (the
    indexes beside the log), so a store's two schemas are one text; a statement with SQLite-only
    syntax (AUTOINCREMENT, a trigger's RAISE) must be written for PostgreSQL instead."""
    return tuple(_typed(statement) for statement in statements)


def _typed(statement: str) -> str:
    for pattern, name in _SQLITE_TYPES:
        statement = pattern.sub(name, statement)
    return statement


def pg_versions(connection: PgConnection) -> dict[str, int]:
    """Every store's schema version in the database ({} before the first store is created)."""
    if not _has_table(connection):
        return {}
    rows = connection.execute(f"SELECT store, version FROM {PG_SCHEMA_TABLE} ORDER BY store").fetchall()
    return {str(store): int(version) for store, version in rows}


@contextmanager
def _migrating(connection: PgConnection) -> Iterator[None]:
    """One migration at a time in the database: the session advisory lock, THEN a transaction.

    In this order, not a transaction-level lock taken inside the transaction: a transaction that
    began before another process committed a new table keeps its catalog caches (PostgreSQL
    reads invalidations at transaction start and when it locks a relation, not when it takes an
    advisory lock), so it would not see the table and would try to create it again."""
    connection.execute("SELECT pg_advisory_lock(?)", (_LOCK_KEY,))
    try:
        with connection.transaction():
            yield
    finally:
        connection.execute("SELECT pg_advisory_unlock(?)", (_LOCK_KEY,))


def _has_table(connection: PgConnection) -> bool:
    row = connection.execute("SELECT to_regclass(?) IS NOT NULL", (PG_SCHEMA_TABLE,)).fetchone()
    return bool(row and row[0])
