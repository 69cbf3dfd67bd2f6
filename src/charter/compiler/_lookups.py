"""Lookups in the gate table: what the gate needs to perform each one (charter.gate._lookups)."""

from __future__ import annotations

from charter.compiler.artifact import LookupRule
from charter.contract._lookups import lookup_readers
from charter.contract.checker import CheckedContract
from charter.contract.model import Operation

__all__ = ["lookup_rules"]


def lookup_rules(checked: CheckedContract, op: Operation) -> tuple[LookupRule, ...]:
    """One rule per declared lookup, in declaration order, with the rules that read it."""
    readers = lookup_readers(op)
    rules = []
    for name, lookup in op.lookups.items():
        returns = checked.returns[lookup.operation]
        assert returns is not None  # the checker refuses a read without `returns`
        rules.append(
            LookupRule(
                name=name,
                operation=lookup.operation,
                args=dict(lookup.args),
                returns=returns,
                rules=tuple(readers.get(name, ())),
            )
        )
    return tuple(rules)
