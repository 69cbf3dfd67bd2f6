"""A backend module the test contracts bind to; it is resolved, never called, at check time."""

from typing import Any


def get_order(*, id: int) -> dict[str, Any]:
    return {"id": id, "total": "1.00", "note": None, "status": "pending"}


def cancel_order(*, id: int, reason: str) -> dict[str, Any]:
    return {"id": id, "total": "1.00", "note": reason, "status": "cancelled"}
