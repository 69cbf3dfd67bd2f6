"""The one SQL spelling the readers of the audit log cannot share between SQLite and PostgreSQL.

Everything else the readers beside the log run (quota totals, the approvals and runs indexes,
the overview's counts) is written once and runs on both engines (charter.db). Finding the
receipts whose signed body holds some bytes (an approval id, read without decoding every
receipt) is not: SQLite has `instr(blob, blob)`, PostgreSQL `position(bytea IN bytea)`, and
neither has the other's; LIKE does not serve, since SQLite's LIKE does not match a BLOB.
"""

from __future__ import annotations

import sqlite3

from charter.db import Connection

__all__ = ["body_holds", "naming"]


def body_holds(connection: Connection, column: str = "body") -> str:
    """An SQL condition, true when the BLOB/BYTEA `column` holds the bytes of the one `?`
    parameter it takes (pass bytes). `column` is a column name of the caller's, never input."""
    if isinstance(connection, sqlite3.Connection):
        return f"instr({column}, ?) > 0"
    return f"position(? IN {column}) > 0"


def naming(approval_id: str, *, whole: bool = True) -> bytes:
    """What a receipt body naming `approval_id` holds: bodies are compact JSON (msgspec), so the
    field reads exactly `"approval_id":"<id>"`. Not `whole`: the id's start (a prefix search).
    A body found so is decoded and its field compared before anything relies on it."""
    return f'"approval_id":"{approval_id}{chr(34) if whole else ""}'.encode()
