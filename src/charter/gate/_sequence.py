"""Sequence rules (`after:`): which operations succeeded earlier in a run, and whether a call
may follow them (SEQUENCE_VIOLATION).

A step is tracked per entity when the call and the earlier step act on the same entity by
key: then the earlier step must have succeeded on the same key. Otherwise any earlier success
in the run counts. `after` is all of its operations; each `after_any` group is at least one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from charter.compiler.artifact import GateTable, OperationRule
from charter.gate._receipts import Verdict

__all__ = ["RunSequence", "target_text"]

BoundaryNote = Callable[[tuple[str, ...]], tuple[str, str | None]]


def target_text(rule: OperationRule, arguments: Mapping[str, Any]) -> str:
    """' on Order 123' when the call names its entity by key, else ''."""
    if rule.entity and rule.key and rule.key in arguments:
        return f" on {rule.entity} {arguments[rule.key]}"
    return ""


def _key_json(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")


class RunSequence:
    """One run's successful operations, by the entity key each acted on."""

    def __init__(self, table: GateTable, boundary_note: BoundaryNote) -> None:
        self._table = table
        self._boundary_note = boundary_note
        self._succeeded: dict[str, set[str]] = {}  # operation -> entity keys (JSON) it succeeded on

    def succeeded(self, rule: OperationRule, arguments: Mapping[str, Any]) -> None:
        """Record that the call of `rule` with `arguments` succeeded."""
        key = _key_json(arguments.get(rule.key)) if rule.key else ""
        self._succeeded.setdefault(rule.name, set()).add(key)

    def violation(self, rule: OperationRule, arguments: Mapping[str, Any]) -> Verdict | None:
        """SEQUENCE_VIOLATION naming the first step (or any-of group) not yet made, or None."""
        for before in rule.after:
            if not self._followed(rule, before, arguments):
                # The earlier step is named with the entity only when it is tracked per entity
                # (the rule `_followed` applies); a step without a key has none to state.
                return self._verdict(rule, arguments, before, before, self._per_entity(rule, before))
        for group in rule.after_any:
            if not any(self._followed(rule, before, arguments) for before in group):
                per_entity = all(self._per_entity(rule, b) for b in group)
                return self._verdict(rule, arguments, f"one of {', '.join(group)}", "|".join(group), per_entity)
        return None

    def _verdict(
        self, rule: OperationRule, arguments: Mapping[str, Any], named: str, expected: str, per_entity: bool
    ) -> Verdict:
        note, boundary = self._boundary_note(rule.after_boundaries)
        target = target_text(rule, arguments)
        before_target = target if per_entity else ""
        return Verdict(
            "SEQUENCE_VIOLATION",
            f"{rule.name}{target} must follow {named}{before_target} in the same run: expected step "
            f"{expected}, received step {rule.name}.{note}",
            clause=f"sequence:{rule.name}",
            boundary=boundary,
        )

    def _per_entity(self, rule: OperationRule, before: str) -> bool:
        """Must `before` have succeeded on the same entity (both name it by key), or anywhere in the run?"""
        earlier = self._table.operations[before]
        return bool(rule.entity is not None and rule.entity == earlier.entity and rule.key and earlier.key)

    def _followed(self, rule: OperationRule, before: str, arguments: Mapping[str, Any]) -> bool:
        done = self._succeeded.get(before, set())
        if self._per_entity(rule, before):
            return _key_json(arguments.get(rule.key or "")) in done
        return bool(done)
