"""Contract compilation: one checked contract in, one immutable artifact out."""

from charter.compiler.artifact import (
    BoundaryRule,
    CompiledContract,
    GateTable,
    GuardRule,
    GuestOperation,
    GuestSurface,
    OperationRule,
    ParamSpec,
    TransitionRule,
)
from charter.compiler.compile import artifact_files, compile_contract

__all__ = [
    "BoundaryRule",
    "CompiledContract",
    "GateTable",
    "GuardRule",
    "GuestOperation",
    "GuestSurface",
    "OperationRule",
    "ParamSpec",
    "TransitionRule",
    "artifact_files",
    "compile_contract",
]
