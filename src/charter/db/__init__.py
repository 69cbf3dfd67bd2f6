"""Where Charter's stores live: SQLite files in one folder (the default) or one PostgreSQL database.

    database = Database.from_env(home)            # CHARTER_DATABASE_URL, else sqlite:<home>
    database = Database.parse("postgresql://charter@db/charter")
    with database.pg_connection() as connection:  # PostgreSQL only: a pooled PgConnection
        connection.execute("SELECT version FROM charter_schema WHERE store = ?", ("audit log",))

Every store (registry, audit log and its indexes, idempotency keys, approvals, quota locks,
review-app sessions, API tokens) takes a `Database`; on SQLite each keeps its own file in
`database.home` as before, on PostgreSQL all share one database through one connection pool per
process. `PgConnection` takes the SQL the stores write for `sqlite3` (`?` placeholders), so a
statement both engines accept is written once. `PgSchema` versions a store's tables in
PostgreSQL as `charter.migrations.Schema` does in a SQLite file.
"""

from __future__ import annotations

from charter.db._postgres import PgConnection, close_pools, pg_pool
from charter.db._schema import PG_SCHEMA_TABLE, PgSchema, PgStep, pg_ddl, pg_versions
from charter.db._url import DATABASE_ENV, Connection, Cursor, Database, write_transaction

__all__ = [
    "DATABASE_ENV",
    "PG_SCHEMA_TABLE",
    "Connection",
    "Cursor",
    "Database",
    "PgConnection",
    "PgSchema",
    "PgStep",
    "close_pools",
    "pg_ddl",
    "pg_pool",
    "pg_versions",
    "write_transaction",
]
