"""API tokens in PostgreSQL: the table `api_tokens`, for deployments whose workers share one
database (the YAML file stays the default of a SQLite deployment: charter.server._tokens).

    api_tokens (name PK, principal, scopes JSON, attributes JSON, sha256 UNIQUE, created)

Every lookup reads the table (one indexed query): a token revoked by any process, `charter
token revoke --database URL` included, is refused by every worker at its next request. Only
the sha256 of a token is stored, as in the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from charter.db import Database, PgConnection, PgSchema, PgStep, write_transaction
from charter.db._stores import is_integrity_error, reachable
from charter.errors import UsageError

__all__ = ["TOKENS_PG_SCHEMA", "TokenTable"]

TOKENS_PG_SCHEMA = PgSchema(
    "API token store",
    (
        PgStep(
            1,
            "api_tokens: each token's name, principal, scopes and attributes (JSON) and sha256, never the token",
            (
                """CREATE TABLE api_tokens (
                    name       TEXT PRIMARY KEY,
                    principal  TEXT NOT NULL,
                    scopes     TEXT NOT NULL,
                    attributes TEXT NOT NULL,
                    sha256     TEXT NOT NULL UNIQUE,
                    created    TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
                )""",
            ),
        ),
    ),
    mutable=("api_tokens",),
)

_COLUMNS = "name, principal, scopes, attributes, sha256"
_ORDER = "ORDER BY created, name"  # the order tokens were added in, as the file keeps them
# Adds take this transaction-level advisory lock: the check that no two principals look alike
# reads every principal, so two adds must not interleave (READ COMMITTED would let both pass).
_ADD_LOCK = "charter api_tokens add"


class TokenTable:
    """The rows of `api_tokens` as the dictionaries `TokenEntry` validates. Raises
    SchemaMismatch on open for a table of another version, StoreUnavailable when PostgreSQL
    cannot be reached."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.where = f"the api_tokens table of {database.shown}"
        with self._connect() as connection:
            TOKENS_PG_SCHEMA.open(connection, database.shown)

    @contextmanager
    def _connect(self) -> Iterator[PgConnection]:
        with reachable("API token store", self.database), self.database.pg_connection() as connection:
            yield connection

    def rows(self, where: str = "", parameters: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The tokens (all, or those matching `where`, a condition on the columns), oldest first."""
        with self._connect() as connection:
            found = connection.execute(f"SELECT {_COLUMNS} FROM api_tokens {where} {_ORDER}", parameters).fetchall()
        return [_entry(row) for row in found]

    @contextmanager
    def adding(self) -> Iterator[tuple[PgConnection, list[dict[str, Any]]]]:
        """A transaction holding the add lock, with every token as it is now: the caller checks
        the new token against them and `insert`s it (UsageError for a name already taken)."""
        with self._connect() as connection, write_transaction(connection):
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (_ADD_LOCK,))
            found = connection.execute(f"SELECT {_COLUMNS} FROM api_tokens {_ORDER}").fetchall()
            yield connection, [_entry(row) for row in found]

    def insert(self, connection: PgConnection, entry: dict[str, Any]) -> None:
        try:
            connection.execute(
                f"INSERT INTO api_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (
                    entry["name"],
                    entry["principal"],
                    json.dumps(entry["scopes"]),
                    json.dumps(entry["attributes"]),
                    entry["sha256"],
                ),
            )
        except Exception as error:
            if is_integrity_error(error):
                raise UsageError(f"{self.where}: a token named {entry['name']!r} exists; revoke it first") from None
            raise

    def delete(self, name: str) -> bool:
        """Delete the token named `name`; False when there is none."""
        with self._connect() as connection:
            return bool(connection.execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount)


def _entry(row: tuple[Any, ...]) -> dict[str, Any]:
    name, principal, scopes, attributes, sha256 = row
    try:
        return {
            "name": name,
            "principal": principal,
            "scopes": json.loads(scopes),
            "attributes": json.loads(attributes),
            "sha256": sha256,
        }
    except (ValueError, ValidationError) as error:
        raise UsageError(f"api_tokens row {name!r}: scopes or attributes are not JSON ({error})") from None
