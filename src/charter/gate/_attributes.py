"""Principal attributes and conditional approval in the gate (contract v2).

Attributes are bound by the operator (tokens.yaml, `--attr`), never by a caller's request:
`Principal.attributes` holds them as written, text for `--attr`. The gate converts each to
the type the contract version declares, the way a backend's result is checked (so a money
attribute is "2000.00" and guards see 200000 cents), and refuses a call whose rules name an
attribute that is missing (ATTRIBUTE_MISSING) or not of its type (ATTRIBUTE_INVALID),
before any rule would read it: check 5 of the gate's order.

Approval: `approval_reason` is the one decision, "does this call need a human?", as the
reason to show, or None. On a reason the gate pauses the run for a human's decision
(check 15, `_approvals`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import cel

from charter.compiler.artifact import GateTable, OperationRule
from charter.contract.cel_guards import activation
from charter.contract.types import TypeRef
from charter.gate._receipts import Verdict
from charter.gate._results import ResultChecker, ResultInvalid
from charter.principal import Principal

__all__ = ["AttributeRefused", "ConditionalApproval", "PrincipalAttributes"]

# Attribute text as a JSON scalar is written: ASCII only ([0-9], not \d, which takes any script's digits).
_INT = re.compile(r"-?[0-9]+\Z")
_FLOAT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")
_BOOLS = {"true": True, "false": False}
_EXPECTED = {
    "int": "Expected `int` as ASCII digits with an optional minus, e.g. 42",
    "float": "Expected `float` as a JSON number, e.g. 0.25 or 1e-3",
    "bool": "Expected `bool` as true or false",
}

CelValue = Callable[[Any, TypeRef, Mapping[str, Mapping[str, TypeRef]]], Any]


class AttributeRefused(Exception):
    """An attribute a rule names is missing or not of its declared type: the verdict to give."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class PrincipalAttributes:
    """The contract's declared attributes, checked against a principal's bound values."""

    def __init__(self, table: GateTable, results: ResultChecker, cel_value: CelValue) -> None:
        self._declared = table.principal_attributes
        self._records = table.records
        self._results = results
        self._cel_value = cel_value

    def check(self, rule: OperationRule, principal: Principal) -> None:
        """Raise AttributeRefused (ATTRIBUTE_MISSING / ATTRIBUTE_INVALID) for the first attribute
        `rule` names that `principal` lacks or holds in a form its type refuses."""
        for name in rule.attributes:
            ref = self._declared[name]
            how = (
                f"the operator binds it with `charter token add --attr {name}=...` or `charter exec --attr {name}=...`"
            )
            if name not in principal.attributes:
                raise AttributeRefused(
                    Verdict(
                        "ATTRIBUTE_MISSING",
                        f"{rule.name} refused: its rules use the principal attribute {name} ({ref}), which principal "
                        f"{principal.id} does not have; {how}.",
                        clause=f"principal.attributes.{name}",
                    )
                )
            typed = self._typed(name, principal.attributes[name])
            if isinstance(typed, str):
                raise AttributeRefused(
                    Verdict(
                        "ATTRIBUTE_INVALID",
                        f"{rule.name} refused: the principal attribute {name} of principal {principal.id} is not a "
                        f"valid {ref}, the type the contract declares for it ({typed}); {how}.",
                        clause=f"principal.attributes.{name}",
                    )
                )

    def values(self, principal: Principal) -> dict[str, Any]:
        """The declared attributes `principal` holds in a valid form, as CEL sees them (money in
        cents). One missing or invalid is left out: check() refused every call that names it."""
        values: dict[str, Any] = {}
        for name, ref in self._declared.items():
            if name in principal.attributes:
                typed = self._typed(name, principal.attributes[name])
                if not isinstance(typed, str):
                    values[name] = self._cel_value(typed[0], ref, self._records)
        return values

    def _typed(self, name: str, value: Any) -> tuple[Any] | str:
        """(the value as its declared type,), or what the type expects when it is not one.

        Text is read exactly as JSON would carry the value: ASCII digits only, no surrounding
        spaces, no `1_000`, full-width digits or `nan` (int() and float() take them all), and
        money through the gate's one money rule."""
        ref = self._declared[name]
        if isinstance(value, str):  # bound as text
            if ref.kind == "int":
                if not _INT.match(value):
                    return _EXPECTED["int"]
                value = int(value)
            elif ref.kind == "float":
                if not _FLOAT.match(value):
                    return _EXPECTED["float"]
                value = float(value)
            elif ref.kind == "bool":
                if value not in _BOOLS:
                    return _EXPECTED["bool"]
                value = _BOOLS[value]
        elif ref.kind == "money" and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # a number given through the Python API is the amount it writes
        try:
            return (self._results.check(ref, value).plain(),)
        except ResultInvalid as error:
            return str(error).rpartition(" - at `")[0] or str(error)


class ConditionalApproval:
    """Whether a call needs a human's approval, by the operation's `requires_approval`."""

    def __init__(self, table: GateTable) -> None:
        self._when = {
            name: cel.compile(rule.approval_when)
            for name, rule in table.operations.items()
            if rule.approval_when is not None
        }

    def uses_entity(self, operation: str) -> bool:
        """Whether the operation's approval condition reads `entity` (the gate must read it)."""
        program = self._when.get(operation)
        return program is not None and "entity" in program.variables()

    def reason(self, rule: OperationRule, variables: Mapping[str, Any]) -> str | None:
        """The reason approval is needed (the contract's `reason`, or for `requires_approval:
        true` that every call needs it), or None. Raises ValueError when the condition cannot
        be evaluated or gives no bool: the gate then denies (GATE_ERROR), never allows."""
        if not rule.requires_approval:
            return None
        program = self._when.get(rule.name)
        if program is None:
            return f"every call of {rule.name} needs a human's approval"
        try:
            holds = program.execute(activation(variables))
        except Exception as error:  # the CEL binding may raise anything
            raise ValueError(f"{type(error).__name__}: {str(error).split('. ')[0]}") from None
        if not isinstance(holds, bool):
            raise ValueError(f"it gives {type(holds).__name__}, not true or false")
        return rule.approval_reason if holds else None
