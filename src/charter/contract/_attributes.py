"""Checks of principal attributes, any-of sequences and conditional approval (contract v2).

- `principal: {attributes: {name: type}}`: snake_case names, scalar types (a primitive or an
  enum; not optional, not a list or record: the operator binds each as one `name=value`).
  Rules see them as `principal.attributes.<name>`, typed like any field, through a record
  the checker alone knows (`ATTRIBUTES_RECORD`), so a misspelt attribute is a check error
  with a did-you-mean, as a misspelt field is.
- `after: {any: [a, b]}` and `after: [a, {any: [b, c]}]`: every name an operation of the
  contract, none the operation itself; a group of one is allowed, with a warning.
- `requires_approval: {when: <CEL>, reason: <text>}`: `when` type-checked with the very
  variables guards get.

`attributes_used` says which attributes an operation's rules name, so the gate checks those
(present and of the declared type) before anything else needs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from charter.contract._names import SNAKE
from charter.contract._provenance import provenance_hint
from charter.contract._yaml import Path as DocPath
from charter.contract.cel_guards import PRINCIPAL_FIELDS, check_guard, suggest
from charter.contract.model import AnyOf, Approval, Contract, Operation, Param
from charter.contract.types import TypeRef

__all__ = [
    "ATTRIBUTES_RECORD",
    "after_groups",
    "approval_when",
    "attributes_used",
    "check_after",
    "check_approval",
    "check_principal_attributes",
    "principal_fields",
    "union_errors",
]

# The record type of `principal.attributes` in CEL checks: a name no contract can declare
# (declared names are PascalCase), never compiled into the gate table's records.
ATTRIBUTES_RECORD = "principal.attributes"

_STRING_LITERAL = re.compile(r"""(?s)[rR]?("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
_ATTRIBUTE = re.compile(r"(?<![\w.])principal\s*\.\s*attributes\s*\.\s*([A-Za-z_]\w*)")
_WHOLE = re.compile(r"(?<![\w.])principal\s*\.\s*attributes(?!\s*\.\s*\w)")

# `approval if <reason>` costs at most 12 prompt tokens (3.5 characters a token): 4 + 8.
MAX_REASON_CHARS = 28

Fail = Callable[..., None]  # (path, message, key=False): the checker's `fail`
Warn = Callable[[DocPath, str], None]
Resolve = Callable[[DocPath, str, str], "TypeRef | None"]


_TYPE_ERRORS = frozenset({"string_type", "bool_type", "list_type", "dict_type", "model_type", "model_attributes_type"})
_BRANCHES = frozenset({"str", "bool", "AnyOf", "Approval", "list[union[str,AnyOf]]"})
_EXPECTED = {
    "after": "a list of operation names and {any: [...]} groups, or {any: [...]}",
    "after.item": "an operation name or {any: [...]}",
    "requires_approval": "true, false or {when: <CEL>, reason: <text>}",
}


def union_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors with those of `after`, `requires_approval` and params (each a union of
    forms) said once, in the form the author wrote: a mapping's missing `reason` is reported
    without "expected true or false" beside it; a value of no form is one error naming every form."""
    kept: list[dict[str, Any]] = []
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    params: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for error in errors:
        loc = tuple(error["loc"])
        if len(loc) > 3 and loc[0] == "operations" and loc[2] in ("after", "requires_approval"):
            groups.setdefault(loc[:3], []).append(error)
        elif len(loc) > 4 and loc[0] == "operations" and loc[2] == "params" and loc[4] in _PARAM_BRANCHES:
            params.setdefault(loc[:4], []).append(error)
        else:
            kept.append(dict(error))
    for param_loc, found in params.items():
        kept += _param_errors(param_loc, found)
    for key, found in groups.items():
        matched = [e for e in found if e["type"] not in _TYPE_ERRORS]
        if matched:
            kept += [{**e, "loc": _unbranched(e["loc"])} for e in matched]
            continue
        deepest = max(found, key=lambda e: len(_unbranched(e["loc"])))
        loc = _unbranched(deepest["loc"])
        what = _EXPECTED["after.item" if len(loc) > 3 else key[2]]
        got = deepest["input"]
        shown = f"'{got}'" if isinstance(got, str) else repr(got) if not isinstance(got, dict | list) else "a list"
        kept.append({"type": "value_error", "loc": loc, "ctx": {"error": f"expected {what}, got {shown}"}})
    return kept


def _unbranched(loc: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(step for index, step in enumerate(loc) if index < 3 or step not in _BRANCHES)


# pydantic names each member of a param's union (`str | Param`) and of a `from:` item's
# (`NonEmptyText | Source`) as a step of the error's location.
_PARAM_BRANCHES = frozenset({"str", "Param"})
_SOURCE_BRANCHES = frozenset({"constrained-str", "Source"})
_PARAM_FORMS = "a type (e.g. str or 'money?') or {type: <type>, from: [<source>, ...], secret: true}"
_SOURCE_FORMS = "a source (request, principal or <read>.<field>) or {source: <source>, match: exact|token}"


def _param_errors(param_loc: tuple[Any, ...], found: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A param's errors in the form its author wrote: a mapping's errors without the bare
    type's "expected a string", a `from:` item's likewise; a value of neither form is one error."""
    written = _input_at(found, (*param_loc, "str"))
    if isinstance(written, str):
        return [{**e, "loc": _without(e["loc"], _PARAM_BRANCHES)} for e in found if e["loc"][4] == "str"]
    if not isinstance(written, dict):
        return [_no_form(param_loc, _PARAM_FORMS, written)]
    errors: list[dict[str, Any]] = []
    items: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for error in found:
        loc = tuple(error["loc"])
        if loc[4] != "Param":
            continue
        if len(loc) > 7 and loc[5] == "from" and loc[7] in _SOURCE_BRANCHES:
            items.setdefault(loc[:7], []).append(error)
        else:
            errors.append({**error, "loc": _without(loc, _PARAM_BRANCHES)})
    for item_loc, item_errors in items.items():
        item = _input_at(item_errors, (*item_loc, "constrained-str"))
        if isinstance(item, dict):
            errors += [
                {**e, "loc": _without(e["loc"], _PARAM_BRANCHES | _SOURCE_BRANCHES)}
                for e in item_errors
                if e["loc"][7] == "Source"
            ]
        elif isinstance(item, str):
            errors += [
                {**e, "loc": _without(e["loc"], _PARAM_BRANCHES | _SOURCE_BRANCHES)}
                for e in item_errors
                if e["loc"][7] != "Source"
            ]
        else:
            errors.append(_no_form(_without(item_loc, _PARAM_BRANCHES), _SOURCE_FORMS, item))
    # A misspelt key (`sorce:`, `tpe:`) also leaves the required one missing: say only the misspelling.
    misspelt = {tuple(e["loc"][:-1]) for e in errors if e["type"] == "extra_forbidden"}
    return [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"][:-1]) in misspelt)]


def _input_at(errors: Sequence[Mapping[str, Any]], loc: tuple[Any, ...]) -> Any:
    """The value the author wrote at `loc` (a union branch's type error carries it), or None."""
    return next((e["input"] for e in errors if tuple(e["loc"]) == loc), None)


def _without(loc: Sequence[Any], branches: frozenset[str]) -> tuple[Any, ...]:
    return tuple(step for index, step in enumerate(loc) if index < 4 or step not in branches)


def _no_form(loc: tuple[Any, ...], forms: str, got: Any) -> dict[str, Any]:
    shown = f"'{got}'" if isinstance(got, str) else repr(got) if not isinstance(got, dict | list) else "a list"
    return {"type": "value_error", "loc": loc, "ctx": {"error": f"expected {forms}, got {shown}"}}


def principal_fields() -> dict[str, TypeRef]:
    """What `principal` holds in CEL: id, scopes and the declared attributes."""
    return {**PRINCIPAL_FIELDS, "attributes": TypeRef("record", name=ATTRIBUTES_RECORD)}


def check_principal_attributes(model: Contract, resolve: Resolve, fail: Fail) -> dict[str, TypeRef]:
    """The declared attributes, resolved; every problem reported through `fail`."""
    resolved: dict[str, TypeRef] = {}
    for name, text in model.principal.attributes.items():
        path: DocPath = ("principal", "attributes", name)
        if not SNAKE.match(name):
            fail(path, f"principal attribute name '{name}' must be lower snake_case, e.g. 'daily_limit'", key=True)
            continue
        ref = resolve(path, text, f"principal attribute '{name}'")
        if ref is None:
            continue
        if ref.optional or ref.kind in ("list", "record"):
            fail(
                path,
                f"principal attribute '{name}' is {ref}, but an attribute is one bound value (`--attr "
                f"{name}=VALUE`): declare a primitive type or an enum, not optional, not a list or record",
            )
            continue
        resolved[name] = ref
    return resolved


def attributes_used(op: Operation, declared: Sequence[str]) -> tuple[str, ...]:
    """The attributes the operation's rules name: in guards, lookup args, quotas, the
    approval condition (`principal.attributes.<a>`; the whole map names all of them) and
    provenance sources (`principal.<a>`, or `principal` for all)."""
    expressions = [g.when for g in op.guards]
    expressions += [arg for lookup in op.lookups.values() for arg in lookup.args.values()]
    for quota in op.quotas:
        expressions += [*([quota.sum] if quota.sum else []), *quota.per]
    if isinstance(op.requires_approval, Approval):
        expressions.append(op.requires_approval.when)
    used: list[str] = []
    for source in expressions:
        blanked = _STRING_LITERAL.sub(lambda m: " " * len(m.group(0)), source)
        if _WHOLE.search(blanked):
            used += declared
        used += _ATTRIBUTE.findall(blanked)
    for label in _sources(op):
        if label == "principal":
            used += declared
        elif label.startswith("principal."):
            used.append(label.removeprefix("principal."))
    return tuple(sorted(set(used)))


def _sources(op: Operation) -> Iterator[str]:
    for written in op.params.values():
        if isinstance(written, Param) and written.from_:
            for source in written.from_:
                yield (source if isinstance(source, str) else source.source).strip()


def after_groups(after: list[str | AnyOf] | AnyOf) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(all-of names, any-of groups) of an `after:` rule, each in the order written."""
    items = [after] if isinstance(after, AnyOf) else after
    names = tuple(a for a in items if isinstance(a, str))
    groups = tuple(tuple(dict.fromkeys(a.any)) for a in items if isinstance(a, AnyOf))
    return names, groups


def check_after(name: str, op: Operation, operations: Mapping[str, Operation], fail: Fail, warn: Warn) -> None:
    """Every operation `after:` names exists and is not this one; a group of one is a warning."""
    base: DocPath = ("operations", name, "after")
    items: list[tuple[DocPath, str | AnyOf]] = (
        [(base, op.after)] if isinstance(op.after, AnyOf) else [((*base, i), a) for i, a in enumerate(op.after)]
    )
    for path, item in items:
        if isinstance(item, str):
            _check_step(name, item, operations, path, fail)
            continue
        seen: set[str] = set()
        for index, member in enumerate(item.any):
            mpath: DocPath = (*path, "any", index)
            if member in seen:
                fail(mpath, f"operation '{name}': '{member}' is listed twice in one any-of group")
            seen.add(member)
            _check_step(name, member, operations, mpath, fail)
        if len(item.any) == 1:
            warn(
                (*path, "any"),
                f"operation '{name}' has an any-of group of one operation, '{item.any[0]}': it means "
                f"the same as listing it (`after: [{item.any[0]}]`)",
            )


def _check_step(name: str, other: str, operations: Mapping[str, Operation], path: DocPath, fail: Fail) -> None:
    if other == name:
        fail(path, f"operation '{name}' cannot require itself to run first")
    elif other not in operations:
        fail(path, f"operation '{name}' must run after unknown operation '{other}'{suggest(other, operations)}")


def approval_when(op: Operation) -> list[str]:
    """The operation's approval condition, as a list of none or one CEL source."""
    return [op.requires_approval.when] if isinstance(op.requires_approval, Approval) else []


def check_approval(
    name: str,
    op: Operation,
    variables: Mapping[str, Mapping[str, TypeRef]],
    records: Mapping[str, Mapping[str, TypeRef]],
    enums: Mapping[str, Sequence[str]],
    fail: Fail,
    warn: Warn,
) -> None:
    """`requires_approval.when` type-checked with the guards' variables (`variables`); a reason
    too long for the prompt's budget is a warning."""
    approval = op.requires_approval
    if not isinstance(approval, Approval):
        return
    for found in check_guard(approval.when, variables, records, enums):
        said = provenance_hint(found, op.params).replace("this guard may use", "this condition may use")
        fail(("operations", name, "requires_approval", "when"), f"requires_approval of '{name}': {said}")
    if len(approval.reason) > MAX_REASON_CHARS:
        warn(
            ("operations", name, "requires_approval", "reason"),
            f"the approval reason of '{name}' is {len(approval.reason)} characters; the prompt shows it "
            f"as `approval if <reason>` on the operation's line: keep it to {MAX_REASON_CHARS} (about 8 tokens)",
        )
