"""A small order system on SQLite, the backend of contracts/orders.yaml.

Functions take keyword arguments named like the contract's params and return plain
records (Decimal money, aware datetimes). Writes take Charter's CallContext as `charter`
and check its precondition inside their transaction, so an order that changed after the
gate read it is not written. The backend keeps its own integrity rules
(it will not cancel a dispatched order either): Charter's gate is not the only line.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from charter.backends import CallContext
from examples._sqlite import Conflict, NotFound, check_precondition, connect, database_path

__all__ = [
    "cancel_order",
    "confirm_order",
    "get_order",
    "list_orders",
    "refund_order",
    "seed",
    "verify_refund",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    customer TEXT NOT NULL,
    items TEXT NOT NULL,
    total TEXT NOT NULL,
    refunded TEXT NOT NULL,
    placed_at TEXT NOT NULL,
    note TEXT,
    status TEXT NOT NULL
);
"""

# (id, customer, status, [(sku, quantity, unit price)], refunded)
_SEED: list[tuple[int, str, str, list[tuple[str, int, str]], str]] = [
    (101, "ada@example.com", "pending", [("KB-101", 1, "89.00")], "0.00"),
    (102, "grace@example.com", "confirmed", [("MS-220", 2, "24.50")], "0.00"),
    (103, "alan@example.com", "picking", [("HD-900", 1, "199.99")], "0.00"),
    (104, "edsger@example.com", "packed", [("CB-010", 3, "9.90")], "0.00"),
    (
        123,
        "barbara@example.com",
        "dispatched",
        [("LP-14", 1, "1299.00"), ("BG-2", 1, "49.00")],
        "0.00",
    ),
    (125, "donald@example.com", "delivered", [("BK-TAOCP", 4, "79.99")], "20.00"),
    (130, "margaret@example.com", "cancelled", [("CH-77", 2, "149.00")], "0.00"),
]


def _db() -> sqlite3.Connection:
    connection = connect(database_path("CHARTER_ORDERS_DB", "orders.db"))
    connection.executescript(_SCHEMA)
    return connection


def seed(path: Path | None = None) -> Path:
    """(Re)create the example orders. Returns the database path."""
    target = path or database_path("CHARTER_ORDERS_DB", "orders.db")
    with connect(target) as db:
        db.executescript(_SCHEMA + "DELETE FROM orders;")
        for order_id, customer, status, items, refunded in _SEED:
            total = sum((Decimal(price) * qty for _, qty, price in items), Decimal("0.00"))
            db.execute(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    order_id,
                    customer,
                    json.dumps([{"sku": s, "quantity": q, "unit_price": p} for s, q, p in items]),
                    str(total),
                    refunded,
                    datetime(2026, 11, 1, 9, order_id % 60, tzinfo=UTC).isoformat(),
                    None,
                    status,
                ),
            )
    return target


def _record(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "customer": row["customer"],
        "items": [
            {"sku": i["sku"], "quantity": i["quantity"], "unit_price": Decimal(i["unit_price"])}
            for i in json.loads(row["items"])
        ],
        "total": Decimal(row["total"]),
        "refunded": Decimal(row["refunded"]),
        "placed_at": datetime.fromisoformat(row["placed_at"]),
        "note": row["note"],
        "status": row["status"],
    }


def _fetch(db: sqlite3.Connection, order_id: int) -> sqlite3.Row:
    row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        raise NotFound(f"order {order_id} does not exist")
    return row  # type: ignore[no-any-return]


def get_order(*, id: int) -> dict[str, Any]:
    with _db() as db:
        return _record(_fetch(db, id))


def list_orders(*, status: str | None = None, customer: str | None = None) -> list[dict[str, Any]]:
    with _db() as db:
        rows = db.execute(
            "SELECT * FROM orders WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR customer = ?2) ORDER BY id",
            (status, customer),
        ).fetchall()
        return [_record(r) for r in rows]


def _transition(
    order_id: int, allowed: tuple[str, ...], to: str, charter: CallContext | None, note: str | None = None
) -> dict[str, Any]:
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        row = _fetch(db, order_id)
        check_precondition(charter, _record(row))
        if row["status"] not in allowed:
            raise Conflict(f"order {order_id} is {row['status']}; cannot move it to {to}")
        db.execute(
            "UPDATE orders SET status = ?, note = COALESCE(?, note) WHERE id = ?",
            (to, note, order_id),
        )
        return _record(_fetch(db, order_id))


def confirm_order(*, id: int, charter: CallContext | None = None) -> dict[str, Any]:
    return _transition(id, ("pending",), "confirmed", charter)


def cancel_order(*, id: int, reason: str, charter: CallContext | None = None) -> dict[str, Any]:
    return _transition(id, ("pending", "confirmed"), "cancelled", charter, note=f"cancelled: {reason}")


def verify_refund(*, id: int) -> dict[str, Any]:
    order = get_order(id=id)
    refundable = order["total"] - order["refunded"]
    eligible = order["status"] not in ("pending", "cancelled") and refundable > 0
    explanation = (
        f"{refundable} of {order['total']} remains refundable"
        if eligible
        else f"order {id} is {order['status']} with {refundable} refundable"
    )
    return {
        "order_id": id,
        "eligible": eligible,
        "refundable": refundable,
        "explanation": explanation,
    }


def refund_order(*, id: int, amount: Decimal, reason: str, charter: CallContext | None = None) -> dict[str, Any]:
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        row = _fetch(db, id)
        check_precondition(charter, _record(row))
        refunded = Decimal(row["refunded"]) + Decimal(amount)
        if refunded > Decimal(row["total"]):
            raise Conflict(f"refunding {amount} would exceed the total of order {id}")
        db.execute("UPDATE orders SET refunded = ? WHERE id = ?", (str(refunded), id))
        return _record(_fetch(db, id))
