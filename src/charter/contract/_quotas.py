"""Checks of quotas over time (contract v2): ids, the `sum` and `per` expressions, the window, the max.

    quotas:
      - {id: daily_outflow, sum: params.amount, per: [params.account], window: 24h, max: 200000, message: ...}

`sum` is CEL giving an int or money (money in integer cents, as guards see it), never null;
each `per` key is CEL giving a scalar (str, int, bool, an enum or a date). Both see the same
variables as the operation's guards. The window is `<n>m`, `<n>h`, `<n>d` or `run`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import cel

from charter.contract.cel_guards import Fields, activation, check_guard, sample_variables, suggest
from charter.contract.model import Operation, Quota, RuleRef
from charter.contract.types import TypeRef

if TYPE_CHECKING:
    from charter.contract.checker import _Checker

__all__ = [
    "MAX_QUOTA",
    "WINDOW_FORMS",
    "amount_text",
    "check_quota_ref",
    "check_quotas",
    "duration_seconds",
    "notation",
    "parse_window",
    "sums_money",
]

# ASCII digits of any length: a length past the longest window is "too long", not "malformed".
_WINDOW = re.compile(r"([1-9][0-9]*)([mhd])\Z")
_WINDOW_DIGITS = 6  # 366d is 527040m: more digits than this is always too long
_PAST_ANY_LIMIT = 10_000_000 * 86400  # the length said for more digits than that
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
_CHAIN = re.compile(r"\s*([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)+)\s*\Z")
WINDOW_FORMS = (
    "<n>m, <n>h or <n>d (e.g. 90m, 24h, 30d; a sliding window on the gate's UTC clock) or run (this run only)"
)
MAX_QUOTA = 2**53 - 1  # an integer every JSON reader keeps exactly
MAX_WINDOW_DAYS = 366
_KEY_KINDS = ("str", "int", "bool", "enum", "date")


def duration_seconds(text: str) -> int | None:
    """`<n>m`, `<n>h` or `<n>d` in seconds; None when `text` is not of that form. More digits
    than any limit needs count as a length past every limit (never parsed as a huge int)."""
    match = _WINDOW.match(text)
    if match is None:
        return None
    digits = match.group(1)
    if len(digits) > _WINDOW_DIGITS:
        return _PAST_ANY_LIMIT
    return int(digits) * _UNIT_SECONDS[match.group(2)]


def parse_window(text: str) -> int | None:
    """The window's length in seconds, or None for `run`. ValueError naming the accepted forms."""
    if text == "run":
        return None
    seconds = duration_seconds(text)
    if seconds is None:
        raise ValueError(f"window '{text}' is not one of {WINDOW_FORMS}")
    if seconds > MAX_WINDOW_DAYS * 86400:
        raise ValueError(f"window '{text}' is longer than {MAX_WINDOW_DAYS} days, the longest a quota may count")
    return seconds


def sums_money(source: str | None, params: Mapping[str, TypeRef]) -> bool:
    """Whether a quota's `sum` is a money param (its totals are then shown as money)."""
    match = _CHAIN.match(source or "")
    if match is None or match.group(1) != "params":
        return False
    steps = [s.strip() for s in match.group(2).split(".") if s.strip()]
    return len(steps) == 1 and steps[0] in params and params[steps[0]].kind == "money"


def amount_text(value: int, money: bool) -> str:
    """A quota amount as people read it: money from integer cents (150000 -> 1500.00)."""
    if not money:
        return str(value)
    sign, cents = ("-" if value < 0 else ""), abs(value)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def notation(max_: int, window: str, per: Sequence[str], *, money: bool) -> str:
    """The compact form the prompt shows: `quota 2000.00/24h per account`, `quota 3/run per order, kind`."""
    keys = ", ".join(k.strip().removeprefix("params.") for k in per)
    return f"quota {amount_text(max_, money)}/{window}" + (f" per {keys}" if keys else "")


def check_quotas(checker: _Checker, name: str, op: Operation, variables: Mapping[str, Fields]) -> None:
    """Every problem with operation `name`'s quotas, reported on `checker`; `variables` are its guards'."""
    for index, quota in enumerate(op.quotas):
        path = ("operations", name, "quotas", index)
        why = " (the audit log counts by contract name and quota id)"
        checker.claim_id((*path, "id"), "quota", quota.id, name, checker.quota_ids, why)
        try:
            parse_window(quota.window)
        except ValueError as error:
            checker.fail((*path, "window"), f"quota '{quota.id}': {error}")
        if quota.max == 0:
            checker.fail(
                (*path, "max"),
                f"quota '{quota.id}': max 0 refuses every call; remove the operation or its scopes instead",
            )
        elif quota.max > MAX_QUOTA:
            checker.fail((*path, "max"), f"quota '{quota.id}': max {quota.max} is above {MAX_QUOTA}")
        if name in checker.unresolved:
            continue
        if quota.sum is not None:
            _check_sum(checker, path, quota, variables)
        for kindex, key in enumerate(quota.per):
            _check_key(checker, (*path, "per", kindex), quota, key, variables)
        _warn_keys(checker, path, quota)


