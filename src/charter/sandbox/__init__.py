"""The sandbox: each program runs once in a fresh Wasm instance whose one way out is the gate.

    sandbox = Sandbox()
    outcome = sandbox.run(program, contract=compiled, gate=gate, context=RunContext(principal=p))

See the README's Sandbox section for what it guarantees and what it does not.
"""

from charter.sandbox._component import BuildFailed, allowed_modules, cache_root, ensure_built
from charter.sandbox._host import RunContext, Sandbox
from charter.sandbox.limits import SandboxLimits
from charter.sandbox.outcomes import (
    CallLimitExceeded,
    Completed,
    Frame,
    Halted,
    MemoryExceeded,
    Outcome,
    OutputLimitExceeded,
    Paused,
    ProgramError,
    ProgramRejected,
    ProgramSyntaxError,
    Refused,
    Stats,
    TimedOut,
    Trapped,
    ViolationInfo,
    outcome_json,
)

__all__ = [
    "BuildFailed",
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
    "RunContext",
    "Sandbox",
    "SandboxLimits",
    "Stats",
    "TimedOut",
    "Trapped",
    "ViolationInfo",
    "allowed_modules",
    "cache_root",
    "ensure_built",
    "outcome_json",
]
