"""Lookups: reads the gate performs before deciding, checked at `check` time.

An operation declares named reads of this contract's own `kind: read` operations:

    lookups:
      payees: {operation: list_payees, args: {account: principal.attributes.account_id}}

Guards, approval conditions and quota expressions then see `lookups.payees`, typed from
`list_payees`'s `returns`. Everything about a lookup that can be wrong is found here, never
at run time, where a mistake would be a silent denial (LOOKUP_FAILED) of every call:

- the operation is unknown, or a write (a lookup must not act);
- an arg is not a param of the read, a required param of the read is not passed;
- an arg (CEL over `params` and `principal`) is not of the read param's type, or may be null
  where the param is required: typed by its declared chain when it is one (`params.account`),
  else by evaluating it on the same typed samples as guards (`cel_guards`);
- a lookup name is not snake_case; a lookup no rule uses is a warning (it would never run);
- a field a guard reads inside a macro over a lookup's list (`p.ibna`) is reported with the
  closest declared field (`hint_fields`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import cel

from charter.contract._names import SNAKE
from charter.contract._yaml import Path as DocPath
from charter.contract._yaml import SourceMap
from charter.contract.cel_guards import _samples, activation, check_guard, suggest
from charter.contract.model import Approval, Contract, Operation, param_type
from charter.contract.types import TypeRef, TypeSyntaxError, UnknownTypeName, parse_type
from charter.errors import Problem

__all__ = ["check_lookups", "hint_fields", "lookup_readers", "lookups_named", "params_named", "rule_expressions"]

Fields = Mapping[str, TypeRef]

_STRING_LITERAL = re.compile(r"""(?s)[rR]?(\"\"\".*?\"\"\"|'''.*?'''|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
_LOOKUPS = re.compile(r"(?<![\w.])lookups(?!\w)")
_PARAMS = re.compile(r"(?<![\w.])params(?!\w)")
_BY_FIELD = re.compile(r"\s*\.\s*([A-Za-z_]\w*)")
_BY_INDEX = re.compile(r"""\s*\[\s*(?:"([A-Za-z_]\w*)"|'([A-Za-z_]\w*)')\s*\]""")
_CHAIN = re.compile(r"\s*([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)+)\s*\Z")
_UNKNOWN_FIELD = re.compile(r"unknown field '([^']*)'\Z")
_UNDECLARED = " (declare the read under the operation's `lookups:`, e.g. `lookups: {x: {operation: a_read}}`)"
# What an arg may use: a lookup runs before the guards, on the call's own inputs only.
_ARG_ROOTS = ("params", "principal")


class _Checker(Protocol):
    """The part of the contract checker a lookup check needs (charter.contract.checker._Checker)."""

    model: Contract
    source: SourceMap
    records: dict[str, dict[str, TypeRef]]
    enums: dict[str, tuple[str, ...]]
    warnings: list[Problem]
    unresolved: set[str]

    @property
    def named(self) -> Any: ...

    def fail(self, path: DocPath, message: str, *, key: bool = False) -> None: ...


def lookups_named(source: str, declared: Iterable[str]) -> set[str]:
    """The lookups a CEL expression reads: `lookups.payees` or `lookups["payees"]` read one;
    `lookups` used any other way (`size(lookups)`) is taken to read every declared one, so the
    gate never evaluates a rule over a lookup it did not perform."""
    return _fields_read(source, _LOOKUPS, declared)


def params_named(source: str, declared: Iterable[str]) -> set[str]:
    """The params a CEL expression reads, as `lookups_named` finds lookups: `params` used whole
    is taken to read every declared one."""
    return _fields_read(source, _PARAMS, declared)


def _fields_read(source: str, root: re.Pattern[str], declared: Iterable[str]) -> set[str]:
    blanked = _STRING_LITERAL.sub(lambda m: " " * len(m.group(0)), source)
    named: set[str] = set()
    for match in root.finditer(blanked):
        field = _BY_FIELD.match(blanked, match.end())
        index = _BY_INDEX.match(source, match.end())  # the name is a string literal: read the source
        if field is not None:
            named.add(field.group(1))
        elif index is not None:
            named.add(index.group(1) or index.group(2))
        else:
            return set(declared)
    return named


def lookup_readers(op: Operation) -> dict[str, list[str]]:
    """Each declared lookup of `op` -> the rules that read it ("guard:<id>", "approval", "quota:<id>")."""
    readers: dict[str, list[str]] = {name: [] for name in op.lookups}
    for rule, source in rule_expressions(op):
        for name in lookups_named(source, op.lookups):
            if name in readers and rule not in readers[name]:
                readers[name].append(rule)
    return readers


def rule_expressions(op: Operation) -> Iterator[tuple[str, str]]:
    """(rule, CEL source) of every expression of `op` that may read lookups."""
    for guard in op.guards:
        yield f"guard:{guard.id}", guard.when
    if isinstance(op.requires_approval, Approval):
        yield "approval", op.requires_approval.when
    for quota in op.quotas:
        for source in (quota.sum, *quota.per):
            if source is not None:
                yield f"quota:{quota.id}", source


def check_lookups(checker: _Checker, name: str, op: Operation, variables: Mapping[str, Fields]) -> dict[str, TypeRef]:
    """Check `op`'s lookups; the fields of the `lookups` variable its rules see (name -> the
    read's `returns`). A lookup whose read does not resolve is left out of them, with its error.

    `variables`: the operation's guard variables; an arg may use `params` and `principal`.
    """
    fields: dict[str, TypeRef] = {}
    if not op.lookups:
        return fields
    arg_variables = {root: variables[root] for root in _ARG_ROOTS if root in variables}
    readers = lookup_readers(op)
    for lname, lookup in op.lookups.items():
        lpath: DocPath = ("operations", name, "lookups", lname)
        if not SNAKE.match(lname):
            checker.fail(lpath, f"lookup name '{lname}' of '{name}' must be lower snake_case", key=True)
            checker.unresolved.add(name)  # its rules are not type-checked: one mistake, one message
            continue
        returns = _check_read(checker, name, lname, lookup.operation, lpath)
        if returns is None:
            checker.unresolved.add(name)
            continue
        fields[lname] = returns
        read = checker.model.operations[lookup.operation]
        _check_args(checker, name, lname, lookup.operation, read, lookup.args, lpath, arg_variables)
        if not readers.get(lname):
            pos = checker.source.problem(lpath, "", key=True)
            checker.warnings.append(
                Problem(
                    pos.file,
                    pos.line,
                    pos.column,
                    f"warning: lookup '{lname}' of '{name}' is used by no guard, approval or quota of it, so the "
                    f"gate never performs it; use it as lookups.{lname} or remove it",
                )
            )
    return fields


def _check_read(checker: _Checker, name: str, lname: str, operation: str, lpath: DocPath) -> TypeRef | None:
    """The looked-up read's declared return type, or None after reporting why there is none."""
    operations = checker.model.operations
    read = operations.get(operation)
    if read is None:
        reads = [n for n, o in operations.items() if o.kind == "read"]
        checker.fail(
            (*lpath, "operation"),
            f"lookup '{lname}' of '{name}' names unknown operation '{operation}'{suggest(operation, reads)}",
        )
        return None
    if read.kind != "read":
        checker.fail(
            (*lpath, "operation"),
            f"lookup '{lname}' of '{name}' names write operation '{operation}'; only a `kind: read` operation "
            "may be looked up (the gate performs a lookup before deciding, so it must not act)",
        )
        return None
    if read.returns is None:
        return None  # reported at the read itself: a read must declare what it returns
    return _resolve(checker, read.returns)


def _resolve(checker: _Checker, text: str) -> TypeRef | None:
    # The read may come later in the file, so its types are resolved here; a type that does
    # not resolve is reported at the read itself, once.
    try:
        return parse_type(text, checker.named)
    except (UnknownTypeName, TypeSyntaxError):
        return None


def _check_args(
    checker: _Checker,
    name: str,
    lname: str,
    operation: str,
    read: Operation,
    args: Mapping[str, str],
    lpath: DocPath,
    variables: Mapping[str, Fields],
) -> None:
    for arg, source in args.items():
        if arg not in read.params:
            checker.fail(
                (*lpath, "args", arg),
                f"lookup '{lname}' of '{name}' passes '{arg}', which is not a param of '{operation}'"
                f"{suggest(arg, read.params)}",
                key=True,
            )
            continue
        expected = _resolve(checker, param_type(read.params[arg]))
        if expected is None:
            continue
        for problem in check_arg(source, expected, variables, checker.records, checker.enums):
            checker.fail((*lpath, "args", arg), f"lookup '{lname}' of '{name}', arg '{arg}': {problem}")
    missing = [p for p, t in read.params.items() if p not in args and not param_type(t).strip().endswith("?")]
    if missing:
        checker.fail(
            (*lpath, "args") if args else lpath,
            f"lookup '{lname}' of '{name}' does not pass {', '.join(missing)}, required by '{operation}': "
            f"add `args: {{{missing[0]}: <CEL over params and principal>}}`",
            key=not args,
        )


def check_arg(
    source: str,
    expected: TypeRef,
    variables: Mapping[str, Fields],
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
) -> list[str]:
    """Every problem with one lookup arg: a CEL expression whose value must be of `expected`."""
    try:
        program = cel.compile(source)
    except Exception:  # let check_guard word the syntax error, with its column
        return check_guard(source, variables, records, enums)
    # Names, functions and fields, checked as in a guard: `x == x` is a guard over them.
    found = check_guard(f"({source}) == ({source})", variables, records, enums)
    problems = list(dict.fromkeys(p.replace("this guard may use", "a lookup arg may use") for p in found))
    if problems:
        return problems
    chain = _CHAIN.match(source)
    if chain is not None and chain.group(1) in variables:
        declared = _declared(chain.group(1), chain.group(2), variables, records)
        if declared is not None:
            return _compare(declared, expected, source, enums)
    return _compare_value(program, expected, source, variables, records, enums)


def _declared(root: str, steps: str, variables: Mapping[str, Fields], records: Mapping[str, Fields]) -> TypeRef | None:
    current: Fields | None = variables[root]
    ref: TypeRef | None = None
    for step in (s.strip() for s in steps.split(".") if s.strip()):
        if current is None or step not in current:
            return None
        ref = current[step]
        current = records.get(ref.name or "") if ref.kind == "record" else None
    return ref


def _compare(declared: TypeRef, expected: TypeRef, source: str, enums: Mapping[str, Sequence[str]]) -> list[str]:
    if declared.optional and not expected.optional:
        return [f"{source} may be null, but the param is required ({expected}); make the arg never null"]
    plain_declared = TypeRef(declared.kind, declared.name, declared.item)
    plain_expected = TypeRef(expected.kind, expected.name, expected.item)
    if plain_declared != plain_expected:
        return [f"{source} is {plain_declared}, but the param is {expected}"]
    return []


_CEL_KINDS = {"str": str, "enum": str, "int": int, "money": int, "float": float, "bool": bool, "list": list}


def _compare_value(
    program: Any,
    expected: TypeRef,
    source: str,
    variables: Mapping[str, Fields],
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
) -> list[str]:
    """An expression that is not a declared chain: typed by its value on the guards' samples."""
    try:
        value = program.execute(activation(_samples(variables, records, enums, 1, frozenset())))
    except Exception as exc:  # the guard check above evaluated the same names: only values differ
        return [f"cannot be evaluated: {str(exc).split('. ')[0]}"]
    wanted = _CEL_KINDS.get(expected.kind)
    if value is None:
        return [] if expected.optional else [f"{source} gives null, but the param is required ({expected})"]
    if wanted is None or isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
        got = "money or int" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__
        return [f"{source} gives {got}, but the param is {expected}"]
    if expected.kind == "enum":
        allowed = enums.get(expected.name or "", ())
        if value not in allowed:
            return [f"{source} is a str, but the param is the enum {expected.name}: pass a value declared as one"]
    return []


def hint_fields(problems: Iterable[str], lookups: Fields | None, records: Mapping[str, Fields]) -> list[str]:
    """Problems of a guard, with a "did you mean" for a field it reads inside a macro over a
    lookup (`lookups.payees.exists(p, p.ibna == ...)`), which only evaluation can find."""
    shown = list(problems)
    if not lookups:
        return [p + _UNDECLARED if p.startswith("unknown name 'lookups'") else p for p in shown]
    known: set[str] = set()
    for ref in lookups.values():
        known.update(_fields_reachable(ref, records, set()))
    hinted = []
    for problem in shown:
        match = _UNKNOWN_FIELD.fullmatch(problem)
        hint = suggest(match.group(1), sorted(known)) if match is not None else ""
        hinted.append(problem + hint)
    return hinted


def _fields_reachable(ref: TypeRef, records: Mapping[str, Fields], seen: set[str]) -> set[str]:
    if ref.kind == "list" and ref.item is not None:
        return _fields_reachable(ref.item, records, seen)
    if ref.kind != "record" or ref.name is None or ref.name in seen:
        return set()
    seen.add(ref.name)
    fields = records.get(ref.name, {})
    found = set(fields)
    for field_ref in fields.values():
        found |= _fields_reachable(field_ref, records, seen)
    return found
