"""Exception text withheld from programs, callers and signed receipts.

A backend's exception may hold anything (a connection string, a password, a customer's
data), and so may the text of the gate's own failures. The program and the caller get
the operation, a code and a generic message; the receipt gets the exception's type and
the sha256 of its text; the text itself goes to the audit database's redactable
`backend_errors` table, which only an operator (or a principal with audit:read) reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from charter.audit import BackendError, RunRecorder
from charter.backends import BackendFailure
from charter.backends._base import error_text as safe_text
from charter.backends._base import error_type as qualified_type

__all__ = ["Withheld", "qualified_type", "safe_text", "withhold"]


@dataclass(frozen=True, slots=True)
class Withheld:
    error_type: str
    sha256: str  # of the whole text
    text: str

    def keep(self, recorder: RunRecorder, call: int, operation: str) -> None:
        recorder.backend_error(
            BackendError(
                run_id=recorder.run_id,
                call=call,
                operation=operation,
                error_type=self.error_type,
                message_sha256=self.sha256,
                message=self.text,
            )
        )


def withhold(error: BaseException) -> Withheld | None:
    """What of `error` must not be shown: its own text, or a BackendFailure's `detail`
    (the part of its message a backend took from elsewhere). None: nothing to withhold."""
    if isinstance(error, BackendFailure):
        if error.detail is None:
            return None
        error_type, text = error.detail_type or "detail", error.detail
    else:
        error_type, text = qualified_type(error), safe_text(error)
    return Withheld(error_type, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), text)
