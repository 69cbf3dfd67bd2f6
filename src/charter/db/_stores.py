"""What every store does the same way on either engine: open its schema, and say so when
PostgreSQL cannot be reached.

    with reachable("registry", database):        # psycopg OperationalError / PoolTimeout -> StoreUnavailable
        with database.connect("charter.db") as connection:
            open_schema(connection, database, "charter.db", REGISTRY_SCHEMA, REGISTRY_PG_SCHEMA)

A store opens through `open_schema`, so a worker refuses a schema newer than it knows, naming
both versions (`SchemaMismatch`), on SQLite (`Schema.open`) and PostgreSQL (`PgSchema.open`) alike.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

from charter.errors import StoreUnavailable, UsageError

if TYPE_CHECKING:
    from charter.db._postgres import PgConnection
    from charter.db._schema import PgSchema
    from charter.db._url import Connection, Database
    from charter.migrations import Schema

__all__ = ["is_integrity_error", "open_schema", "reachable"]

RETRY_AFTER_S = 2  # what a store that cannot reach its database tells callers to wait


def open_schema(connection: Connection, database: Database, filename: str, schema: Schema, pg: PgSchema) -> None:
    """Check (and on first use create) a store's tables on `connection`: `schema` in the SQLite
    file `database.home / filename`, `pg` in a PostgreSQL database. Raises SchemaMismatch, and
    UsageError for a PostgreSQL role that may not create or read the store."""
    if database.is_postgres:
        import psycopg

        try:
            pg.open(cast("PgConnection", connection), database.shown)
        except psycopg.errors.InsufficientPrivilege as error:
            # The application's role found no store and may not create one (nor, ungranted, read it).
            reason = str(error).strip().splitlines()[0]
            raise UsageError(
                f"{database.shown}: the {pg.store} cannot be opened as this role ({reason}): create "
                "the stores as the database's owner with `charter db upgrade --database URL`, then give this "
                "role its privileges with `charter db grant ROLE --database URL`"
            ) from None
    else:
        schema.open(cast(sqlite3.Connection, connection), database.home / filename)


@contextmanager
def reachable(store: str, database: Database) -> Iterator[None]:
    """Turn "PostgreSQL cannot be reached" (psycopg.OperationalError: the server restarting, a
    dropped connection; psycopg_pool.PoolTimeout: no connection within the pool's timeout) into
    StoreUnavailable naming the store and the database (its password masked). Every other error
    passes as it is; SQLite's are never turned (a busy file waits in its busy timeout)."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as error:
        if database.is_postgres and _outage(error):
            reason, lasting = _why(database, error)
            if lasting:  # a wrong password, a missing database or role, a malformed URL: retrying won't help
                raise UsageError(
                    f"the {store} cannot use the database {database.shown}: {reason}; fix the URL (--database or "
                    "CHARTER_DATABASE_URL) or the server's roles and databases, then start again"
                ) from None
            raise StoreUnavailable(
                f"the {store} cannot reach the database {database.shown} now ({reason}); nothing was "
                f"changed, retry in {RETRY_AFTER_S} s",
                retry_after=RETRY_AFTER_S,
            ) from error
        raise


# What the server (or libpq) says when the fault is the configuration, not an outage: FATAL errors
# at connection time are, except the server's own state while it stops or starts.
_TRANSIENT = ("starting up", "shutting down", "in recovery mode", "too many clients", "Connection refused", "timeout")


def _why(database: Database, error: Exception) -> tuple[str, bool]:
    """Why the store could not reach its database, password masked, and whether it lasts.

    A pool timeout says only that no connection came; the pool logged the real cause. So one
    direct connection is tried (2 s) to learn it: refused with a FATAL error (authentication, no
    such database or role) or a malformed URL lasts; refused for the server's state, or not
    refused at all (the pool was exhausted), does not."""
    import psycopg
    from psycopg_pool import PoolTimeout

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, PoolTimeout):
        try:
            psycopg.connect(database.url, connect_timeout=2).close()
        except psycopg.Error as probe:
            text = " ".join(str(probe).split())
        else:
            return "every connection of this process's pool is in use (CHARTER_DATABASE_POOL)", False
    reason = database.masked(text)
    lasting = ("FATAL" in text or "invalid" in text) and not any(word in text for word in _TRANSIENT)
    return reason, lasting


def _outage(error: Exception) -> bool:
    import psycopg  # loaded already: the error came from it, or psycopg is not in play
    from psycopg_pool import PoolTimeout

    return isinstance(error, psycopg.OperationalError | PoolTimeout)


def is_integrity_error(error: BaseException) -> bool:
    """A unique key or constraint refused the write, on either engine (sqlite3.IntegrityError,
    psycopg.IntegrityError): another writer got there first."""
    if isinstance(error, sqlite3.IntegrityError):
        return True
    module = type(error).__module__
    if not module.startswith("psycopg"):
        return False
    import psycopg

    return isinstance(error, psycopg.IntegrityError)
