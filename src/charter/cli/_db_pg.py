"""`charter db status | upgrade | grant` on a PostgreSQL database (charter.cli.db)."""

from __future__ import annotations

import typer

from charter.cli._output import fail, say
from charter.db import Database, PgSchema, pg_versions
from charter.db._stores import reachable
from charter.errors import CharterError

__all__ = ["pg_grant", "pg_status", "pg_upgrade"]


def _schemas() -> list[PgSchema]:
    from charter.deployment import store_schemas

    return [s.pg for s in store_schemas() if s.pg is not None]


def pg_status(database: Database, *, as_json: bool) -> None:
    """Each store's version in the database beside this release's; exit 0, 1 or 2 as on SQLite."""
    try:
        with reachable("database", database), database.pg_connection() as connection:
            found = pg_versions(connection)
    except CharterError as error:
        fail(error)
    from charter.cli.db import report_versions, version_state

    rows = []
    blocked = pending = False
    for schema in _schemas():
        version = found.get(schema.store)
        state, newer, older = version_state(
            version, schema.version, absent="absent: run `charter db upgrade` (as the owner) to create it"
        )
        blocked, pending = blocked or newer, pending or older
        row = {"store": schema.store, "database": database.shown, "version": version, "current": schema.version}
        rows.append({**row, "state": state})
    report_versions(rows, "database", 25, as_json=as_json, blocked=blocked, pending=pending)


def pg_upgrade(database: Database) -> None:
    """Create or migrate every store, one transaction each (PgSchema.upgrade)."""
    for schema in _schemas():
        try:
            with reachable(schema.store, database), database.pg_connection() as connection:
                before, after = schema.upgrade(connection, database.shown)
        except CharterError as error:
            fail(error)
        except Exception as error:  # psycopg's: a step refused (privileges, a damaged table)
            fail(f"{database.shown}: the {schema.store} could not be upgraded, nothing was changed: {error}")
        if before == after:
            say(f"{schema.store:<25} {database.shown}: at version {after}, nothing to do")
        elif before == 0:
            say(f"{schema.store:<25} {database.shown}: created at version {after}", "green")
        else:
            steps = "; ".join(f"{s.version}: {s.summary}" for s in schema.steps if s.version > before)
            say(f"{schema.store:<25} {database.shown}: version {before} -> {after} ({steps})", "green")


def pg_grant(database: Database, role: str) -> None:
    """Run every store's `PgSchema.grants(role)` in one transaction: all of them or none."""
    schemas = _schemas()
    try:
        statements = [statement for schema in schemas for statement in schema.grants(role)]
    except ValueError as error:
        fail(str(error))
    try:
        with reachable("database", database), database.pg_connection() as connection:
            missing = [s.store for s in schemas if s.store not in pg_versions(connection)]
            if missing:
                fail(
                    f"{database.shown}: no {', '.join(missing)} yet: run `charter db upgrade --database URL` as the "
                    f"owner first, then grant {role}"
                )
            with connection.transaction():
                for statement in statements:
                    connection.execute(statement)
    except CharterError as error:
        fail(error)
    except typer.Exit:
        raise
    except Exception as error:  # psycopg's: no such role, not the owner
        fail(f"{database.shown}: nothing was granted to {role}: {error}")
    for schema in schemas:
        say(f"{schema.store:<25} {role}: " + _summary(schema))


def _summary(schema: PgSchema) -> str:
    parts = []
    if schema.append_only:
        parts.append(f"SELECT, INSERT on {', '.join(schema.append_only)}")
    if schema.mutable:
        parts.append(f"SELECT, INSERT, UPDATE, DELETE on {', '.join(schema.mutable)}")
    return "; ".join(parts)
