"""How a change of an operation's lookups is classified (`charter registry diff`).

A lookup only matters through the rules that read it (`lookups.<name>` in a guard, an
approval condition or a quota), whose own changes `diff` classifies as for any rule: a
removed lookup guard is a relaxation, an added one breaking. What remains is the lookup
itself:

- changed (another operation, or other args) while a rule reads it: the rule now checks
  against other data, with the same text. Other data can deny calls the old allowed and allow
  calls the old denied (the payees of another account), so, as for a changed guard
  expression, it is both breaking (may deny more) and a relaxation (may allow more);
- added and read by a rule: a new read the gate must make before it allows the call, which
  fails closed (LOOKUP_FAILED) when the backend cannot answer: breaking;
- removed while the old version's rules read it: the rules reading it are gone or changed
  too (the checker refuses a rule naming an undeclared lookup), so the check against that
  data is gone: a relaxation;
- added, removed or changed while no rule reads it: the gate never performs it: additive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from charter.contract._lookups import lookup_readers
from charter.contract.model import Lookup, Operation

__all__ = ["lookup_changes"]

Add = Callable[[Literal["breaking", "relaxation", "additive"], str, str], None]


def lookup_changes(add: Add, where: str, old: Operation, new: Operation) -> None:
    """Report each lookup added, removed or changed from `old` to `new` through `add(kind, where, message)`."""
    read_before = _read(old)
    read_after = _read(new)
    for name, lookup in old.lookups.items():
        if name not in new.lookups:
            kind: Literal["breaking", "relaxation", "additive"] = "relaxation" if name in read_before else "additive"
            add(kind, f"{where}.{name}", f"lookup '{name}' removed ({_said(lookup)})")
    for name, lookup in new.lookups.items():
        before = old.lookups.get(name)
        at = f"{where}.{name}"
        if before is None:
            if name in read_after:
                add("breaking", at, f"lookup '{name}' added ({_said(lookup)}): the gate reads it before deciding")
            else:
                add("additive", at, f"lookup '{name}' added ({_said(lookup)}); no rule reads it")
        elif before != lookup:
            message = f"lookup '{name}' changed from {_said(before)} to {_said(lookup)}"
            if name in read_after:
                add("breaking", at, message + " (its rules check other data: may deny more)")
                add("relaxation", at, message + " (its rules check other data: may allow more)")
            else:
                add("additive", at, message + " (no rule reads it)")


def _read(op: Operation) -> set[str]:
    return {name for name, rules in lookup_readers(op).items() if rules}


def _said(lookup: Lookup) -> str:
    args = ", ".join(f"{k}: {v}" for k, v in lookup.args.items())
    return f"{lookup.operation}({args})"
