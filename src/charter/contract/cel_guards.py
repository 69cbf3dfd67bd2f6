"""CEL guards: compile at check time, reject unknown names and fields, type-check.

The `cel` binding exposes compilation and the top-level names an expression uses, but not
field selections or types. So we resolve every `params.a.b` chain against the declared
types ourselves, and type-check by evaluating the guard on typed sample values: CEL does
not coerce between types, so a mismatch such as `params.reason > 3` fails on any sample.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import cel
from cel.stdlib import add_stdlib_to_context

from charter.contract.types import MONEY_SCALE, TypeRef

__all__ = [
    "PRINCIPAL_FIELDS",
    "activation",
    "check_guard",
    "names_used",
    "suggest",
]

PRINCIPAL_FIELDS: dict[str, TypeRef] = {
    "id": TypeRef("str"),
    "scopes": TypeRef("list", item=TypeRef("str")),
}

Fields = Mapping[str, TypeRef]

_STRING_LITERAL = re.compile(r"""(?s)[rR]?(\"\"\".*?\"\"\"|'''.*?'''|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
_CHAIN = re.compile(r"(?<![\w.])([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)+)")
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_SYNTAX = re.compile(r"<input>:(\d+):(\d+): Syntax error: ([^\n]*)")


# Extended functions guards may call (trim, math.greatest, sets.contains...). Encoders are
# left out: a guard has no business decoding base64.
GUARD_LIBRARIES = ("core", "strings", "math", "sets", "lists")


def activation(variables: Mapping[str, Any]) -> cel.Context:
    """A CEL context holding `variables` and the functions guards may call."""
    context = cel.Context(variables=dict(variables))
    add_stdlib_to_context(context, list(GUARD_LIBRARIES))
    return context


def names_used(source: str) -> set[str]:
    """Top-level names a guard refers to; empty if it does not compile."""
    try:
        return set(cel.compile(source).variables())
    except ValueError:
        return set()


def suggest(word: str, candidates: object) -> str:
    """A ' (did you mean 'x'?)' hint, or ''."""
    names = [str(c) for c in candidates]  # type: ignore[attr-defined]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_guard(
    source: str,
    variables: Mapping[str, Fields],
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
) -> list[str]:
    """Every problem with one guard expression, as messages; empty when it is sound.

    `variables` maps each name the guard may use to the fields of its record.
    """
    try:
        program = cel.compile(source)
    except ValueError as exc:
        match = _SYNTAX.search(str(exc))
        if match:
            # ANTLR lists every token it would have accepted; the column says enough.
            detail = match.group(3).split(" expecting ")[0]
            return [f"CEL syntax error at column {match.group(2)}: {detail}"]
        return [f"CEL syntax error: {exc}"]

    blanked = _STRING_LITERAL.sub(lambda m: " " * len(m.group(0)), source)
    bound = set(_MACRO_BINDING.findall(blanked))
    problems: list[str] = []
    for name in program.variables():
        if name not in variables and name not in bound:
            allowed = ", ".join(variables) or "nothing"
            problems.append(f"unknown name '{name}'{suggest(name, variables)}; this guard may use {allowed}")
    for match in _CHAIN.finditer(blanked):
        root = match.group(1)
        if root not in variables:
            continue
        steps = [s.strip() for s in match.group(2).split(".") if s.strip()]
        is_call = blanked[match.end() :].lstrip().startswith("(")
        problems.extend(_walk(root, steps, is_call, variables[root], records))
    if problems:
        return problems

    for sample in (_samples(variables, records, enums, 0), _samples(variables, records, enums, 1)):
        try:
            result = program.execute(activation(sample))
        except TypeError as exc:
            return [
                f"type error: {str(exc).split('. ')[0]} (CEL never converts types; money is an int of cents in guards)"
            ]
        except KeyError as exc:
            return [f"unknown field {exc}"]
        except (RuntimeError, ValueError) as exc:
            return [f"cannot be evaluated: {str(exc).split('. ')[0]}"]
        if not isinstance(result, bool):
            return [f"gives {type(result).__name__}, but a guard must give true or false"]
    return []


def _walk(root: str, steps: list[str], ends_in_call: bool, fields: Fields, records: Mapping[str, Fields]) -> list[str]:
    path, kind = root, "record"
    current: Fields | None = fields
    for index, step in enumerate(steps):
        if current is None:
            if index == len(steps) - 1 and ends_in_call:
                return []  # a method such as startsWith or exists on a non-record value
            return [f"'{path}' is {kind} and has no field '{step}'"]
        if step not in current:
            return [f"'{path}' has no field '{step}'{suggest(step, current)}"]
        path = f"{path}.{step}"
        ref = current[step]
        kind = str(ref)
        current = records.get(ref.name or "") if ref.kind == "record" else None
    return []


def _sample(ref: TypeRef, records: Mapping[str, Fields], enums: Mapping[str, Sequence[str]], n: int) -> Any:
    if ref.kind == "list":
        assert ref.item is not None
        return [_sample(ref.item, records, enums, n)]
    if ref.kind == "record":
        return {k: _sample(v, records, enums, n) for k, v in records[ref.name or ""].items()}
    if ref.kind == "enum":
        values = enums[ref.name or ""]
        return values[min(n, len(values) - 1)]
    base: dict[str, Any] = {
        "str": "ab"[: n + 1],
        "int": n,
        "float": float(n),
        "bool": bool(n),
        "money": n * 10**MONEY_SCALE,
        "datetime": dt.datetime(2000, 1, 1 + n, tzinfo=dt.UTC),
    }
    return base[ref.kind]


def _samples(
    variables: Mapping[str, Fields],
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
    n: int,
) -> dict[str, Any]:
    return {name: {k: _sample(v, records, enums, n) for k, v in fields.items()} for name, fields in variables.items()}