def check_quota_ref(checker: _Checker, boundary: str, rule: RuleRef, path: tuple[str | int, ...]) -> None:
    """A boundary `enforced_by: [{quota: <id>}]`: the quota must exist."""
    if rule.quota is not None and rule.quota not in checker.quota_ids:
        checker.fail(
            (*path, "quota"),
            f"boundary '{boundary}' is enforced by unknown quota '{rule.quota}'"
            + suggest(rule.quota, checker.quota_ids),
        )


def _check_sum(checker: _Checker, path: tuple[str | int, ...], quota: Quota, variables: Mapping[str, Fields]) -> None:
    where = (*path, "sum")
    source = quota.sum or ""
    problems, value = _typed(checker, source, variables, null_ok=False)
    if problems:
        for problem in problems:
            checker.fail(where, f"quota '{quota.id}': sum: {problem}")
        return
    declared = _declared(source, variables, checker.records)
    kind = str(declared) if declared is not None else _kind_of(value)
    numeric = declared.kind in ("int", "money") if declared is not None else kind == "int"
    if not numeric:
        checker.fail(
            where,
            f"quota '{quota.id}': sum `{source}` is {kind}, but a sum must be an int or money (money counts in "
            "integer cents); use `count: true` to count calls",
        )


def _check_key(
    checker: _Checker, where: tuple[str | int, ...], quota: Quota, source: str, variables: Mapping[str, Fields]
) -> None:
    problems, value = _typed(checker, source, variables, null_ok=True)
    if problems:
        for problem in problems:
            checker.fail(where, f"quota '{quota.id}': per key: {problem}")
        return
    declared = _declared(source, variables, checker.records)
    kind = declared.kind if declared is not None else _kind_of(value)
    if kind not in _KEY_KINDS:
        shown = str(declared) if declared is not None else kind
        checker.fail(
            where,
            f"quota '{quota.id}': per key `{source}` is {shown}, but a key must be a scalar: {', '.join(_KEY_KINDS)}",
        )


def _warn_keys(checker: _Checker, path: tuple[str | int, ...], quota: Quota) -> None:
    if not quota.per:
        checker.warnings.append(
            checker.source.problem(
                (*path, "id"),
                f"warning: quota '{quota.id}' has no `per` keys, so every caller shares one total; key it by "
                "what it protects, e.g. per: [params.account]",
            )
        )
    elif all(_root(k) == "principal" for k in quota.per):
        checker.warnings.append(
            checker.source.problem(
                (*path, "per"),
                f"warning: quota '{quota.id}' is keyed only by the principal, so a second token for the same "
                "account doubles it; key it by what it protects, e.g. per: [params.account]",
            )
        )


def _typed(checker: _Checker, source: str, variables: Mapping[str, Fields], *, null_ok: bool) -> tuple[list[str], Any]:
    """(problems, the value on a typed sample) of an expression that gives a value, not a bool."""
    found = check_guard(source, variables, checker.records, checker.enums)
    # A guard must give a bool; a quota's expression gives a value, and a key may be null.
    problems = [
        p.replace("this guard may use", "this quota may use")
        for p in found
        if not p.startswith("gives ") and not (null_ok and "may be null" in p)
    ]
    if problems:
        return problems, None
    program = cel.compile(source)
    value: Any = None
    for n, all_null in ((0, False), (1, False), (1, True)):
        try:
            sample = sample_variables(variables, checker.records, checker.enums, n, all_null=all_null)
            value_n = program.execute(activation(sample))
        except (ArithmeticError, IndexError):
            continue  # depends on the values, not the types (the gate fails closed on it)
        except Exception as error:
            return [f"cannot be evaluated: {str(error).split('. ')[0]}"], None
        if value_n is None and not null_ok:
            return ["may be null when an optional value is; test it first, e.g. `x != null ? x : 0`"], None
        if n == 1 and not all_null:
            value = value_n
    return [], value


def _root(source: str) -> str | None:
    match = _CHAIN.match(source)
    return match.group(1) if match else None


def _declared(source: str, variables: Mapping[str, Fields], records: Mapping[str, Fields]) -> TypeRef | None:
    """The declared type of a plain chain such as `params.amount`, else None."""
    match = _CHAIN.match(source)
    if match is None or match.group(1) not in variables:
        return None
    current: Mapping[str, TypeRef] | None = variables[match.group(1)]
    ref: TypeRef | None = None
    for step in (s.strip() for s in match.group(2).split(".") if s.strip()):
        if current is None or step not in current:
            return None
        ref = current[step]
        current = records.get(ref.name or "") if ref.kind == "record" else None
    return ref


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, dt.date):
        return "date"
    names = {str: "str", float: "float", list: "list", dict: "map", bytes: "bytes", type(None): "null"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)
