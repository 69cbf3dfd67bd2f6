"""The interface between the sandbox host and the gate: one call in, one decision out."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from charter.principal import Principal

__all__ = [
    "ApprovalPending",
    "CallRequest",
    "Denied",
    "Encoded",
    "Gate",
    "Malformed",
    "OperationFailed",
    "RunHalted",
    "encode_reply",
]


class Malformed(msgspec.Struct, frozen=True, kw_only=True):
    """Why the host's strict decoding refused a call. The gate still records the refusal."""

    code: str  # UNKNOWN_OPERATION, MALFORMED_CALL or ARGUMENTS_TOO_LARGE
    message: str
    raw_sha256: str  # of the argument text as the program sent it


class CallRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One proxy call of a program, after the host's strict decoding."""

    run_id: str
    sequence: int  # 1 for the run's first call, counting every call the program attempted
    operation: str  # as the program named it; an operation of the contract unless `malformed`
    arguments: dict[str, Any]  # JSON values as the program sent them ({} when malformed)
    principal: Principal
    deadline: float  # time.monotonic() by which the run's wall-time limit ends
    malformed: Malformed | None = None
    # The program line of the calling frame, as the guest reported it (untrusted; None: not
    # reported, e.g. a replay of a log written before guests reported it).
    line: int | None = None


class Encoded(msgspec.Struct, frozen=True):
    """A reply already encoded as the JSON the program receives (recorded, or replayed)."""

    text: str


_encoder = msgspec.json.Encoder(decimal_format="string")


def encode_reply(value: Any) -> str:
    """A call's result as the JSON the program receives: money as strings, datetimes ISO."""
    return _encoder.encode(value).decode("utf-8")


class Denied(Exception):
    """The gate refused the call; the backend was not touched. The program sees ContractViolation."""

    def __init__(self, code: str, message: str, *, boundary: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.boundary = boundary


class RunHalted(Denied):
    """A denial that also ends the run (the per-run cap on denials was reached)."""


class ApprovalPending(Exception):
    """The call needs a human's approval: the gate recorded an ApprovalRequested receipt and
    nothing executed. Ends the run (the host seals it `paused`); the program cannot catch it."""

    def __init__(self, approval_id: str, *, call: int, operation: str, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.approval_id = approval_id
        self.call = call
        self.operation = operation
        self.reason = reason
        self.line = line


class OperationFailed(Exception):
    """The backend failed to perform an allowed call. The program sees OperationError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Gate(Protocol):
    """Decides every call before the backend is touched.

    `call` returns the operation's result (JSON-encodable, Decimal and datetime allowed,
    or `Encoded`) or raises Denied / OperationFailed; RunHalted ends the run, ApprovalPending
    pauses it (the sandbox outcome `Paused`). Any other
    exception is treated by the host as a denial (GATE_ERROR): the gate fails closed even
    when it is broken.

    `blocking` says whether `call` may wait on I/O. The host runs blocking calls on a
    worker thread so the run's wall-time limit holds even if a backend hangs.

    A gate may also define `close(reason: str) -> None`: the host calls it once the run has
    ended (returned, trapped or timed out), before it hands back the outcome, and nothing
    may act after it (a call still on a worker thread is refused; `GateSession` records an
    allowed call whose action had not started as NOT_PERFORMED).
    """

    blocking: bool

    def call(self, request: CallRequest) -> Any: ...
