"""What both example backends share: a SQLite file located by an environment variable,
and the check that ties a write to the state Charter's gate decided on."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from charter.backends import BackendFailure, BackendNotFound, CallContext


def database_path(env_var: str, default_name: str) -> Path:
    """The backend's database: $env_var if set, else .charter/examples/<default_name>."""
    configured = os.environ.get(env_var)
    if configured:
        return Path(configured)
    home = Path(os.environ.get("CHARTER_HOME", ".charter"))
    return home / "examples" / default_name


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    return connection


class NotFound(BackendNotFound):
    """No entity has that key. A BackendFailure: its message is the backend's own words, which
    the program may see (any other exception's text is withheld from it)."""

    def __init__(self, message: str) -> None:
        super().__init__("NOT_FOUND", message)


class Conflict(BackendFailure):
    """The backend refused a change because the entity is not in a state that allows it
    (OperationError code CONFLICT, as the HTTP binding reports a 409)."""

    def __init__(self, message: str) -> None:
        super().__init__("CONFLICT", message)


def check_precondition(charter: CallContext | None, current: Mapping[str, Any]) -> None:
    """Call inside the write's transaction: the entity must still be what the gate decided on."""
    if charter is not None and charter.precondition is not None:
        charter.precondition.check(current)
