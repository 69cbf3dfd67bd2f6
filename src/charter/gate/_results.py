"""Values crossing from a backend into the guest, checked against the contract's types.

A backend may add fields a contract does not declare (a service grows without breaking
its callers): they are dropped, and their JSON paths recorded (`$.internal_cost`,
`$[*].items[*].warehouse`, list positions as `[*]` so a long list names each field once).
Anything else that does not match the declared type (a wrong scalar, a missing required
field, an unknown enum value, money as a float or with more than two places, an
unparsable datetime) is `ResultInvalid`, naming the JSON path of the first bad value.
What passes is the value the guest gets, converted by msgspec (records as Structs with
every declared field, absent optionals None; money as Decimal; datetimes parsed).
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from charter.compiler.artifact import GateTable
from charter.contract.types import MONEY_SCALE, TypeRef
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
            if " - at `" not in text:
                raise ResultInvalid(f"{text} - at `$`", "$") from None
            raise ResultInvalid(text, text.rpartition(" - at `")[2].rstrip("`")) from None
        return CheckedResult(converted, tuple(sorted(dropped)))

    def _trim(self, ref: TypeRef, value: Any, path: str, dropped: set[str]) -> Any:
        """`value` without the record fields `ref` does not declare, its money checked; any
        other mismatch is left for the conversion to judge. One walk over the value."""
        kind = ref.kind
        if value is None or kind in _LEAVES:
            return value
        if kind == "money":
            _check_money(value, path)
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
_LEAVES = frozenset({"str", "int", "float", "bool", "datetime", "enum"})  # msgspec alone judges these


def _check_money(value: Any, path: str) -> None:
    """Money is exact: a float from a backend (already rounded) or a third decimal place is refused.
    A value that is no number at all is left for the conversion to name."""
    if isinstance(value, float):
        raise ResultInvalid(f"Expected money as a decimal string, got {value!r} - at `{path}`", path)
    if isinstance(value, str):
        try:
            value = decimal.Decimal(value)
        except decimal.InvalidOperation:
            return
    if isinstance(value, decimal.Decimal):
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int):
            raise ResultInvalid(f"Expected a finite amount of money, got {value} - at `{path}`", path)
        if -exponent > MONEY_SCALE:
            raise ResultInvalid(
                f"Expected money with at most {MONEY_SCALE} decimal places, got {value} - at `{path}`", path
            )
