"""The backend of tests/data/transfers.yaml: fixed accounts; what the writes did is appended to
a JSON-lines file under $CHARTER_HOME, since the gate loads this module from its file (its own
module object) and `charter exec` runs in another process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _journal() -> Path:
    return Path(os.environ["CHARTER_HOME"]) / "transfers.jsonl"


def done() -> list[dict[str, Any]]:
    """Every write made, in order."""
    path = _journal()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def reset() -> None:
    _journal().unlink(missing_ok=True)


def _did(entry: dict[str, Any]) -> None:
    path = _journal()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def get_account(*, id: str) -> dict[str, Any]:
    return {"id": id, "balance": "9000.00" if id == "A9" else "1000.00"}


def audit_account(*, id: str) -> dict[str, Any]:
    return {"id": id, "balance": "1000.00"}


def get_standing_orders(*, account: str) -> list[dict[str, Any]]:
    return [{"id": "SO-1", "account": account, "recipient": "GB01"}]


def get_standing_order(*, id: str) -> dict[str, Any]:
    return {"id": id, "account": "A1", "recipient": "GB01"}


def send_payment(*, account: str, amount: Any, recipient: str) -> dict[str, Any]:
    _did({"account": account, "amount": str(amount), "recipient": recipient})
    return {"id": account, "balance": "900.00"}


def split_payment(*, account: str, amount: Any, parts: int) -> dict[str, Any]:
    _did({"account": account, "amount": str(amount), "parts": parts})
    return {"id": account, "balance": "900.00"}


def close_account(*, id: str) -> dict[str, Any]:
    _did({"closed": id})
    return {"id": id, "balance": "0.00"}
