"""`charter db copy`: move a SQLite deployment's audit log and registry into PostgreSQL.

The audit log's receipts are copied AS STORED: body, signature and link byte for byte, with
their log_seq, into the stream "" (the one chain a SQLite log is), so the copy verifies with the
same head (log_seq, link) as the original; the head row is copied, and the log_seq sequence is set
after the last receipt, so the workers' streams continue after it. The `keys` rows and the
redactable `backend_errors` rows are copied; the indexes (runs, denials, quotas, approvals) are
rebuilt from the copied receipts by the same functions `charter db upgrade` backfills them with.

The registry's tables (contract_versions, contract_promotions, binding_modules) are copied row
for row into the tables of the same names, created by the registry's PostgreSQL schema.

One transaction for the audit log and one for the registry: a copy that fails leaves nothing
half-written. A target already holding receipts or contracts is refused (copying twice would
mix two logs). The keys folder is not in any database: it stays in the SQLite folder (the home
the workers use), and `charter audit verify` on the copy trusts the same public keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.db import Database, PgConnection, PgSchema
from charter.errors import UsageError
from charter.migrations import read_version

__all__ = ["REGISTRY_TABLES", "CopyReport", "copy_deployment"]

REGISTRY_TABLES = ("contract_versions", "contract_promotions", "binding_modules")
_AUDIT_TABLES = ("receipts", "keys", "backend_errors")
_BATCH = 1000


@dataclass(slots=True)
class CopyReport:
    receipts: int = 0
    head: tuple[int, str] | None = None
    keys: int = 0
    backend_errors: int = 0
    registry: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def copy_deployment(folder: Path, target: Database) -> CopyReport:
    """Copy `folder`'s audit.db and charter.db into `target` (PostgreSQL). UsageError for a target
    that is not PostgreSQL or already holds data, or a source store at another schema version."""
    from charter.audit._pg_schema import AUDIT_PG_SCHEMA
    from charter.audit.store import AUDIT_SCHEMA
    from charter.registry.store import REGISTRY_SCHEMA

    if not target.is_postgres:
        raise UsageError(f"--to {target.shown}: give a postgresql://... URL to copy into")
    if not folder.is_dir():
        raise UsageError(f"--from sqlite:{folder}: no such folder (a Charter home holding audit.db, charter.db)")
    audit, registry = folder / "audit.db", folder / "charter.db"
    for path, schema in ((audit, AUDIT_SCHEMA), (registry, REGISTRY_SCHEMA)):
        found = read_version(path) if path.exists() else None
        if found is not None and found != schema.version:
            raise UsageError(
                f"{path}: the {schema.store} is at schema version {found}, this release copies version "
                f"{schema.version}: run `charter db upgrade --home {folder}` with this release first"
            )
    registry_schema = _registry_pg_schema()
    report = CopyReport()
    with target.pg_connection() as connection:
        _refuse_non_empty(connection, target)
        AUDIT_PG_SCHEMA.open(connection, target.shown)
        if audit.exists():
            with closing(sqlite3.connect(f"{audit.resolve().as_uri()}?mode=ro", uri=True)) as source:
                _copy_audit(source, connection, report)
        else:
            report.notes.append(f"{audit}: absent; the audit log in {target.shown} starts empty")
        if not registry.exists():
            report.notes.append(f"{registry}: absent; no contract copied")
        elif registry_schema is None:
            report.notes.append("this build has no PostgreSQL registry schema: the registry was not copied")
        else:
            registry_schema.open(connection, target.shown)
            source_uri = f"{registry.resolve().as_uri()}?mode=ro"
            with closing(sqlite3.connect(source_uri, uri=True)) as source, connection.transaction():
                for table in REGISTRY_TABLES:
                    if _sqlite_has(source, table):
                        report.registry[table] = _copy_table(source, connection, table)
    return report


def _registry_pg_schema() -> PgSchema | None:
    """The registry's PostgreSQL schema (charter.registry.store), found by type, not by name."""
    import charter.registry.store as registry

    found = [value for value in vars(registry).values() if isinstance(value, PgSchema)]
    return found[0] if found else None


def _refuse_non_empty(connection: PgConnection, target: Database) -> None:
    for table in (*_AUDIT_TABLES, *REGISTRY_TABLES):
        exists = connection.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()
        if exists and exists[0] and connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
            raise UsageError(
                f"{target.shown} already holds rows in {table}: `charter db copy` copies into an empty database "
                "only (copying into a used one would mix two logs); create a new database and copy into it"
            )


def _copy_audit(source: sqlite3.Connection, connection: PgConnection, report: CopyReport) -> None:
    from charter.approvals._index import fill_approvals_index
    from charter.audit._pg_schema import LOG_SEQ_SEQUENCE
    from charter.audit.index import fill_denials_index, fill_in_doubt_index, fill_runs_index
    from charter.audit.quotas import fill_quota_index

    with connection.transaction():
        rows = source.execute("SELECT log_seq, run_id, seq, kind, body, signature, link FROM receipts ORDER BY log_seq")
        while batch := rows.fetchmany(_BATCH):
            connection.executemany(
                "INSERT INTO receipts (log_seq, run_id, seq, kind, body, signature, link, stream, stream_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, '', 0)",
                [_as_stored(row) for row in batch],
            )
            report.receipts += len(batch)
        report.keys = _copy_table(source, connection, "keys")
        report.backend_errors = _copy_table(source, connection, "backend_errors")
        head = source.execute("SELECT log_seq, link FROM head WHERE one = 1").fetchone()
        if head is not None:
            connection.execute("INSERT INTO head (one, log_seq, link) VALUES (1, ?, ?)", (head[0], head[1]))
            report.head = (int(head[0]), str(head[1]))
        last = source.execute("SELECT max(log_seq) FROM receipts").fetchone()[0]
        if last:  # the writers' streams continue after the copied receipts
            connection.execute(f"SELECT setval('{LOG_SEQ_SEQUENCE}', ?)", (int(last),))
        for fill in (fill_runs_index, fill_denials_index, fill_in_doubt_index, fill_quota_index, fill_approvals_index):
            fill(connection)


def _as_stored(row: Sequence[Any]) -> tuple[Any, ...]:
    # Exactly as stored: a body or signature altered into text stays text (verify reports it).
    return tuple(row)


def _copy_table(source: sqlite3.Connection, connection: PgConnection, table: str) -> int:
    """Every row of `table`, column for column (the SQLite table's columns, by name)."""
    columns = [str(r[1]) for r in source.execute(f"PRAGMA table_info({table})").fetchall()]
    listed = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    count = 0
    rows = source.execute(f"SELECT {listed} FROM {table}")
    while batch := rows.fetchmany(_BATCH):
        connection.executemany(
            f"INSERT INTO {table} ({listed}) OVERRIDING SYSTEM VALUE VALUES ({marks})", [tuple(r) for r in batch]
        )
        count += len(batch)
    for column in columns:  # a serial or identity column continues after the copied rows
        sequence = connection.execute("SELECT pg_get_serial_sequence(?, ?)", (table, column)).fetchone()
        if sequence and sequence[0]:
            connection.execute(
                f"SELECT setval(?, (SELECT COALESCE(max({column}), 0) + 1 FROM {table}), false)", (sequence[0],)
            )
    return count


def _sqlite_has(source: sqlite3.Connection, table: str) -> bool:
    return (
        source.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None
    )
