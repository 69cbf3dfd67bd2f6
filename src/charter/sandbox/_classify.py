"""What a run's end means: the program refused before it starts, the guest's answer decoded,
a trap explained as what the program most likely attempted. Pure functions of the run's end,
kept apart from the host's instance handling (`_host`)."""

from __future__ import annotations

import contextlib
import re
from typing import Protocol

import msgspec

from charter.sandbox.limits import SandboxLimits
from charter.sandbox.outcomes import (
    Completed,
    MemoryExceeded,
    Outcome,
    OutputLimitExceeded,
    ProgramError,
    ProgramRejected,
    ProgramSyntaxError,
    Refused,
    TimedOut,
    Trapped,
)

__all__ = ["RunEnd", "classify", "decode_conclusion", "reject_program"]


class RunEnd(Protocol):
    """What the host knew of a run when it ended (`_host._RunState`)."""

    @property
    def limits(self) -> SandboxLimits: ...
    @property
    def deadline(self) -> float: ...
    @property
    def conclusion(self) -> Completed | Refused | None: ...
    @property
    def ended_by(self) -> Outcome | None: ...


class _GuestMemoryError(msgspec.Struct, frozen=True, tag_field="status", tag="memory_limit"):
    output: str = ""


_GuestOutcome = Completed | Refused | ProgramError | ProgramSyntaxError | _GuestMemoryError
_decode_outcome = msgspec.json.Decoder(_GuestOutcome).decode
decode_conclusion = msgspec.json.Decoder(Completed | Refused).decode


def reject_program(program: str, limits: SandboxLimits) -> ProgramRejected | None:
    if len(program) > limits.max_program_bytes:
        return ProgramRejected(
            reason=f"the program is {len(program)} characters; the limit is {limits.max_program_bytes} bytes"
        )
    try:
        size = len(program.encode("utf-8"))
    except UnicodeEncodeError:
        return ProgramRejected(reason="the program text contains a lone surrogate; it must be valid Unicode")
    if size > limits.max_program_bytes:
        return ProgramRejected(reason=f"the program is {size} bytes; the limit is {limits.max_program_bytes}")
    return None


def classify(raw: str | None, trap: str | None, state: RunEnd, ended: float) -> Outcome:
    """The run's outcome from what the guest returned (`raw`) or the trap that ended it."""
    limits = state.limits
    if state.conclusion is not None:
        return concluded(state.conclusion, raw, limits)
    if state.ended_by is not None:
        return state.ended_by
    if trap is not None:
        if "interrupt" in trap:
            if ended >= state.deadline:
                return TimedOut(limit="wall", seconds=limits.wall_seconds)
            return TimedOut(limit="cpu", seconds=limits.cpu_seconds)
        return Trapped(reason=trap_reason(trap))
    assert raw is not None
    if len(raw) > limits.max_output_bytes + limits.max_conclusion_bytes:
        return OutputLimitExceeded(limit_bytes=limits.max_output_bytes)
    try:
        outcome: _GuestOutcome = _decode_outcome(raw)
    except (msgspec.DecodeError, RecursionError) as error:
        return Trapped(reason=f"the guest returned an unreadable outcome: {error}")
    if isinstance(outcome, _GuestMemoryError):
        return MemoryExceeded(limit_bytes=limits.memory_bytes, output=outcome.output)
    if len(outcome.output.encode("utf-8")) > limits.max_output_bytes:
        return OutputLimitExceeded(limit_bytes=limits.max_output_bytes)
    return outcome


def concluded(conclusion: Completed | Refused, raw: str | None, limits: SandboxLimits) -> Outcome:
    """The conclusion the host received stands, however the run ended afterwards. The
    output is the final one when the guest returned it, else the output at the conclusion."""
    output = conclusion.output
    if raw is not None and len(raw) <= limits.max_output_bytes + limits.max_conclusion_bytes:
        with contextlib.suppress(msgspec.DecodeError, RecursionError):
            output = _decode_outcome(raw).output
    data = output.encode("utf-8")
    if len(data) > limits.max_output_bytes:
        output = data[: limits.max_output_bytes].decode("utf-8", "ignore")
    return msgspec.structs.replace(conclusion, output=output)


# Words in the C library frames of a trap's wasm backtrace -> what the program most likely
# did. The component has no WASI: each WASI function is a stub that executes `unreachable`.
_TRAP_CAUSES = (
    ("exit", "the program tried to end the interpreter's process"),
    ("clock", "the program read the host's clock past the run's virtual one (e.g. the real datetime.now)"),
    ("random", "the program asked the host for randomness (e.g. random.seed() of the real random module)"),
    ("sleep", "the program tried to wait on the host"),
    ("poll", "the program tried to wait on the host"),
    ("environ", "the program tried to read the host's environment"),
    ("sock", "the program tried to use a socket"),
    ("stat", "the program tried to reach the file system"),
    ("open", "the program tried to reach the file system"),
    ("path", "the program tried to reach the file system"),
    ("fd_", "the program tried to use a file descriptor"),
)
_C_LIBRARY_FRAME = re.compile(r"libc\.so!(\w+)")
_INTERPRETER_FRAME = re.compile(r"libpython[\w.]*\.so!(\w+)")


def trap_reason(trap: str) -> str:
    """A trap's reason as a reader can act on it: what the program most likely attempted."""
    last = trap.splitlines()[-1].strip() or "unknown trap"
    if "call stack exhausted" in trap:
        return "the program recursed too deeply in the interpreter (wasm call stack exhausted)"
    if "unreachable" not in trap:
        return last
    interpreter = _INTERPRETER_FRAME.search(trap)
    where = f" (in the interpreter's {interpreter.group(1)})" if interpreter else ""
    for function in _C_LIBRARY_FRAME.findall(trap):
        for word, cause in _TRAP_CAUSES:
            if word in function.lower():
                return f"{cause}{where}, which a Charter program cannot; the interpreter was stopped ({last})"
    return (
        "the interpreter stopped at a host facility the sandbox does not provide (a file, the clock, "
        f"randomness, the process){where}; a program reaching past the runtime (through __globals__ or "
        f"__subclasses__) is the likely cause ({last})"
    )
