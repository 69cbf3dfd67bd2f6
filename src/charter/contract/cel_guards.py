"""CEL guards: compile at check time, reject unknown names, functions and fields, type-check.

The `cel` binding exposes compilation and the top-level names an expression uses, but not
field selections or types. So we resolve every `params.a.b` chain against the declared
types ourselves, and type-check by evaluating the guard on typed sample values: CEL does
not coerce between types, so a mismatch such as `params.reason > 3` fails on any sample.

Optional values are null when absent (the gate passes an omitted optional param as a
present null, so `has(params.x)` is true for every declared param): the guard is also
evaluated with each optional value null on its own, then with all of them null at once,
so a guard that does not test `x != null` first fails here rather than at run time.
Each optional alone plus all together keeps the tries linear in the number of optional
values, where every combination would be exponential.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import cel
from cel.stdlib import EXTENSIONS, add_stdlib_to_context

from charter.contract.types import MONEY_SCALE, TypeRef
from charter.principal import same_principal

__all__ = [
    "GUARD_FUNCTIONS",
    "PRINCIPAL_FIELDS",
    "activation",
    "cel_date",
    "check_guard",
    "names_used",
    "raw_principal_comparisons",
    "sample_variables",
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
# CEL's own functions (the macros has, all, exists, exists_one, map, filter are syntax).
_CEL_FUNCTIONS = (
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "timestamp",
    "duration",
    "type",
    "dyn",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
)
# Charter's own: same_principal(a, b) compares principal ids by their TR39 confusable
# skeletons, so a four-eyes rule also refuses a look-alike id (charter.principal).
_CHARTER_FUNCTIONS = {"same_principal": same_principal}
GUARD_FUNCTIONS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [*_CEL_FUNCTIONS, *(name for lib in GUARD_LIBRARIES for name in EXTENSIONS[lib]), *_CHARTER_FUNCTIONS]
    )
)
# How the compiled program names a function: its last part ('math.greatest' -> 'greatest').
_FUNCTION_TAILS = {name.rsplit(".", 1)[-1] for name in GUARD_FUNCTIONS}
_NAMESPACES = {name.split(".")[0] for name in GUARD_FUNCTIONS if "." in name}
_FLOAT = r"(?:\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)"
_OPERATOR = r"(?:<=|>=|==|!=|<|>|\+|-|\*|/)"
_FLOAT_AFTER = re.compile(rf"\s*{_OPERATOR}\s*({_FLOAT})(?![\w.])")
_FLOAT_BEFORE = re.compile(rf"(?<![\w.])({_FLOAT})\s*{_OPERATOR}\s*\Z")
_IDENTIFIER = re.compile(r"[A-Za-z]\w*")
_UNDEFINED = re.compile(r"Undefined variable or function: '([^']*)'")
# Samples of records that contain themselves (through an optional or a list) stop here.
_SAMPLE_DEPTH = 3


def cel_date(value: dt.date) -> dt.datetime:
    """A `date` as guards see it: the timestamp of its midnight UTC, so it compares with
    timestamps and datetimes and takes duration arithmetic (CEL has no date type)."""
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


def activation(variables: Mapping[str, Any]) -> cel.Context:
    """A CEL context holding `variables` and the functions guards may call."""
    context = cel.Context(variables=dict(variables))
    add_stdlib_to_context(context, list(GUARD_LIBRARIES))
    for name, function in _CHARTER_FUNCTIONS.items():
        context.add_function(name, function)
    return context


def names_used(source: str) -> set[str]:
    """Top-level names a guard refers to; empty if it does not compile."""
    try:
        return set(cel.compile(source).variables())
    except Exception:  # a guard that does not compile uses no names; check reports it
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
    except Exception as exc:  # ValueError for syntax; anything else must not escape check either
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
        if name not in variables and name not in bound and name not in _NAMESPACES:
            allowed = ", ".join(variables) or "nothing"
            problems.append(f"unknown name '{name}'{suggest(name, variables)}; this guard may use {allowed}")
    for name in program.functions():
        if _IDENTIFIER.fullmatch(name) and name not in _FUNCTION_TAILS:  # operators are '_+_', '!_', '@in'...
            written = _written_function(blanked, name)
            problems.append(
                f"unknown function '{written}'{suggest(written, GUARD_FUNCTIONS)}; guards may call "
                f"{', '.join(GUARD_FUNCTIONS)}"
            )
    money_chains: list[tuple[int, int, str]] = []  # (start, end, text) of chains that give money
    float_chains: list[tuple[int, int, str]] = []  # ... and of chains that give a float
    for match in _CHAIN.finditer(blanked):
        root = match.group(1)
        if root not in variables:
            continue
        steps = [s.strip() for s in match.group(2).split(".") if s.strip()]
        is_call = blanked[match.end() :].lstrip().startswith("(")
        found, ref = _walk(root, steps, is_call, variables[root], records)
        problems.extend(found)
        if ref is not None and ref.kind == "money" and not is_call:
            money_chains.append((match.start(), match.end(), ".".join([root, *steps])))
        elif ref is not None and ref.kind == "float" and not is_call:
            float_chains.append((match.start(), match.end(), ".".join([root, *steps])))
    literal_found = False
    for start, end, chain in money_chains:
        literal = _FLOAT_AFTER.match(blanked, end) or _FLOAT_BEFORE.search(blanked[:start])
        if literal is not None:
            literal_found = True
            problems.append(_money_float(chain, literal.group(1)))
    if not literal_found:
        problems.extend(_money_mixed_with_float(blanked, money_chains, float_chains))
    if problems:
        return problems

    for n in (0, 1):
        failure = _evaluate(program, _samples(variables, records, enums, n, frozenset()))
        if failure is not None:
            return [failure]
    return _null_problems(program, variables, records, enums)


# `principal.id == x`, `x != principal.id`: operands are chains, literals or calls we can name.
_PRINCIPAL_ID = r"principal\s*\.\s*id(?![\w(])"
_OPERAND = r"[A-Za-z_][\w.]*(?:\(\))?|\"[^\"]*\"|'[^']*'"
_ID_COMPARISONS = (
    re.compile(rf"(?<![\w.])(?P<id>{_PRINCIPAL_ID})\s*(?P<op>==|!=)\s*(?P<other>{_OPERAND})?"),
    re.compile(rf"(?P<other>{_OPERAND})?\s*(?P<op>==|!=)\s*(?<![\w.])(?P<id>{_PRINCIPAL_ID})"),
)


def raw_principal_comparisons(source: str) -> list[tuple[int, str]]:
    """Each `principal.id ==` / `!=` comparison in a guard, as (offset of `principal`, advice).

    Equality of ids lets a look-alike through: a four-eyes rule `entity.submitted_by !=
    principal.id` holds for 'alice' spelt with a Cyrillic U+0430 approving what 'alice' submitted. The advice
    names same_principal(a, b), which compares TR39 confusable skeletons.
    """
    blanked = _STRING_LITERAL.sub(lambda m: "_" * len(m.group(0)), source)
    found: dict[int, str] = {}
    for pattern in _ID_COMPARISONS:
        for match in pattern.finditer(blanked):
            start = match.start("id")
            if start in found:
                continue
            written = re.sub(r"\s+", "", match.group("id"))
            op = match.group("op")
            other = match.group("other")
            if other is not None:
                other = source[match.start("other") : match.end("other")]
            operands = f"{other}, {written}" if other else f"..., {written}"
            rewrite = f"same_principal({operands})" if op == "==" else f"!same_principal({operands})"
            found[start] = (
                f"compares {written} with {op}, which a look-alike id passes (a Cyrillic 'а' for 'a'); "
                f"write {rewrite}, which compares confusable skeletons (Unicode TR39)"
            )
    return sorted(found.items())


def _written_function(blanked: str, name: str) -> str:
    """The function as the guard spells it: 'math.gretest' rather than 'gretest'."""
    match = re.search(rf"(?<![\w.])([A-Za-z_]\w*)\s*\.\s*{re.escape(name)}\s*\(", blanked)
    if match is not None and match.group(1) in _NAMESPACES:
        return f"{match.group(1)}.{name}"
    return name


def _money_float(chain: str, literal: str) -> str:
    hint = "write the amount as an integer number of cents"
    try:
        cents = Decimal(literal).scaleb(2)
        if cents == cents.to_integral_value():
            hint = f"write {int(cents)} for {Decimal(literal).quantize(Decimal('0.01'))}"
    except InvalidOperation:
        pass
    return f"{chain} is money, compared with the float {literal}; money is integer cents in guards: {hint}"


_ENDS_IN_NAME = re.compile(r"\w\s*\Z")
_DOUBLE_CALL = re.compile(r"(?<![\w.])double\s*\(")


def _operand_groups(blanked: str) -> list[int]:
    """For each character, the operand group it belongs to.

    A group is the stretch of an expression whose operands meet through comparison and
    arithmetic operators, and so must be of one numeric kind: `&&`, `||`, `!`, `?`, `:` and `,`
    end a group, and a call's arguments (`int(...)`, `size(...)`) form groups of their own, since
    the call converts or measures them. Grouping parentheses do not separate anything.
    """
    groups = [0] * len(blanked)
    stack: list[tuple[int, bool]] = []  # (the group outside, whether this parenthesis is a call)
    current, fresh = 0, 0
    index = 0
    while index < len(blanked):
        char = blanked[index]
        pair = blanked[index : index + 2]
        if pair in ("&&", "||"):
            fresh += 1
            current = fresh
            groups[index] = groups[index + 1] = current
            index += 2
            continue
        if char in "([{":
            separate = char != "(" or bool(_ENDS_IN_NAME.search(blanked[:index]))  # a call, list or map
            stack.append((current, separate))
            if separate:
                fresh += 1
                current = fresh
        elif char in ")]}":
            if stack:
                outside, separate = stack.pop()
                if separate:
                    current = outside
        elif char in "?:,!" and blanked[index : index + 2] != "!=":
            fresh += 1
            current = fresh
        groups[index] = current
        index += 1
    return groups


def _money_mixed_with_float(
    blanked: str, money: list[tuple[int, int, str]], floats: list[tuple[int, int, str]]
) -> list[str]:
    """A money value and a float value that meet in one comparison or sum: CEL compares an int
    with a double, so `params.amount <= params.ratio` would compare cents with the float."""
    if not money:
        return []
    groups = _operand_groups(blanked)
    float_values = [(start, text) for start, _, text in floats]
    float_values += [(m.start(), "double(...)") for m in _DOUBLE_CALL.finditer(blanked)]
    problems: list[str] = []
    for start, _, chain in money:
        mixed = [text for at, text in float_values if groups[at] == groups[start]]
        if mixed:
            problems.append(
                f"{chain} is money, mixed with the float {mixed[0]}; money is integer cents in guards and CEL "
                f"would compare the cents with the float: keep the float out of money arithmetic, or convert it "
                f"to cents explicitly, e.g. int({mixed[0] if mixed[0] != 'double(...)' else 'x'} * 100.0)"
            )
    return problems


def _evaluate(program: Any, sample: Mapping[str, Any]) -> str | None:
    """Why the guard fails on `sample`, or None when it gives true or false."""
    try:
        result = program.execute(activation(sample))
    except (ArithmeticError, IndexError):
        # Division by zero, overflow, an index past the end: they depend on the values, not the
        # types, so this sample proves nothing wrong. At run time the gate fails closed on them
        # (the call is denied, GATE_ERROR naming the guard), as on any guard that cannot be evaluated.
        return None
    except TypeError as exc:
        return f"type error: {str(exc).split('. ')[0]} (CEL never converts types; money is an int of cents in guards)"
    except KeyError as exc:
        return f"unknown field {exc}"
    except (RuntimeError, ValueError) as exc:
        undefined = _UNDEFINED.search(str(exc))
        if undefined is not None and undefined.group(1) in _FUNCTION_TAILS:
            # A function guards may call, applied to a value it is not defined for.
            return (
                f"type error: {undefined.group(1)}() is not defined for the given argument types "
                "(CEL never converts types; money is an int of cents in guards)"
            )
        return f"cannot be evaluated: {str(exc).split('. ')[0]}"
    except Exception as exc:  # the CEL binding may raise any type; never a traceback from check
        return f"cannot be evaluated: {type(exc).__name__}: {str(exc).split('. ')[0]}"
    if not isinstance(result, bool):
        return f"gives {type(result).__name__}, but a guard must give true or false"
    return None


Nullable = tuple[str, ...]  # where an optional value sits: ("params", "amount"), ("params", "xs", "[]")


def _null_problems(
    program: Any,
    variables: Mapping[str, Fields],
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
) -> list[str]:
    nullable = list(dict.fromkeys(_nullable(variables, records)))
    if not nullable:
        return []
    culprits = [p for p in nullable if _evaluate(program, _samples(variables, records, enums, 1, frozenset({p})))]
    if not culprits and _evaluate(program, _samples(variables, records, enums, 1, frozenset(nullable))):
        # Fails only when several are null together: those whose value alone repairs it.
        everything = frozenset(nullable)
        culprits = [
            p for p in nullable if not _evaluate(program, _samples(variables, records, enums, 1, everything - {p}))
        ] or nullable[:1]
    return [_may_be_null(p) for p in culprits]


def _may_be_null(path: Nullable) -> str:
    if path[-1] == "[]":
        chain = ".".join(p for p in path[:-1] if p != "[]")
        return f"items of {chain} may be null; test each item != null first"
    chain = ".".join(p for p in path if p != "[]")
    return f"{chain} may be null; test {chain} != null first"


def _nullable(variables: Mapping[str, Fields], records: Mapping[str, Fields]) -> Iterator[Nullable]:
    def walk(ref: TypeRef, path: Nullable, depth: int) -> Iterator[Nullable]:
        if ref.optional:
            yield path
        if depth >= _SAMPLE_DEPTH:
            return
        if ref.kind == "list" and ref.item is not None:
            yield from walk(ref.item, (*path, "[]"), depth + 1)
        elif ref.kind == "record":
            for name, field in records.get(ref.name or "", {}).items():
                yield from walk(field, (*path, name), depth + 1)

    for root, fields in variables.items():
        for name, ref in fields.items():
            yield from walk(ref, (root, name), 0)


def _walk(
    root: str, steps: list[str], ends_in_call: bool, fields: Fields, records: Mapping[str, Fields]
) -> tuple[list[str], TypeRef | None]:
    """(problems, the chain's type) for `root.step.step...`; the type is None after a method."""
    path, kind = root, "record"
    current: Fields | None = fields
    ref: TypeRef | None = None
    for index, step in enumerate(steps):
        if current is None:
            if index == len(steps) - 1 and ends_in_call:
                return [], None  # a method such as startsWith or exists on a non-record value
            return [f"'{path}' is {kind} and has no field '{step}'"], None
        if step not in current:
            return [f"'{path}' has no field '{step}'{suggest(step, current)}"], None
        path = f"{path}.{step}"
        ref = current[step]
        kind = str(ref)
        current = records.get(ref.name or "") if ref.kind == "record" else None
    return [], ref


def _sample(
    ref: TypeRef,
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
    n: int,
    path: Nullable,
    nulls: frozenset[Nullable],
) -> Any:
    if ref.optional and path in nulls:
        return None
    depth = len(path) - 2
    if ref.kind == "list":
        assert ref.item is not None
        if depth >= _SAMPLE_DEPTH:
            return []
        return [_sample(ref.item, records, enums, n, (*path, "[]"), nulls)]
    if ref.kind == "record":
        if depth >= _SAMPLE_DEPTH and ref.optional:
            return None  # a record that contains itself ends here
        fields = records[ref.name or ""]
        return {k: _sample(v, records, enums, n, (*path, k), nulls) for k, v in fields.items()}
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
        "date": cel_date(dt.date(2000, 1, 1 + n)),
    }
    return base[ref.kind]


def _samples(
    variables: Mapping[str, Fields],
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
    n: int,
    nulls: frozenset[Nullable],
) -> dict[str, Any]:
    """One value per variable; the optional values at `nulls` are null."""
    return {
        name: {k: _sample(v, records, enums, n, (name, k), nulls) for k, v in fields.items()}
        for name, fields in variables.items()
    }


def sample_variables(
    variables: Mapping[str, Fields],
    records: Mapping[str, Fields],
    enums: Mapping[str, Sequence[str]],
    n: int,
    *,
    all_null: bool = False,
) -> dict[str, Any]:
    """Typed sample values of `variables` (n = 0 or 1), as a rule's CEL sees them; with `all_null`,
    every optional value is null. For rules that give a value rather than a bool (quota sums and keys)."""
    nulls = frozenset(_nullable(variables, records)) if all_null else frozenset()
    return _samples(variables, records, enums, n, nulls)
