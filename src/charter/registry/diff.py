"""Classify the changes between two versions of a contract.

- breaking:   a program valid before can fail now (something removed, a new required
              param, a changed type, a new or stricter guard, scope or sequence rule);
- relaxation: a hard boundary or rule was loosened or removed, a governance change that
              needs explicit approval to publish;
- additive:   new capabilities and documentation; nothing that worked stops working.

A changed guard expression cannot in general be proven stricter or looser, so it counts as
both; the exception is a change of one numeric bound compared with the same operand
(`params.amount <= 2000` to `<= 5000`), classified by its direction: wider is a
relaxation, narrower is breaking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from charter.contract.model import (
    Contract,
    Entity,
    Guard,
    Lifecycle,
    Operation,
    Param,
    Transition,
    param_type,
)
from charter.registry._bounds import bound_direction
from charter.registry._lookups import lookup_changes
from charter.registry._provenance import provenance_changes
from charter.registry._quotas import diff_quotas
from charter.registry._rules import approval_changes, approvals_block_changes, attribute_changes, sequence_changes

__all__ = ["Change", "ChangeKind", "diff_contracts"]

ChangeKind = Literal["breaking", "relaxation", "additive"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    where: str  # e.g. "operations.cancel_order.guards.cancel_reason_given"
    message: str

    def __str__(self) -> str:
        return f"{self.kind:<10} {self.where}: {self.message}"


class _Diff:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def add(self, kind: ChangeKind, where: str, message: str) -> None:
        self.changes.append(Change(kind, where, message))

    def keyed(
        self,
        where: str,
        old: Mapping[str, T],
        new: Mapping[str, T],
        what: str,
        removed: ChangeKind,
        added: ChangeKind,
        changed: Callable[[str, T, T], None] | None = None,
        detail: Callable[[T], str] | None = None,
    ) -> None:
        def said(value: T) -> str:
            return f" ({detail(value)})" if detail is not None else ""

        for key in old:
            if key not in new:
                self.add(removed, f"{where}.{key}", f"{what} '{key}' removed{said(old[key])}")
        for key in new:
            if key not in old:
                self.add(added, f"{where}.{key}", f"{what} '{key}' added{said(new[key])}")
            elif changed is not None and old[key] != new[key]:
                changed(f"{where}.{key}", old[key], new[key])

    def sets(
        self,
        where: str,
        old: list[str],
        new: list[str],
        what: str,
        removed: ChangeKind,
        added: ChangeKind,
    ) -> None:
        for item in old:
            if item not in new:
                self.add(removed, where, f"{what} '{item}' removed")
        for item in new:
            if item not in old:
                self.add(added, where, f"{what} '{item}' added")


def diff_contracts(old: Contract, new: Contract) -> list[Change]:
    """Every change from `old` to `new`, classified."""
    d = _Diff()
    if old.summary != new.summary:
        d.add("additive", "summary", "summary reworded")
    d.sets("owners", old.owners, new.owners, "owner", "additive", "additive")
    d.keyed(
        "enums",
        old.enums,
        new.enums,
        "enum",
        "breaking",
        "additive",
        lambda w, a, b: d.sets(w, a, b, "value", "breaking", "additive"),
    )
    d.keyed(
        "records",
        old.records,
        new.records,
        "record",
        "breaking",
        "additive",
        lambda w, a, b: _fields(d, w, a, b),
    )
    d.keyed(
        "entities",
        old.entities,
        new.entities,
        "entity",
        "breaking",
        "additive",
        lambda w, a, b: _entity(d, w, a, b),
    )
    d.keyed(
        "operations",
        old.operations,
        new.operations,
        "operation",
        "breaking",
        "additive",
        lambda w, a, b: _operation(d, w, a, b),
    )
    _boundaries(d, old, new)
    attribute_changes(d.add, old.principal.attributes, new.principal.attributes)
    approvals_block_changes(d.add, old, new)
    for limit in type(old.limits).model_fields:
        before, after = getattr(old.limits, limit), getattr(new.limits, limit)
        if after > before:
            d.add("relaxation", f"limits.{limit}", f"raised from {before} to {after}")
        elif after < before:
            d.add("breaking", f"limits.{limit}", f"lowered from {before} to {after}")
    if old.binding != new.binding:
        d.add("additive", "binding", "default backend binding changed")
    return d.changes


def _fields(d: _Diff, where: str, old: Mapping[str, str], new: Mapping[str, str]) -> None:
    d.keyed(
        where,
        old,
        new,
        "field",
        "breaking",
        "additive",
        lambda w, a, b: d.add("breaking", w, f"type changed from {a} to {b}"),
    )


def _entity(d: _Diff, where: str, old: Entity, new: Entity) -> None:
    if old.key != new.key:
        d.add("breaking", f"{where}.key", f"key changed from '{old.key}' to '{new.key}'")
    _fields(d, f"{where}.fields", old.fields, new.fields)
    if old.doc != new.doc:
        d.add("additive", f"{where}.doc", "documentation changed")
    if old.lifecycle is None and new.lifecycle is not None:
        d.add("breaking", f"{where}.lifecycle", "lifecycle added: writes are now bound to states")
    elif old.lifecycle is not None and new.lifecycle is None:
        d.add(
            "relaxation",
            f"{where}.lifecycle",
            "lifecycle removed: writes are no longer bound to states",
        )
    elif old.lifecycle is not None and new.lifecycle is not None:
        _lifecycle(d, f"{where}.lifecycle", old.lifecycle, new.lifecycle)


def _lifecycle(d: _Diff, where: str, old: Lifecycle, new: Lifecycle) -> None:
    if old.field != new.field:
        d.add("breaking", f"{where}.field", f"state field renamed from '{old.field}' to '{new.field}'")
    d.sets(f"{where}.states", old.states, new.states, "state", "breaking", "additive")
    if old.initial != new.initial:
        d.add(
            "breaking",
            f"{where}.initial",
            f"initial state changed from {old.initial} to {new.initial}",
        )
    d.keyed(
        f"{where}.transitions",
        old.transitions,
        new.transitions,
        "transition",
        "breaking",
        "additive",
        lambda w, before, after: _transition(d, w, before, after),
    )


def _transition(d: _Diff, where: str, before: Transition, after: Transition) -> None:
    name = where.rsplit(".", 1)[-1]
    for state in after.from_:
        if state not in before.from_:
            d.add("relaxation", where, f"'{name}' is now also allowed from {state}")
    for state in before.from_:
        if state not in after.from_:
            d.add("breaking", where, f"'{name}' is no longer allowed from {state}")
    if before.to != after.to:
        d.add("breaking", where, f"'{name}' now leads to {after.to} instead of {before.to}")


def _operation(d: _Diff, where: str, old: Operation, new: Operation) -> None:
    for attr in ("kind", "entity", "key", "returns"):
        if getattr(old, attr) != getattr(new, attr):
            d.add(
                "breaking",
                f"{where}.{attr}",
                f"{attr} changed from {getattr(old, attr)} to {getattr(new, attr)}",
            )
    for name in old.params:
        if name not in new.params:
            d.add("breaking", f"{where}.params.{name}", f"param '{name}' removed")
    for name, written in new.params.items():
        text = param_type(written)
        if name not in old.params:
            optional = text.strip().endswith("?")
            d.add(
                "additive" if optional else "breaking",
                f"{where}.params.{name}",
                f"{'optional' if optional else 'required'} param '{name}' added",
            )
        elif param_type(old.params[name]) != text:
            d.add(
                "breaking",
                f"{where}.params.{name}",
                f"type changed from {param_type(old.params[name])} to {text}",
            )
        if name in old.params and _secret(old.params[name]) != _secret(written):
            # No call is refused either way; what changes is whether the log holds the value.
            d.add(
                "additive" if _secret(written) else "relaxation",
                f"{where}.params.{name}",
                f"param '{name}' is now secret"
                if _secret(written)
                else f"param '{name}' is no longer secret: receipts record its value in plain text",
            )
    provenance_changes(d.add, where, old, new)
    if old.transition != new.transition:
        if new.transition is None:
            d.add(
                "relaxation",
                f"{where}.transition",
                f"no longer bound to transition '{old.transition}'",
            )
        else:
            d.add("breaking", f"{where}.transition", f"now performs transition '{new.transition}'")

    def guard_changed(at: str, before: Guard, after: Guard) -> None:
        if before.when != after.when:
            message = f"guard '{after.id}' changed from `{before.when}` to `{after.when}`"
            moved = bound_direction(before.when, after.when)
            if moved is not None:
                direction, operand = moved
                bound_kind: ChangeKind = "relaxation" if direction == "wider" else "breaking"
                d.add(
                    bound_kind,
                    at,
                    f"{message} (the bound on {operand} is {direction}: it allows "
                    f"{'more' if direction == 'wider' else 'less'})",
                )
                return
            d.add("breaking", at, message + " (may be stricter)")
            d.add("relaxation", at, message + " (may be looser)")
        elif before.message != after.message:
            d.add("additive", at, f"guard '{after.id}' message reworded")

    d.keyed(
        f"{where}.guards",
        {g.id: g for g in old.guards},
        {g.id: g for g in new.guards},
        "guard",
        "relaxation",
        "breaking",
        guard_changed,
        detail=lambda guard: guard.when,
    )
    lookup_changes(d.add, f"{where}.lookups", old, new)
    diff_quotas(d, where, old.quotas, new.quotas)
    d.sets(f"{where}.scopes", old.scopes, new.scopes, "required scope", "relaxation", "breaking")
    if old.public != new.public:
        # Opening a write to anyone is a governance change; closing it again shows up as the
        # scopes it gains (breaking), and on a read the mark changes nothing the gate checks.
        opened = new.public and new.kind == "write"
        d.add("relaxation" if opened else "additive", f"{where}.public", f"public changed to {new.public}")
    sequence_changes(d.add, f"{where}.after", old.after, new.after)
    approval_changes(d.add, f"{where}.requires_approval", old.requires_approval, new.requires_approval)
    if old.idempotent != new.idempotent:
        kind: ChangeKind = "breaking" if old.idempotent else "additive"
        d.add(kind, f"{where}.idempotent", f"idempotent changed to {new.idempotent}")
    if old.doc != new.doc:
        d.add("additive", f"{where}.doc", "documentation changed")
    if old.binding != new.binding:
        d.add("additive", f"{where}.binding", "backend binding changed")


def _boundaries(d: _Diff, old: Contract, new: Contract) -> None:
    old_b = {b.id: b for b in old.boundaries}
    new_b = {b.id: b for b in new.boundaries}
    for bid, boundary in old_b.items():
        if bid not in new_b:
            d.add("relaxation", f"boundaries.{bid}", f"hard boundary removed: {boundary.text}")
    for bid, boundary in new_b.items():
        before = old_b.get(bid)
        w = f"boundaries.{bid}"
        if before is None:
            d.add("additive", w, f"boundary added: {boundary.text}")
            continue
        if before.text != boundary.text:
            d.add("relaxation", w, f"boundary text changed from '{before.text}' to '{boundary.text}'")
        if boundary.advisory and not before.advisory:
            d.add("relaxation", w, "boundary is now advisory")
        old_rules = [r.model_dump_json(exclude_none=True) for r in before.enforced_by]
        new_rules = [r.model_dump_json(exclude_none=True) for r in boundary.enforced_by]
        d.sets(w, old_rules, new_rules, "enforcing rule", "relaxation", "additive")


def _secret(written: str | Param) -> bool:
    return not isinstance(written, str) and written.secret
