"""The interface between the sandbox host and the gate: one call in, one decision out."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from charter.principal import Principal

__all__ = ["CallRequest", "Denied", "Gate", "OperationFailed"]


class CallRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One proxy call of a program, after the host's strict decoding."""

    run_id: str
    sequence: int  # 1 for the run's first call, counting every call the program attempted
    operation: str  # an operation of the pinned contract (unknown names never get here)
    arguments: dict[str, Any]  # JSON values as the program sent them
    principal: Principal
    deadline: float  # time.monotonic() by which the run's wall-time limit ends


class Denied(Exception):
    """The gate refused the call; the backend was not touched. The program sees ContractViolation."""

    def __init__(self, code: str, message: str, *, boundary: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.boundary = boundary


class OperationFailed(Exception):
    """The backend failed to perform an allowed call. The program sees OperationError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Gate(Protocol):
    """Decides every call before the backend is touched.

    `call` returns the operation's result (JSON-encodable; Decimal and datetime allowed)
    or raises Denied / OperationFailed. Any other exception is treated by the host as a
    denial (GATE_ERROR): the gate fails closed even when it is broken.

    `blocking` says whether `call` may wait on I/O. The host runs blocking calls on a
    worker thread so the run's wall-time limit holds even if a backend hangs.
    """

    blocking: bool

    def call(self, request: CallRequest) -> Any: ...
