"""Schema versions of Charter's SQLite stores, and the ordered steps that migrate them.

Each store (the registry, the audit log, the server's idempotency keys) declares one
`Schema`: its name and an ordered tuple of `Step`s. Step N takes a store from version
N-1 to N; the last step's number is the version this release writes. Adding a table or
a column later is one more entry:

    AUDIT_SCHEMA = Schema("audit log", (
        Step(1, "release 0.1.0: receipts, head, keys, append-only triggers", (...)),
        Step(2, "backend_errors: exception texts, redactable", ("CREATE TABLE backend_errors (...)",)),
    ))

The version lives in SQLite's own header field, `PRAGMA user_version`: it needs no table
of its own that a store could lack or a migration forget, a fresh file reads 0, and it
is written inside the same transaction as the step's DDL, so a store is never left
half-migrated with a version that claims otherwise. Release 0.1.0 wrote no version:
its stores read 0 and step 1 adopts them (every statement of step 1 is idempotent).

Opening a store (`Schema.open`):

- a new, empty file is created at the current version, all steps in one transaction;
- a store at the current version opens;
- a newer store is refused, naming both versions (a later release wrote it);
- an older store is refused with the command that upgrades it, `charter db upgrade`.

Upgrades are explicit, never done on open: a store is shared by several processes
(`charter serve`, `charter exec`, an auditor's `charter audit`), an older release still
running would not know a newer schema, and the operator should choose the moment (and
take a copy). `charter db upgrade` runs each store's missing steps in one transaction:
all of them or none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from charter.errors import SchemaMismatch

__all__ = ["Schema", "Step", "check_numbered", "read_version"]


@dataclass(frozen=True, slots=True)
class Step:
    """One migration: `sql` takes a store from version `version - 1` to `version`.

    `fill`, if given, runs after `sql` in the same transaction, on the same connection: it
    derives a new table's rows from what the store already holds (a backfill), with the
    code that keeps the table up to date afterwards, so there is one rule, not a SQL twin.
    On a new, empty store it finds nothing to fill."""

    version: int
    summary: str
    sql: tuple[str, ...]
    fill: Callable[[sqlite3.Connection], None] | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    """A store's schema: its name for messages and its ordered migration steps."""

    store: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        check_numbered(self.store, [step.version for step in self.steps])

    @property
    def version(self) -> int:
        """The version this release writes."""
        return self.steps[-1].version

    def open(self, connection: sqlite3.Connection, path: Path) -> None:
        """Check a connection's store before use; create it if the file is new.

        Raises SchemaMismatch for a store at another version. `connection` must be in
        autocommit mode (isolation_level=None)."""
        found = _user_version(connection)
        if found == self.version:
            return
        if found == 0 and not _has_tables(connection):
            connection.execute("BEGIN IMMEDIATE")  # another process may be creating it too
            try:
                found = _user_version(connection)
                if found == 0 and not _has_tables(connection):
                    self._apply(connection, 0)
                    found = self.version
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            if found == self.version:
                return
        raise self._mismatch(found, path)

    def upgrade(self, connection: sqlite3.Connection, path: Path) -> tuple[int, int]:
        """Migrate the store in place to this release's version, in one transaction.

        Returns (version before, version after); both equal when there was nothing to do.
        Raises SchemaMismatch for a store newer than this release or with a negative version."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            found = _user_version(connection)
            if found > self.version or found < 0:
                raise self._mismatch(found, path)
            self._apply(connection, found)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return found, self.version

    def pending(self, found: int) -> tuple[Step, ...]:
        """The steps a store at version `found` still needs."""
        return tuple(step for step in self.steps if step.version > found)

    def _apply(self, connection: sqlite3.Connection, found: int) -> None:
        if found == self.version:  # nothing to do, and nothing written
            return
        for step in self.pending(found):
            for statement in step.sql:
                connection.execute(statement)
            if step.fill is not None:
                step.fill(connection)
        # PRAGMA takes no parameters; the version is an int from this module's own steps.
        connection.execute(f"PRAGMA user_version = {int(self.version)}")

    def _mismatch(self, found: int, path: Path) -> SchemaMismatch:
        if found < 0:  # PRAGMA user_version is a signed 32-bit int; Charter never writes a negative one
            return SchemaMismatch(
                f"{path}: this {self.store} has schema version {found}, which is invalid (Charter's versions start "
                f"at 1; this release uses {self.version}): the file was not written by Charter or was damaged. "
                "Restore it from a copy; this release will not read, write or upgrade it.",
                found=found,
                expected=self.version,
            )
        if found > self.version:
            return SchemaMismatch(
                f"{path}: this {self.store} is at schema version {found}, newer than version {self.version}, "
                "the newest this release of Charter knows: a later release wrote it. Open it with that release "
                "or a newer one (`pip install --upgrade charter`); this one will not read or write it.",
                found=found,
                expected=self.version,
            )
        return SchemaMismatch(
            f"{path}: this {self.store} is at schema version {found}, older than version {self.version}, which "
            f"this release of Charter uses; run `charter db upgrade --home {path.parent}` to migrate it in "
            "place (stop other Charter processes using it first; keep a copy if you want to go back).",
            found=found,
            expected=self.version,
        )


def check_numbered(store: str, numbers: list[int]) -> None:
    """A schema's steps are numbered 1, 2, ... in order (SQLite's and PostgreSQL's alike);
    ValueError naming the store otherwise."""
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{store}: migration steps must be numbered 1, 2, ... in order, got {numbers}")


def read_version(path: Path) -> int | None:
    """The schema version of the store file at `path`, read without changing it; None if absent."""
    if not path.exists():
        return None
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _user_version(connection)
    finally:
        connection.close()


def _user_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def _has_tables(connection: sqlite3.Connection) -> bool:
    row = connection.execute("SELECT 1 FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 1").fetchone()
    return row is not None
