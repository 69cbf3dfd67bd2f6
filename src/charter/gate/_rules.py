"""The CEL rules of a call: its guards (GUARD_VIOLATION), then, last of every check, its
approval rule (APPROVAL_REQUIRED: the gate pauses the run there, `_approvals`).

Both see the same variables (`GateSession._variables`); a lookup a rule names is performed
just before the rule is evaluated (`_lookups`). A rule that cannot be evaluated denies
GATE_ERROR: the gate does not allow what it cannot check. When the call sees a secret (a
secret param or a secret input of the run), an evaluation error is named by its type only,
since CEL quotes the values it failed on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cel

from charter.compiler.artifact import GateTable, GuardRule, OperationRule
from charter.contract.cel_guards import activation
from charter.gate._attributes import ConditionalApproval
from charter.gate._lookups import CallLookups
from charter.gate._receipts import Verdict

__all__ = ["CallRules"]

BoundaryNote = Callable[[tuple[str, ...]], tuple[str, str | None]]


@dataclass(frozen=True, slots=True)
class _CompiledGuard:
    rule: GuardRule
    program: Any  # cel.Program
    uses_entity: bool


class CallRules:
    """Built once per contract version: every guard compiled, and the approval rules."""

    def __init__(
        self, table: GateTable, boundary_note: BoundaryNote, rule_boundaries: Mapping[str, tuple[str, ...]]
    ) -> None:
        self._approval = ConditionalApproval(table)
        self._boundary_note = boundary_note
        self._rule_boundaries = rule_boundaries
        self._guards: dict[str, tuple[_CompiledGuard, ...]] = {}
        for name, rule in table.operations.items():
            programs = [(g, cel.compile(g.when)) for g in rule.guards]
            self._guards[name] = tuple(_CompiledGuard(g, p, "entity" in p.variables()) for g, p in programs)

    def uses_entity(self, operation: str) -> bool:
        """Does a guard or the approval condition of `operation` read `entity`?"""
        return any(g.uses_entity for g in self._guards[operation]) or self._approval.uses_entity(operation)

    def guard_violation(
        self, rule: OperationRule, variables: dict[str, Any], lookups: CallLookups, sees_secrets: bool
    ) -> Verdict | None:
        """The first guard of `rule` that does not hold, as a denial; None when all hold."""
        context = None
        for guard in self._guards[rule.name]:
            if lookups.perform(rule, f"guard:{guard.rule.id}", variables) or context is None:
                context = activation(variables)  # again after a lookup: rules see it from here on
            if guard.uses_entity and "entity" not in variables:
                return Verdict("GATE_ERROR", f"guard {guard.rule.id} needs the entity, which was not read")
            try:
                holds = guard.program.execute(context) is True
            except Exception as error:  # the checker tries nulls and types; name the guard if one still fails
                said = type(error).__name__
                if not sees_secrets:
                    said += f": {str(error).split('. ')[0]}"
                return Verdict(
                    "GATE_ERROR",
                    f"{rule.name} refused: guard {guard.rule.id} could not be evaluated ({said}); the gate does "
                    "not allow what it cannot check.",
                    clause=f"guard:{guard.rule.id}",
                )
            if not holds:
                note, boundary = self._boundary_note(guard.rule.boundaries)
                return Verdict(
                    "GUARD_VIOLATION",
                    f"{rule.name} refused: {guard.rule.message} (guard {guard.rule.id}){note}",
                    clause=f"guard:{guard.rule.id}",
                    boundary=boundary,
                )
        return None

    def approval_needed(self, rule: OperationRule, variables: dict[str, Any], sees_secrets: bool) -> Verdict | None:
        """APPROVAL_REQUIRED with the rule's reason (`Verdict.approval`) when `rule`'s approval
        rule holds, else None. The gate pauses the run there (`_approvals`); a condition that
        cannot be evaluated is GATE_ERROR, never a pause."""
        try:
            reason = self._approval.reason(rule, variables)
        except ValueError as error:
            said = "ValueError" if sees_secrets else str(error)
            return Verdict(
                "GATE_ERROR",
                f"{rule.name} refused: its requires_approval condition could not be evaluated ({said}); the "
                "gate does not allow what it cannot check.",
                clause=f"requires_approval:{rule.name}",
            )
        if reason is None:
            return None
        note, boundary = self._approval_note(rule)
        return Verdict(
            "APPROVAL_REQUIRED",
            f"{self._needs(rule, reason)}; the run pauses for a human's decision.{note}",
            clause=f"requires_approval:{rule.name}",
            boundary=boundary,
            approval=reason,
        )

    def cannot_pause(self, rule: OperationRule, reason: str) -> Verdict:
        """The refusal of a call whose approval rule held in a run with secret inputs: Charter
        never stores them, so the run could not be resumed as it ran (fail closed)."""
        note, boundary = self._approval_note(rule)
        return Verdict(
            "APPROVAL_REQUIRED",
            f"{self._needs(rule, reason)}; the run has secret inputs, which Charter never stores, so it cannot be "
            f"paused and resumed; ask without secret inputs or have the call approved another way.{note}",
            clause=f"requires_approval:{rule.name}",
            boundary=boundary,
            approval=reason,
        )

    def _approval_note(self, rule: OperationRule) -> tuple[str, str | None]:
        return self._boundary_note(self._rule_boundaries.get(f"approval:{rule.name}", ()))

    @staticmethod
    def _needs(rule: OperationRule, reason: str) -> str:
        if rule.approval_reason is None:
            return f"{rule.name} requires human approval before it runs"
        return f"{rule.name} requires human approval here: {reason}"
