"""The limits one sandboxed run runs under, as immutable data.

The contract pins them (its `limits:` block, with defaults for what it leaves out);
a caller may tighten them for a single run and never loosen them, so a contract
author's ceilings hold whoever calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from charter.compiler.artifact import LimitsSpec
from charter.errors import UsageError

__all__ = ["SandboxLimits"]

_MIB = 2**20


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxLimits:
    memory_bytes: int
    cpu_seconds: float
    wall_seconds: float
    max_calls: int
    max_call_bytes: int
    max_output_bytes: int
    max_program_bytes: int
    # Not contract settings: bounds on what crosses back, so the host never decodes
    # an unbounded answer from the guest or pushes an unbounded result into it.
    max_result_bytes: int = 4 * _MIB
    max_conclusion_bytes: int = 1 * _MIB

    @classmethod
    def from_contract(cls, limits: LimitsSpec) -> SandboxLimits:
        return cls(
            memory_bytes=limits.memory_mib * _MIB,
            cpu_seconds=limits.cpu_seconds,
            wall_seconds=limits.wall_seconds,
            max_calls=limits.max_calls,
            max_call_bytes=limits.max_call_bytes,
            max_output_bytes=limits.max_output_bytes,
            max_program_bytes=limits.max_program_bytes,
        )

    def tightened(self, **overrides: Any) -> SandboxLimits:
        """These limits with some lowered for one run. Raising one is refused."""
        for name, value in overrides.items():
            if name not in self.__dataclass_fields__:
                known = ", ".join(self.__dataclass_fields__)
                raise UsageError(f"unknown sandbox limit {name!r}; limits: {known}")
            current = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"sandbox limit {name} must be a positive number, got {value!r}")
            if value > current:
                raise UsageError(
                    f"sandbox limit {name}={value!r} is above the contract's {current!r}; "
                    "a run may tighten the contract's limits, never loosen them"
                )
        return dataclasses.replace(self, **overrides)
