"""`charter db ...`: the schema versions of Charter's stores, their upgrade in place, and (on
PostgreSQL) the grants of the application's role.

Every command takes `--database URL` (default $CHARTER_DATABASE_URL, else the SQLite files of
`--home`): `sqlite:FOLDER` or `postgresql://USER@HOST/NAME`."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from charter.cli._output import fail, print_json, say
from charter.db import Database
from charter.errors import CharterError
from charter.migrations import Schema, read_version

app = typer.Typer(
    help="Schema versions of the registry, audit log, idempotency, session and token stores; upgrades; grants."
)

EXIT_NEWER_OR_INVALID = 1  # `status`: a store this release cannot open (takes precedence)
EXIT_UPGRADE_PENDING = 2  # `status`: a store `charter db upgrade` would migrate

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="The Charter home holding the stores (default: $CHARTER_HOME, else ./.charter)."),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        metavar="URL",
        help="The database: sqlite:FOLDER or postgresql://USER@HOST/NAME (default: $CHARTER_DATABASE_URL, "
        "else the SQLite files of --home).",
    ),
]


def _stores() -> list[tuple[str, Schema]]:
    """Each SQLite store a Charter home may hold: its file name and its schema."""
    from charter.deployment import store_schemas

    return [(s.filename, s.sqlite) for s in store_schemas() if s.filename is not None and s.sqlite is not None]


def _database(home: Path | None, url: str | None) -> Database:
    try:
        return Database.from_env(home, url=url)
    except CharterError as error:
        fail(error)


@app.command()
def status(
    home: HomeOption = None, database: DatabaseOption = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Each store's schema version beside the one this release uses. Changes nothing.

    Exit status, for CI: 0 when every store is current or absent; 2 when an upgrade is
    pending (`charter db upgrade`); 1 when a store is newer than this release or its
    version is invalid (this release cannot open it; also 1 for an unreadable file)."""
    chosen = _database(home, database)
    if chosen.is_postgres:
        from charter.cli._db_pg import pg_status

        pg_status(chosen, as_json=as_json)
        return
    folder = chosen.home
    blocked = pending = False
    rows = []
    for name, schema in _stores():
        try:
            found = read_version(folder / name)
        except sqlite3.DatabaseError as error:
            fail(f"{folder / name}: not a readable SQLite store ({error})")
        if found is not None and found < 0:
            state = "invalid: a negative schema version; this file was not written by Charter"
            blocked = True
        else:
            state, newer, older = version_state(found, schema.version, absent="absent")
            blocked, pending = blocked or newer, pending or older
        row = {"store": schema.store, "file": str(folder / name), "version": found, "current": schema.version}
        rows.append({**row, "state": state})
    report_versions(rows, "file", 18, as_json=as_json, blocked=blocked, pending=pending)


def version_state(found: int | None, current: int, *, absent: str) -> tuple[str, bool, bool]:
    """A store's state for `charter db status` (either engine): (words, newer than this release,
    an upgrade pending). `absent`: what to say of a store not there (pending only on PostgreSQL,
    where `charter db upgrade` creates it)."""
    if found is None:
        return absent, False, absent != "absent"
    if found == current:
        return "current", False, False
    if found < current:
        return "older: run `charter db upgrade`", False, True
    return "newer than this release", True, False


def report_versions(
    rows: Sequence[Mapping[str, object]], where: str, width: int, *, as_json: bool, blocked: bool, pending: bool
) -> None:
    """Print `charter db status`'s rows (JSON, or one line each: store, `where`, versions, state)
    and exit 1 for a store this release cannot open, 2 for an upgrade pending, else 0."""
    if as_json:
        print_json(rows)
    else:
        for row in rows:
            shown = "-" if row["version"] is None else row["version"]
            say(f"{row['store']!s:<{width}} {row[where]}: version {shown} of {row['current']} ({row['state']})")
    if blocked or pending:
        raise typer.Exit(EXIT_NEWER_OR_INVALID if blocked else EXIT_UPGRADE_PENDING)


