"""Diff classification of sequence rules, conditional approval and principal attributes.

An `after:` rule is read as clauses, each a set of operations at least one of which must
have succeeded: a plain name is a clause of one, `{any: [a, b]}` a clause of two. A new
clause the old rules already imply (some old clause is a subset of it) asks nothing new;
otherwise it is breaking. An old clause no new clause implies was loosened or dropped: a
relaxation. So adding a member to an any-of group, or turning `after: [a]` into
`after: {any: [a, b]}`, is a relaxation; removing a member is breaking.

Approval: a call that needed no human may need one (breaking), or the reverse (relaxation).
`true` -> a condition asks it for fewer calls (relaxation), a condition -> `true` for more
(breaking). A changed condition cannot in general be proven stricter or looser: it counts as
both, except one numeric bound moved (`params.amount > 100000` to `> 200000`), classified
by its direction: a condition that holds for more calls is breaking, for fewer a relaxation.

The `approvals:` block, compared as in force (defaults filled in): another approver scope is
breaking (those who could decide no longer can, and requests already waiting name the old
one); a longer expiry a relaxation (a request can be approved later); a shorter one breaking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

from charter.contract._approvals import DEFAULT_EXPIRES, default_scope, parse_expiry
from charter.contract._attributes import after_groups
from charter.contract.model import AnyOf, Approval, Contract
from charter.registry._bounds import bound_direction

__all__ = ["approval_changes", "approvals_block_changes", "attribute_changes", "sequence_changes"]

Kind = Literal["breaking", "relaxation", "additive"]
Add = Callable[[Kind, str, str], None]


def _clauses(after: list[str | AnyOf] | AnyOf) -> list[frozenset[str]]:
    names, groups = after_groups(after)
    clauses = [frozenset([n]) for n in names] + [frozenset(g) for g in groups]
    return list(dict.fromkeys(clauses))


def _said(clause: frozenset[str]) -> str:
    return f"'{next(iter(clause))}'" if len(clause) == 1 else f"one of {', '.join(sorted(clause))}"


def sequence_changes(add: Add, where: str, old: list[str | AnyOf] | AnyOf, new: list[str | AnyOf] | AnyOf) -> None:
    before, after = _clauses(old), _clauses(new)
    for clause in before:
        if not any(c <= clause for c in after):
            wider = [c for c in after if clause < c]
            if wider:
                add("relaxation", where, f"sequence rule after {_said(clause)} loosened to after {_said(wider[0])}")
            else:
                add("relaxation", where, f"sequence rule after {_said(clause)} removed")
    for clause in after:
        if not any(c <= clause for c in before):
            narrower = [c for c in before if clause < c]
            if narrower:
                add("breaking", where, f"sequence rule after {_said(narrower[0])} narrowed to after {_said(clause)}")
            else:
                add("breaking", where, f"sequence rule after {_said(clause)} added")


def approval_changes(add: Add, where: str, old: bool | Approval, new: bool | Approval) -> None:
    if old == new:
        return
    if isinstance(old, Approval) and isinstance(new, Approval):
        if old.when == new.when:
            add("additive", where, "approval reason reworded")
            return
        message = f"approval condition changed from `{old.when}` to `{new.when}`"
        moved = bound_direction(old.when, new.when)
        if moved is not None:
            # A condition that holds for more calls asks approval for more: the reverse of a guard.
            direction, operand = moved
            kind: Kind = "breaking" if direction == "wider" else "relaxation"
            add(
                kind,
                where,
                f"{message} (the bound on {operand} is {direction}: approval for "
                f"{'more' if direction == 'wider' else 'fewer'} calls)",
            )
            return
        add("breaking", where, message + " (may ask approval for more calls)")
        add("relaxation", where, message + " (may ask approval for fewer calls)")
    elif new is False:
        add("relaxation", where, "no longer requires approval")
    elif old is False:
        condition = f" when `{new.when}`" if isinstance(new, Approval) else ""
        add("breaking", where, f"now requires approval{condition}")
    elif isinstance(new, Approval):  # true -> a condition
        add("relaxation", where, f"requires approval only when `{new.when}` (was: always)")
    else:  # a condition -> true
        assert isinstance(old, Approval)
        add("breaking", where, f"now requires approval always (was: when `{old.when}`)")


def attribute_changes(add: Add, old: Mapping[str, str], new: Mapping[str, str]) -> None:
    """Declaring or dropping an attribute changes no rule by itself (a rule naming it is
    diffed where it is); a changed type may refuse the values operators bound: breaking."""
    for name in old:
        if name not in new:
            add("additive", f"principal.attributes.{name}", f"principal attribute '{name}' removed")
    for name, text in new.items():
        if name not in old:
            add("additive", f"principal.attributes.{name}", f"principal attribute '{name}' added ({text})")
        elif old[name] != text:
            add(
                "breaking",
                f"principal.attributes.{name}",
                f"principal attribute '{name}' type changed from "
                f"{old[name]} to {text}: bound values may no longer be valid",
            )


def approvals_block_changes(add: Add, old: Contract, new: Contract) -> None:
    before_scope, before_expires = _approvals_in_force(old)
    after_scope, after_expires = _approvals_in_force(new)
    if before_scope != after_scope:
        add("breaking", "approvals.scope", f"approver scope changed from {before_scope} to {after_scope}")
    if before_expires != after_expires:
        old_text = old.approvals.expires if old.approvals else DEFAULT_EXPIRES
        new_text = new.approvals.expires if new.approvals else DEFAULT_EXPIRES
        longer = after_expires > before_expires
        add(
            "relaxation" if longer else "breaking",
            "approvals.expires",
            f"approval expiry changed from {old_text} to {new_text} "
            f"({'longer: a request may be approved later' if longer else 'shorter: a request expires sooner'})",
        )


def _approvals_in_force(model: Contract) -> tuple[str, int]:
    block = model.approvals
    scope = (block.scope if block else None) or default_scope(model.contract)
    try:
        expires = parse_expiry(block.expires if block else DEFAULT_EXPIRES)
    except ValueError:  # the checker refuses it; order it as the default
        expires = parse_expiry(DEFAULT_EXPIRES)
    return scope, expires
