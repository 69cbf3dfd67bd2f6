"""PostgreSQL through psycopg 3: one connection pool per database URL and process, and
`PgConnection`, which takes the SQL Charter's stores write for `sqlite3`.

Why an adapter rather than two sets of statements: most of the stores' SQL (the runs, denials,
quota and approvals indexes, the registry's lookups) is standard SQL that both engines run as
it is; only the placeholder style differs (`?` for sqlite3, `%s` for psycopg). `PgConnection`
rewrites `?` to `%s` (and doubles a literal `%`), and `BEGIN IMMEDIATE` (SQLite's "take the
write lock now") to `BEGIN`. A statement that differs by engine (DDL: BYTEA for BLOB, BIGSERIAL,
triggers in PL/pgSQL) is written per engine in that store's schema steps.

psycopg is imported when a pool is first opened, not with this module: every `charter`
command imports the stores, and most of them never touch PostgreSQL.

Pools are per process: a pool opened before a fork is not used by the child (`pg_pool` keys its
cache by pid), since two processes sharing one libpq socket corrupt both sessions.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg is imported on first use: ~120 ms no SQLite deployment should pay at start
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["PgConnection", "close_pools", "pg_pool", "pg_sql"]

POOL_ENV = "CHARTER_DATABASE_POOL"
CONNECT_TIMEOUT_S = 5.0  # a pool waits this long for a connection before PoolTimeout

_pools: dict[tuple[int, str], ConnectionPool[psycopg.Connection[Any]]] = {}
_pools_lock = threading.Lock()


def pg_pool(url: str) -> ConnectionPool[psycopg.Connection[Any]]:
    """This process's pool for `url`, opened on first use (autocommit connections)."""
    from psycopg_pool import ConnectionPool

    key = (os.getpid(), url)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            _masking.add(url)
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size(),
                kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT_S)},
                timeout=CONNECT_TIMEOUT_S,
                check=ConnectionPool.check_connection,  # a connection the server dropped is replaced, not handed out
                open=True,
                name=f"charter-{os.getpid()}",
            )
            _pools[key] = pool
        return pool


def pool_size() -> int:
    """Connections per process and database: $CHARTER_DATABASE_POOL, default 16, at least 2 (a
    worker holds one for its quota locks while it reads). UsageError for anything else."""
    from charter.errors import UsageError

    text = os.environ.get(POOL_ENV, "16").strip()
    if not text.isdigit() or not 2 <= int(text) <= 1000:
        raise UsageError(f"{POOL_ENV}={text!r}: give the connections per worker process, 2 to 1000 (default 16)")
    return int(text)


class _MaskPasswords(logging.Filter):
    """psycopg_pool logs each failed connection attempt with libpq's message, which quotes a
    connection string it could not parse, password included: masked before any handler sees it."""

    def __init__(self) -> None:
        super().__init__()
        self._urls: set[str] = set()

    def add(self, url: str) -> None:
        self._urls.add(url)

    def filter(self, record: logging.LogRecord) -> bool:
        from charter.db._url import Database

        text = record.getMessage()
        for url in sorted(self._urls, key=len, reverse=True):  # a longer password before one inside it
            text = Database("postgresql", url, Path()).masked(text)
        record.msg, record.args = text, None
        return True


_masking = _MaskPasswords()
logging.getLogger("psycopg.pool").addFilter(_masking)


def close_pools() -> None:
    """Close every pool this process opened (tests, a worker shutting down)."""
    with _pools_lock:
        mine = [key for key in _pools if key[0] == os.getpid()]
        pools = [_pools.pop(key) for key in mine]
    for pool in pools:
        pool.close()


def pg_sql(sql: str) -> str:
    """`sql` written for sqlite3, as psycopg takes it: `?` -> `%s`, `%` -> `%%`,
    `BEGIN IMMEDIATE` -> `BEGIN`. The stores' SQL holds no `?` inside a string literal."""
    if sql.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection (autocommit) that runs sqlite3-style SQL: see the module.

    `execute` returns a psycopg cursor (fetchone, fetchall, rowcount, iteration). `raw` is the
    psycopg connection itself, for what has no sqlite3 spelling (COPY, LISTEN, transaction())."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if params:
            return self.raw.execute(pg_sql(sql), tuple(params))
        if sql.strip().upper() == "BEGIN IMMEDIATE":
            return self.raw.execute("BEGIN")
        return self.raw.execute(sql)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(pg_sql(sql), [tuple(row) for row in rows])

    @contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        """BEGIN ... COMMIT (ROLLBACK if the block raises)."""
        with self.raw.transaction():
            yield self

    def close(self) -> None:
        self.raw.close()