@app.command()
def upgrade(home: HomeOption = None, database: DatabaseOption = None) -> None:
    """Migrate each store in place to this release's schema, one transaction per store.

    Stop other Charter processes using the stores first. Running it again does nothing.
    Receipts and published contracts are never rewritten: steps add tables, columns, indexes.
    On PostgreSQL, run it as the database's owner: it also creates the stores a new database
    lacks (the application's role may not create tables; give it hers with `charter db grant`).
    """
    chosen = _database(home, database)
    if chosen.is_postgres:
        from charter.cli._db_pg import pg_upgrade

        pg_upgrade(chosen)
        return
    folder = chosen.home
    if not folder.is_dir():
        fail(f"{folder} is not a Charter home (no such folder); pass --home DIR or set CHARTER_HOME")
    for name, schema in _stores():
        path = folder / name
        if not path.exists():
            say(f"{schema.store:<18} {path}: absent (created at version {schema.version} on first use)")
            continue
        try:
            with closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as connection:
                before, after = schema.upgrade(connection, path)
        except CharterError as error:
            fail(error)
        except sqlite3.DatabaseError as error:
            fail(f"{path}: the {schema.store} could not be upgraded, nothing was changed: {error}")
        if before == after:
            say(f"{schema.store:<18} {path}: at version {after}, nothing to do")
            continue
        steps = "; ".join(f"{s.version}: {s.summary}" for s in schema.pending(before))
        say(f"{schema.store:<18} {path}: version {before} -> {after} ({steps})", "green")


@app.command()
def grant(
    role: Annotated[str, typer.Argument(help="The PostgreSQL role the workers connect as (it must exist).")],
    database: DatabaseOption = None,
) -> None:
    """Give ROLE exactly what the application needs on every store of a PostgreSQL database:
    SELECT and INSERT only on the append-only tables (published contracts, promotions, binding
    records, the audit log), SELECT, INSERT, UPDATE, DELETE on the others. Run it as the owner,
    after `charter db upgrade`; running it again changes nothing."""
    chosen = _database(None, database)
    if not chosen.is_postgres:
        fail(
            f"{chosen.shown} is a SQLite folder: roles and grants are PostgreSQL's; give --database "
            "postgresql://OWNER@HOST/NAME (or set CHARTER_DATABASE_URL)"
        )
    from charter.cli._db_pg import pg_grant

    pg_grant(chosen, role)


# -- `charter db copy` (issue 19, H1a): a SQLite deployment into PostgreSQL ---------------------------


@app.command()
def copy(
    source: Annotated[str, typer.Option("--from", help="The SQLite deployment: sqlite:FOLDER (its Charter home).")],
    target: Annotated[str, typer.Option("--to", help="An empty PostgreSQL database: postgresql://USER@HOST/NAME.")],
) -> None:
    """Copy a SQLite deployment's audit log and registry into an empty PostgreSQL database.

    Receipts are copied as stored (bytes untouched), so `charter audit verify` on the copy finds
    the same head; the indexes are rebuilt from them. Keys stay in FOLDER/keys (not in any
    database): run the workers with that home. Stop the deployment's processes first."""
    from charter.audit._copy import copy_deployment
    from charter.db import Database

    try:
        origin = Database.parse(source)
        if origin.is_postgres:
            fail(f"--from {origin.shown}: give the SQLite deployment as sqlite:FOLDER")
        destination = Database.parse(target, home=origin.home)
        report = copy_deployment(origin.home, destination)
    except CharterError as error:
        fail(error)
    except Exception as error:  # psycopg's errors (imported lazily): the server refused or is down
        if type(error).__module__.split(".")[0] not in ("psycopg", "psycopg_pool"):
            raise
        fail(f"{Database.parse(target).shown}: the copy failed, nothing was committed: {error}")
    head = f"receipt {report.head[0]}, link {report.head[1]}" if report.head else "none"
    say(
        f"audit log: {report.receipts} receipts, {report.keys} keys, {report.backend_errors} withheld error texts "
        f"copied into {destination.shown}; head {head}",
        "green",
    )
    for table, count in report.registry.items():
        say(f"registry: {count} rows of {table} copied")
    for note in report.notes:
        say(note)
