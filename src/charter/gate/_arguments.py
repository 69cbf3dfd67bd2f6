"""Arguments of a call, checked against the operation's declared parameter types.

Each operation gets a msgspec Struct built once from its parameters, so a check is
one `msgspec.convert` and its error names the field (`$.amount`).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from charter.compiler.artifact import GateTable, ParamSpec
from charter.contract.types import MONEY_SCALE, TypeRef

__all__ = ["ArgumentChecker", "InvalidArguments", "TypeMapping", "plain"]


class InvalidArguments(ValueError):
    """`field` is the JSON path of the offending value, e.g. `$.amount`."""


class _Money:
    """Marker: a Decimal with at most MONEY_SCALE places, never sent as a float."""


class TypeMapping:
    """Contract types as msgspec annotations: one mapping for everything the gate checks.

    Records become Structs that forbid unknown fields. With `optional_may_be_absent`, a
    record's optional field may also be left out (results: `T?` is "T or absent");
    without it, it must be present, possibly null.
    """

    def __init__(
        self,
        records: Mapping[str, Mapping[str, TypeRef]],
        enums: Mapping[str, tuple[str, ...]],
        *,
        optional_may_be_absent: bool = False,
    ) -> None:
        self._records = records
        self._enums = enums
        self._absent = optional_may_be_absent
        self._record_types: dict[str, Any] = {}

    def annotation(self, ref: TypeRef) -> Any:
        base: Any
        if ref.kind == "list":
            assert ref.item is not None
            base = list[self.annotation(ref.item)]  # type: ignore[misc]
        elif ref.kind == "record":
            assert ref.name is not None
            base = self._record(ref.name)
        elif ref.kind == "enum":
            assert ref.name is not None
            base = Literal[self._enums[ref.name]]
        else:
            base = {
                "str": str,
                "int": int,
                "float": float,
                "bool": bool,
                "money": decimal.Decimal,
                "datetime": datetime.datetime,
            }[ref.kind]
        return base | None if ref.optional else base

    def _record(self, name: str) -> Any:
        if name not in self._record_types:
            self._record_types[name] = None  # records cannot nest themselves (the checker refuses cycles)
            fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
            for f, t in self._records[name].items():
                annotation = self.annotation(t)
                fields.append((f, annotation, None) if self._absent and t.optional else (f, annotation))
            # kw_only: an optional field with its default may precede a required one
            self._record_types[name] = msgspec.defstruct(name, fields, forbid_unknown_fields=True, kw_only=True)
        return self._record_types[name]


class ArgumentChecker:
    def __init__(
        self,
        operations: Mapping[str, tuple[ParamSpec, ...]],
        records: Mapping[str, Mapping[str, TypeRef]],
        enums: Mapping[str, tuple[str, ...]],
    ) -> None:
        self._python = TypeMapping(records, enums).annotation
        self._types: dict[str, Any] = {}
        self._money: dict[str, tuple[str, ...]] = {}
        for name, params in operations.items():
            fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
            for p in params:
                annotation = self._python(p.type)
                fields.append((p.name, annotation) if p.required else (p.name, annotation, None))
            self._types[name] = msgspec.defstruct(f"{name}_arguments", fields, forbid_unknown_fields=True)
            self._money[name] = tuple(p.name for p in params if p.type.kind == "money")

    @classmethod
    def for_table(cls, table: GateTable) -> ArgumentChecker:
        """A checker for every operation of a compiled contract's gate table."""
        return cls({name: rule.params for name, rule in table.operations.items()}, table.records, table.enums)

    def check(self, operation: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as Python values (Decimal, datetime, records as dicts), or InvalidArguments."""
        for name in self._money[operation]:
            if isinstance(arguments.get(name), float):
                raise InvalidArguments(f"Expected a decimal string for money, got a float - at `$.{name}`")
        try:
            converted = msgspec.convert(arguments, self._types[operation], strict=True)
        except msgspec.ValidationError as error:
            raise InvalidArguments(str(error)) from None
        values = {f: plain(getattr(converted, f)) for f in converted.__struct_fields__}
        for name in self._money[operation]:
            amount = values.get(name)
            if isinstance(amount, decimal.Decimal) and (
                not amount.is_finite() or -amount.as_tuple().exponent > MONEY_SCALE  # type: ignore[operator]
            ):
                raise InvalidArguments(f"Expected an amount with at most {MONEY_SCALE} decimal places - at `$.{name}`")
        return {k: v for k, v in values.items() if k in arguments}


def plain(value: Any) -> Any:
    """A converted value with its Structs as dicts (every field, absent optionals as None)."""
    if isinstance(value, msgspec.Struct):
        return {f: plain(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
