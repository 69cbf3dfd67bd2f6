"""What every backend shares: the call context, the precondition, and the failures a
backend reports in its own words."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from charter.principal import Principal

__all__ = [
    "Backend",
    "BackendFailure",
    "BackendNotFound",
    "BackendUnavailable",
    "CallContext",
    "Precondition",
    "PreconditionFailed",
    "fingerprint",
]

_fingerprint_encoder = msgspec.json.Encoder(decimal_format="string", order="sorted")


def fingerprint(record: Any) -> str:
    """A hash of an entity as a read binding returns it: equal records, equal fingerprints."""
    return hashlib.sha256(_fingerprint_encoder.encode(record)).hexdigest()


def error_type(error: BaseException) -> str:
    """An exception's type as receipts name it: `RuntimeError`, `httpx.ConnectError`."""
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def error_text(error: BaseException) -> str:
    """`str(error)`, or `repr`, or a placeholder when the exception's own formatting fails:
    withholding a backend's text must never be broken by that text."""
    for show in (str, repr):
        try:
            text = show(error)
        except BaseException:  # backend code: anything it raises is the backend's failure
            continue
        if isinstance(text, str):
            return text
    return f"<{error_type(error)}: its text could not be formatted>"


class PreconditionFailed(Exception):
    """The entity changed after the gate read it; the binding wrote nothing."""


class Precondition(msgspec.Struct, frozen=True, kw_only=True):
    """The entity as the gate observed it when it allowed the write."""

    entity: str
    key: Any
    field: str | None  # the lifecycle field, when the write is a transition
    state: str | None
    fingerprint: str

    def check(self, current: Mapping[str, Any]) -> None:
        """Raise PreconditionFailed unless `current` is the entity the gate saw."""
        if fingerprint(current) == self.fingerprint:
            return
        now = current.get(self.field) if self.field else None
        change = f" (it was {self.state}, it is now {now})" if self.field and now != self.state else ""
        raise PreconditionFailed(
            f"{self.entity} {self.key} changed after the gate checked it{change}; nothing was written"
        )


class CallContext(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    call: int
    principal: Principal
    idempotency_key: str | None  # writes only: the same key means the same write
    precondition: Precondition | None
    deadline: float  # time.monotonic() by which the run ends; don't wait past it


class Backend(Protocol):
    blocking: bool  # may `invoke` wait on I/O? (the host then runs it under a watchdog)

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any: ...


class BackendFailure(Exception):
    """A call the backend could not perform, with a stable code the program sees
    (OperationError.code). `in_doubt`: the request reached the backend and no answer came
    back, so the call may have taken effect; its receipt then says `unknown`, not `failed`.

    `message` is shown to the program and the caller: only the backend's own words. Text
    it did not write (an exception's, a 5xx body) goes in `detail`, typed `detail_type`:
    the gate withholds it from the program, the caller and the receipt (which keeps its
    sha256) and keeps it in the audit database's redactable backend_errors table."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        in_doubt: bool = False,
        detail: str | None = None,
        detail_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.in_doubt = in_doubt
        self.detail = detail
        self.detail_type = detail_type


class BackendNotFound(BackendFailure, LookupError):
    """The entity asked for does not exist (the gate's state read then denies NOT_FOUND)."""


class BackendUnavailable(BackendFailure):
    """The server cannot perform the operation at all: its binding module is missing, fails
    to import, or changed since the contract version was published. Nothing was sent, so
    the call is not in doubt. A misconfigured server, never the caller's fault: HTTP answers
    503 `urn:charter:problem:backend-unavailable`."""

    CODE = "BACKEND_UNAVAILABLE"

    def __init__(self, message: str, *, detail: str | None = None, detail_type: str | None = None) -> None:
        super().__init__(self.CODE, message, detail=detail, detail_type=detail_type)
