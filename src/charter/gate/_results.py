"""Values crossing from a backend into the guest, checked against the contract's types.

A backend may add fields a contract does not declare (a service grows without breaking
its callers): they are dropped, and their JSON paths recorded (`$.internal_cost`,
`$[*].items[*].warehouse`, list positions as `[*]` so a long list names each field once).
Anything else that does not match the declared type (a wrong scalar, a missing required
field, an unknown enum value, money as a float or with more than two places, an
unparsable datetime) is `ResultInvalid`, naming the JSON path of the first bad value.
What passes is the value the guest gets: records as dicts with every declared field
(absent optionals as None), money as Decimal, datetimes parsed.
"""

from __future__ import annotations

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
    value: Any  # what the guest may see
    dropped: tuple[str, ...]  # JSON paths of the undeclared fields left out, sorted


class ResultChecker:
    """Built once per gate table; `check` is one walk to drop extras, one strict `msgspec.convert`."""

    def __init__(self, table: GateTable) -> None:
        self._records = table.records
        self._mapping = TypeMapping(table.records, table.enums, optional_may_be_absent=True)
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
            converted = plain(msgspec.convert(trimmed, annotation, strict=True))
        except msgspec.ValidationError as error:
            text = str(error)
            path = text.rpartition(" - at `")[2].rstrip("`") if " - at `" in text else "$"
            raise ResultInvalid(text if " - at `" in text else f"{text} - at `$`", path) from None
        self._money(ref, trimmed, converted, "$")
        return CheckedResult(converted, tuple(sorted(dropped)))

    def _trim(self, ref: TypeRef, value: Any, path: str, dropped: set[str]) -> Any:
        """`value` without the record fields `ref` does not declare; anything else is left
        for the conversion to judge."""
        if ref.kind == "list" and ref.item is not None and isinstance(value, list | tuple):
            item_path = path + "[*]"
            return [self._trim(ref.item, v, item_path, dropped) for v in value]
        if ref.kind == "record" and ref.name is not None and isinstance(value, Mapping):
            fields = self._records[ref.name]
            kept = {}
            for name, item in value.items():
                field_ref = fields.get(name) if isinstance(name, str) else None
                if field_ref is None:
                    dropped.add(f"{path}.{name}")
                else:
                    kept[name] = self._trim(field_ref, item, f"{path}.{name}", dropped)
            return kept
        return value

    def _money(self, ref: TypeRef, raw: Any, value: Any, path: str) -> None:
        """Money is exact: a float from the backend (already rounded) or a third decimal place is refused."""
        if value is None:
            return
        if ref.kind == "money":
            exponent = value.as_tuple().exponent
            if isinstance(raw, float) or not value.is_finite() or not isinstance(exponent, int):
                raise ResultInvalid(f"Expected money as a decimal string, got {raw!r} - at `{path}`", path)
            if -exponent > MONEY_SCALE:
                raise ResultInvalid(
                    f"Expected money with at most {MONEY_SCALE} decimal places, got {value} - at `{path}`", path
                )
        elif ref.kind == "list" and ref.item is not None:
            for i, (r, v) in enumerate(zip(raw, value, strict=True)):
                self._money(ref.item, r, v, f"{path}[{i}]")
        elif ref.kind == "record" and ref.name is not None:
            for name, field_ref in self._records[ref.name].items():
                self._money(field_ref, raw.get(name), value[name], f"{path}.{name}")
