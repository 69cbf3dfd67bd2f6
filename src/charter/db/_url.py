"""`Database`: a parsed database URL, `sqlite:<folder>` or `postgresql://...`."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from charter.db._sqlite import sqlite_connect
from charter.errors import UsageError

if TYPE_CHECKING:
    from charter.db._postgres import PgConnection

__all__ = ["DATABASE_ENV", "Connection", "Cursor", "Database", "write_transaction"]

DATABASE_ENV = "CHARTER_DATABASE_URL"


class Cursor(Protocol):
    """What both engines' cursors share: sqlite3.Cursor and psycopg.Cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What both engines' connections share for the stores' SQL: sqlite3.Connection (autocommit)
    and `PgConnection`. Placeholders are `?`; a write transaction is `write_transaction`."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...


@contextmanager
def write_transaction(connection: Connection) -> Iterator[Connection]:
    """BEGIN IMMEDIATE (SQLite: take the write lock now) or BEGIN (PostgreSQL) ... COMMIT;
    ROLLBACK if the block raises. PostgreSQL runs at READ COMMITTED: a store whose rule needs
    more (one claim per key) says so with a unique key, ON CONFLICT or SELECT ... FOR UPDATE."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


@dataclass(frozen=True, slots=True)
class Database:
    """Where the stores live.

    `kind` "sqlite": one file per store in the folder `home` (audit.db, registry.db, ...).
    `kind` "postgresql": every store in the database `url` names (a libpq URL; a password in it
    is never printed: `shown` masks it); `home` is still the folder of the files that are not
    database rows (keys, keyring, checkpoints, baked components)."""

    kind: Literal["sqlite", "postgresql"]
    url: str
    home: Path

    @classmethod
    def parse(cls, url: str, *, home: Path | None = None) -> Database:
        """`sqlite:PATH` (a folder; `sqlite:` alone: `home`), `postgresql://...` or `postgres://...`.

        Raises UsageError for any other scheme, naming the two accepted forms."""
        from charter._paths import charter_home

        text = url.strip()
        base = home if home is not None else charter_home()
        if text.startswith(("postgresql://", "postgres://")):
            return cls("postgresql", text, base)
        if text.startswith("sqlite:"):
            folder = text.removeprefix("sqlite:").removeprefix("//")
            return cls("sqlite", text, Path(folder).expanduser() if folder else base)
        raise UsageError(
            f"database URL {_masked(text)!r} is neither sqlite:FOLDER nor postgresql://USER@HOST/NAME; "
            f"give one of those with --database or {DATABASE_ENV}"
        )

    @classmethod
    def from_env(cls, home: Path | None = None, *, url: str | None = None) -> Database:
        """`url` if given, else $CHARTER_DATABASE_URL, else SQLite files in `home` (CHARTER_HOME)."""
        from charter._paths import charter_home

        chosen = url if url is not None else os.environ.get(DATABASE_ENV, "")
        if chosen.strip():
            return cls.parse(chosen, home=home)
        base = home if home is not None else charter_home()
        return cls("sqlite", f"sqlite:{base}", base)

    @property
    def is_postgres(self) -> bool:
        return self.kind == "postgresql"

    @property
    def shown(self) -> str:
        """The URL with any password replaced by ***, for messages and logs."""
        return _masked(self.url)

    def masked(self, text: str) -> str:
        """`text` (a driver's error, a log line) with this URL's password replaced by ***: libpq
        quotes the part of a connection string it could not parse, password included."""
        found = _PASSWORD.search(self.url)
        secret = found.group(0)[len(found.group(1)) : -1] if found else ""
        text = text.replace(self.url, self.shown)
        return text.replace(secret, "***") if len(secret) >= 1 else text

    @contextmanager
    def connect(self, filename: str) -> Iterator[Connection]:
        """A connection to one store, either engine, for SQL written once in sqlite3's style (`?`).

        SQLite: a new connection to `home/filename` (autocommit, WAL, synchronous=FULL, a 30 s busy
        timeout), closed on exit. PostgreSQL: a pooled `PgConnection` (`filename` unused), returned
        to the pool on exit. A write transaction on either is `with write_transaction(connection):`."""
        if self.is_postgres:
            with self.pg_connection() as connection:
                yield connection
            return
        self.home.mkdir(parents=True, exist_ok=True)
        lite = sqlite_connect(self.home / filename)
        try:
            yield lite
        finally:
            lite.close()

    @contextmanager
    def pg_connection(self) -> Iterator[PgConnection]:
        """A connection from this process's pool for the database (autocommit; a transaction is
        `with connection.transaction():`). UsageError on a SQLite database."""
        if not self.is_postgres:
            raise UsageError(f"{self.shown} is a SQLite folder, not a PostgreSQL database")
        from charter.db._postgres import PgConnection, pg_pool

        with pg_pool(self.url).connection() as raw:
            yield PgConnection(raw)


def _masked(url: str) -> str:
    return _PASSWORD.sub(r"\1***@", url)
