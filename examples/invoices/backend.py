"""A small accounts-payable ledger on SQLite, the backend of contracts/invoices.yaml."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from charter.backends import CallContext
from examples._sqlite import Conflict, NotFound, check_precondition, connect, database_path

__all__ = [
    "approve_invoice",
    "create_invoice",
    "get_invoice",
    "list_invoices",
    "pay_invoice",
    "reject_invoice",
    "seed",
    "submit_invoice",
    "void_invoice",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invoices (
    number TEXT PRIMARY KEY,
    vendor TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    due TEXT NOT NULL,
    submitted_by TEXT,
    approved_by TEXT,
    state TEXT NOT NULL
);
"""

_SEED = [
    ("INV-1001", "Acme Tools", "1200.00", "eur", "draft", None),
    ("INV-1002", "Globex", "86000.00", "usd", "submitted", "sam"),
    ("INV-1003", "Initech", "450.00", "gbp", "approved", "sam"),
    ("INV-1004", "Umbrella", "99.00", "eur", "paid", "kim"),
]


def _path() -> Path:
    return database_path("CHARTER_INVOICES_DB", "invoices.db")


def _db() -> sqlite3.Connection:
    connection = connect(_path())
    connection.executescript(_SCHEMA)
    return connection


def seed(path: Path | None = None) -> Path:
    target = path or _path()
    with connect(target) as db:
        db.executescript(_SCHEMA + "DELETE FROM invoices;")
        for number, vendor, amount, currency, state, submitter in _SEED:
            due = datetime(2026, 12, 31, tzinfo=UTC).isoformat()
            db.execute(
                "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                (number, vendor, amount, currency, due, submitter, state),
            )
    return target


def _record(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "number": row["number"],
        "vendor": row["vendor"],
        "amount": Decimal(row["amount"]),
        "currency": row["currency"],
        "due": datetime.fromisoformat(row["due"]),
        "submitted_by": row["submitted_by"],
        "approved_by": row["approved_by"],
        "state": row["state"],
    }


def _fetch(db: sqlite3.Connection, number: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM invoices WHERE number = ?", (number,)).fetchone()
    if row is None:
        raise NotFound(f"invoice {number} does not exist")
    return row  # type: ignore[no-any-return]


def get_invoice(*, number: str) -> dict[str, Any]:
    with _db() as db:
        return _record(_fetch(db, number))


def list_invoices(*, state: str | None = None, vendor: str | None = None) -> list[dict[str, Any]]:
    with _db() as db:
        rows = db.execute(
            "SELECT * FROM invoices WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR vendor = ?2) ORDER BY number",
            (state, vendor),
        ).fetchall()
        return [_record(r) for r in rows]


def create_invoice(*, vendor: str, amount: Decimal, currency: str, due: datetime) -> dict[str, Any]:
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        count = db.execute("SELECT COUNT(*) FROM invoices").fetchone()[0]
        number = f"INV-{2001 + count}"
        db.execute(
            "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, NULL, NULL, 'draft')",
            (number, vendor, str(amount), currency, _aware(due).isoformat()),
        )
        return _record(_fetch(db, number))


def _who(charter: CallContext | None) -> str | None:
    return charter.principal.id if charter is not None else None


def _transition(
    number: str, allowed: tuple[str, ...], to: str, charter: CallContext | None, **columns: str | None
) -> dict[str, Any]:
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        row = _fetch(db, number)
        check_precondition(charter, _record(row))
        if row["state"] not in allowed:
            raise Conflict(f"invoice {number} is {row['state']}; cannot move it to {to}")
        db.execute("UPDATE invoices SET state = ? WHERE number = ?", (to, number))
        for column, value in columns.items():
            if value is None:
                continue
            db.execute(f"UPDATE invoices SET {column} = ? WHERE number = ?", (value, number))
        return _record(_fetch(db, number))


def submit_invoice(*, number: str, charter: CallContext | None = None) -> dict[str, Any]:
    return _transition(number, ("draft",), "submitted", charter, submitted_by=_who(charter))


def approve_invoice(*, number: str, charter: CallContext | None = None) -> dict[str, Any]:
    return _transition(number, ("submitted",), "approved", charter, approved_by=_who(charter))


def reject_invoice(*, number: str, reason: str, charter: CallContext | None = None) -> dict[str, Any]:
    return _transition(number, ("submitted",), "rejected", charter)


def pay_invoice(*, number: str, charter: CallContext | None = None) -> dict[str, Any]:
    return _transition(number, ("approved",), "paid", charter)


def void_invoice(*, number: str, reason: str, charter: CallContext | None = None) -> dict[str, Any]:
    return _transition(number, ("draft", "submitted", "rejected"), "void", charter)


def _aware(moment: datetime) -> datetime:
    """A datetime with its offset: a program's naive datetime is UTC (the run's clock is), and
    what this backend returns must say so (the gate refuses a result datetime without one)."""
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment
