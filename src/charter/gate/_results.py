"""Values crossing from a backend into the guest, checked against the contract's types.

A backend may add fields a contract does not declare (a service grows without breaking
its callers): they are dropped, and their JSON paths recorded (`$.internal_cost`,
`$[*].items[*].warehouse`, list positions as `[*]` so a long list names each field once).
Anything else that does not match the declared type (a wrong scalar, a missing required
field, an unknown enum value, money as a float, an int or with more than two places, an
int beyond 64 bits, an unparsable datetime or one without a UTC offset, a date that is not
exactly YYYY-MM-DD of a real day, or a datetime where a date is declared) is `ResultInvalid`,
naming the JSON path of the first bad value and the declared type there, never the value
itself (it is the backend's data: msgspec's own messages quote values, so they are
rewritten). Results follow the rules arguments do, so whatever a program receives it
could send back. What passes is the value the guest gets, converted by msgspec (records
as Structs with every declared field, absent optionals None; money as Decimal; datetimes
and dates parsed).
"""

from __future__ import annotations

import datetime
import decimal
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from charter.compiler.artifact import GateTable
from charter.contract.types import MONEY_SCALE, TypeRef, parse_money
from charter.gate._arguments import TypeMapping, plain

__all__ = ["CheckedResult", "ResultChecker", "ResultInvalid"]


class ResultInvalid(ValueError):
    """A backend value that does not have its declared type. `path` is its JSON path (`$.id`)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, slots=True)
class CheckedResult:
    value: Any  # what the guest may see, records as msgspec Structs (encode it, or `plain()` it)
    dropped: tuple[str, ...]  # JSON paths of the undeclared fields left out, sorted

    def plain(self) -> Any:
        """The value with records as dicts of every declared field (absent optionals as None)."""
        return plain(self.value)


class ResultChecker:
    """Built once per gate table; `check` is one walk to drop extras, one strict `msgspec.convert`."""

    def __init__(self, table: GateTable) -> None:
        self._records = table.records
        self._mapping = TypeMapping(table.records, table.enums)
        self._annotations: dict[TypeRef, Any] = {}

    def check(self, ref: TypeRef | None, value: Any) -> CheckedResult:
        """`value` as type `ref` (None: the operation returns nothing), or ResultInvalid."""
        if ref is None:
            return CheckedResult(None, () if value is None else ("$",))
        dropped: set[str] = set()
        trimmed = self._trim(ref, value, "$", dropped)
        annotation = self._annotations.get(ref)
        if annotation is None:
            annotation = self._annotations[ref] = self._mapping.annotation(ref)
        try:
            converted = msgspec.convert(trimmed, annotation, strict=True)
        except msgspec.ValidationError as error:
            text = str(error)
            said, _, path = text.rpartition(" - at `") if " - at `" in text else (text, "", "$`")
            path = path.rstrip("`")
            if not any(p.fullmatch(said) for p in _SAFE_MESSAGES):  # it may quote the value
                said = f"Expected {self._declared(ref, path)}"
            raise ResultInvalid(f"{said} - at `{path}`", path) from None
        return CheckedResult(converted, tuple(sorted(dropped)))

    def _declared(self, ref: TypeRef, path: str) -> str:
        """The declared type at `path` in words (`OrderStatus (an enum)`), from the contract alone."""
        at: TypeRef | None = ref
        for name, _ in _STEP.findall(path[1:]):
            if at is None:
                break
            if name:
                record = self._records.get(at.name or "") if at.kind == "record" else None
                at = record.get(name) if record is not None else None
            else:
                at = at.item if at.kind == "list" else None
        if at is None:
            return f"the declared type {ref}"
        if at.kind in ("enum", "record"):
            return f"`{at}` (a contract {at.kind})"
        return f"`{at}`"

    def _trim(self, ref: TypeRef, value: Any, path: str, dropped: set[str]) -> Any:
        """`value` without the record fields `ref` does not declare, its money checked; any
        other mismatch is left for the conversion to judge. One walk over the value."""
        kind = ref.kind
        if value is None or kind in _LEAVES:
            return value
        if kind in _SCALAR_RULES:
            _SCALAR_RULES[kind](value, path)
            return value
        if kind == "list" and ref.item is not None and isinstance(value, list | tuple):
            if ref.item.kind in _LEAVES:
                return value
            return [self._trim(ref.item, v, f"{path}[{i}]", dropped) for i, v in enumerate(value)]
        if kind == "record" and ref.name is not None and isinstance(value, Mapping):
            fields = self._records[ref.name]
            kept = {}
            for name, item in value.items():
                field_ref = fields.get(name) if isinstance(name, str) else None
                if field_ref is None:
                    dropped.add(_INDEX.sub("[*]", f"{path}.{name}"))
                elif field_ref.kind in _LEAVES or item is None:
                    kept[name] = item
                else:
                    kept[name] = self._trim(field_ref, item, f"{path}.{name}", dropped)
            return kept
        return value


_INDEX = re.compile(r"\[\d+\]")  # a list position, named `[*]` in dropped paths
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")  # one step of a JSON path: `.name` or `[3]`
_LEAVES = frozenset({"str", "bool", "enum"})  # msgspec alone judges these
_MAX_INT = 2**63 - 1  # as the wire decoder and the guest's proxies bound arguments
# msgspec messages that name only types and declared fields, never a value; any other is rewritten
_SAFE_MESSAGES = (
    re.compile(r"Expected `[a-z]+( \| [a-z]+)*`, got `[a-z]+`"),
    re.compile(r"Object missing required field `[A-Za-z_][A-Za-z0-9_]*`"),
)


def _check_int(value: Any, path: str) -> None:
    if type(value) is int and not -_MAX_INT - 1 <= value <= _MAX_INT:
        raise ResultInvalid(f"Expected `int` that fits in 64 bits - at `{path}`", path)


def _check_float(value: Any, path: str) -> None:
    _check_int(value, path)
    if type(value) is float and not math.isfinite(value):
        raise ResultInvalid(f"Expected a finite `float` - at `{path}`", path)


def _check_datetime(value: Any, path: str) -> None:
    """A datetime has a UTC offset (RFC 3339): a naive one means no instant a guard could compare."""
    if isinstance(value, str):
        try:
            value = msgspec.convert(value, datetime.datetime)
        except msgspec.ValidationError:
            return  # not a datetime at all: the conversion names it
    if isinstance(value, datetime.datetime) and value.utcoffset() is None:
        raise ResultInvalid(f"Expected `datetime` with a UTC offset (RFC 3339) - at `{path}`", path)


def _check_money(value: Any, path: str) -> None:
    """Money is exact: a float from a backend (already rounded), an int (a decimal string or a
    Decimal is what a program sends), text other than ASCII digits with at most two places
    or a third decimal place is refused. No message quotes the value."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ResultInvalid(f"Expected money as a decimal string, got {type(value).__name__} - at `{path}`", path)
    if isinstance(value, str):
        try:  # exactly ASCII digits: Decimal() alone would take "1e1", " 1" or full-width digits
            parse_money(value)
        except ValueError as error:
            raise ResultInvalid(f"{error} - at `{path}`", path) from None
        return
    if isinstance(value, decimal.Decimal):
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int):
            raise ResultInvalid(f"Expected a finite amount of money - at `{path}`", path)
        if -exponent > MONEY_SCALE:
            raise ResultInvalid(f"Expected money with at most {MONEY_SCALE} decimal places - at `{path}`", path)


_SCALAR_RULES = {"int": _check_int, "float": _check_float, "datetime": _check_datetime, "money": _check_money}
