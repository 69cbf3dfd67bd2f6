"""Every way a sandboxed run can end, as one typed value.

    Outcome
    ├── Completed          the program called conclude(answer, data)
    ├── Refused            the program called refuse(reason)
    ├── ProgramError       an exception left the program (type, message, program lines)
    ├── ProgramSyntaxError the program does not parse (line, column)
    ├── ProgramRejected    the program was not run at all (too large, not text)
    ├── TimedOut           the CPU or wall-time limit ended it
    ├── MemoryExceeded     it needed more memory than its limit
    ├── CallLimitExceeded  it tried more proxy calls than its limit
    ├── OutputLimitExceeded it printed more than its limit
    ├── Halted             the gate ended it (too many denied calls)
    ├── Paused             a call needs a human's approval: the run stops there, and a
    │                      resumed run continues it once the approval is decided
    └── Trapped            the interpreter stopped for another reason (the instance is discarded)

A run never raises for any of these: the caller gets an outcome and the host keeps serving.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "CallLimitExceeded",
    "Completed",
    "Frame",
    "Halted",
    "MemoryExceeded",
    "Outcome",
    "OutputLimitExceeded",
    "Paused",
    "ProgramError",
    "ProgramRejected",
    "ProgramSyntaxError",
    "Refused",
    "Stats",
    "TimedOut",
    "Trapped",
    "ViolationInfo",
    "outcome_json",
]


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """What a run cost: proxy calls made, wall and guest CPU time in milliseconds."""

    calls: int = 0
    wall_ms: float = 0.0
    cpu_ms: float = 0.0


class _Outcome(msgspec.Struct, frozen=True, kw_only=True, tag_field="status"):
    output: str = ""  # what the program printed, bounded by the output limit
    stats: Stats = msgspec.field(default_factory=Stats)

    @property
    def message(self) -> str:
        raise NotImplementedError


class Completed(_Outcome, frozen=True, kw_only=True, tag="completed"):
    answer: str
    data: Any = None

    @property
    def message(self) -> str:
        return self.answer


class Refused(_Outcome, frozen=True, kw_only=True, tag="refused"):
    reason: str

    @property
    def message(self) -> str:
        return f"Refused: {self.reason}"


class Frame(msgspec.Struct, frozen=True):
    line: int
    function: str
    text: str


class ViolationInfo(msgspec.Struct, frozen=True):
    """Set when the exception that ended the program was a ContractViolation."""

    code: str
    operation: str
    boundary: str | None = None


class ProgramError(_Outcome, frozen=True, kw_only=True, tag="program_error"):
    error_type: str
    error_message: str
    line: int | None = None
    traceback: tuple[Frame, ...] = ()
    violation: ViolationInfo | None = None

    @property
    def message(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.error_type}{where}: {self.error_message}"

    def format_traceback(self) -> str:
        """The program's own frames, most recent call last, as a Python traceback reads."""
        lines = ["Traceback (most recent call last):"]
        for frame in self.traceback:
            lines.append(f"  line {frame.line}, in {frame.function}")
            if frame.text:
                lines.append(f"    {frame.text}")
        lines.append(f"{self.error_type}: {self.error_message}")
        return "\n".join(lines)


class ProgramSyntaxError(_Outcome, frozen=True, kw_only=True, tag="syntax_error"):
    error_type: str
    error_message: str
    line: int | None = None
    column: int | None = None
    text: str = ""

    @property
    def message(self) -> str:
        where = f" at line {self.line}, column {self.column}" if self.line is not None else ""
        return f"{self.error_type}{where}: {self.error_message}"


class ProgramRejected(_Outcome, frozen=True, kw_only=True, tag="rejected"):
    reason: str

    @property
    def message(self) -> str:
        return f"Program not run: {self.reason}"


class TimedOut(_Outcome, frozen=True, kw_only=True, tag="timeout"):
    limit: Literal["cpu", "wall"]
    seconds: float

    @property
    def message(self) -> str:
        what = "CPU time" if self.limit == "cpu" else "wall time (host calls included)"
        return f"The run exceeded its {what} limit of {self.seconds:g} s."


class MemoryExceeded(_Outcome, frozen=True, kw_only=True, tag="memory_limit"):
    limit_bytes: int

    @property
    def message(self) -> str:
        return f"The run needed more than its memory limit of {self.limit_bytes // 2**20} MiB."


class CallLimitExceeded(_Outcome, frozen=True, kw_only=True, tag="call_limit"):
    limit: int

    @property
    def message(self) -> str:
        return f"The program tried more than its limit of {self.limit} proxy calls."


class OutputLimitExceeded(_Outcome, frozen=True, kw_only=True, tag="output_limit"):
    limit_bytes: int

    @property
    def message(self) -> str:
        return f"The program printed more than its output limit of {self.limit_bytes} bytes."


class Halted(_Outcome, frozen=True, kw_only=True, tag="halted"):
    code: str
    reason: str

    @property
    def message(self) -> str:
        return f"The gate ended the run: {self.reason}"


class Paused(_Outcome, frozen=True, kw_only=True, tag="paused"):
    """The gate paused the run at call `call`: its approval rule held after every other check
    passed, an ApprovalRequested receipt records it, and nothing of that call executed."""

    approval_id: str
    call: int
    operation: str
    reason: str  # the approval rule's reason
    line: int | None = None  # the program line of the call, as the guest reported it

    @property
    def message(self) -> str:
        return (
            f"The run is awaiting approval {self.approval_id}: {self.operation} (call {self.call}) needs a "
            f"human's approval: {self.reason}"
        )


class Trapped(_Outcome, frozen=True, kw_only=True, tag="trap"):
    reason: str

    @property
    def message(self) -> str:
        return f"The interpreter stopped: {self.reason}"


Outcome = (
    Completed
    | Refused
    | ProgramError
    | ProgramSyntaxError
    | ProgramRejected
    | TimedOut
    | MemoryExceeded
    | CallLimitExceeded
    | OutputLimitExceeded
    | Halted
    | Paused
    | Trapped
)


_encoder = msgspec.json.Encoder(decimal_format="string")


def outcome_json(outcome: Outcome) -> str:
    """The outcome as JSON without its timing statistics: equal runs give equal text."""
    return _encoder.encode(msgspec.structs.replace(outcome, stats=Stats())).decode("utf-8")
