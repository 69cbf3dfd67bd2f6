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
from charter.contract.types import MONEY_SCALE, TypeRef, parse_money

__all__ = ["DATE_EXPECTED", "ArgumentChecker", "InvalidArguments", "TypeMapping", "plain"]


class InvalidArguments(ValueError):
    """`field` is the JSON path of the offending value, e.g. `$.amount`."""


_ALIAS = "__charter_"
_SCALARS: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "money": decimal.Decimal,
    "datetime": datetime.datetime,
    "date": datetime.date,  # exactly YYYY-MM-DD of a real day: msgspec refuses 2026-02-30 and a datetime
    "list": list,  # a field may be named `list`: the annotation must not see it
}


def _alias(ref: TypeRef) -> str:
    if ref.kind in ("record", "enum"):
        return f"{_ALIAS}{ref.kind}_{ref.name}"
    return f"{_ALIAS}{ref.kind}"


def _annotation(ref: TypeRef) -> str:
    """The type as annotation text over the aliases, e.g. `__charter_list[__charter_record_Item] | None`."""
    if ref.kind == "list":
        assert ref.item is not None
        text = f"{_ALIAS}list[{_annotation(ref.item)}]"
    else:
        text = _alias(ref)
    return f"{text} | None" if ref.optional else text


class TypeMapping:
    """Contract types as msgspec types: one mapping for everything the gate checks, the
    arguments of calls and the results of backends.

    Records become keyword-only Structs that forbid unknown fields; an optional field may
    be left out (it is then None). Field annotations are written as text over private
    aliases and resolved by msgspec on first use: records may refer to themselves or each
    other through optionals and lists, which needs names resolved late; the aliases cannot
    clash with a field name (the checker refuses names that start with '__').
    """

    def __init__(self, records: Mapping[str, Mapping[str, TypeRef]], enums: Mapping[str, tuple[str, ...]]) -> None:
        self._aliases: dict[str, Any] = {f"{_ALIAS}{k}": v for k, v in _SCALARS.items()}
        self._aliases.update({f"{_ALIAS}enum_{n}": Literal[values] for n, values in enums.items()})
        records_made = []
        for name, fields in records.items():
            struct = self._define(name, list(fields.items()))
            self._aliases[f"{_ALIAS}record_{name}"] = struct
            records_made.append(struct)
        for struct in records_made:  # every record's alias exists only now
            self._resolve(struct)

    def struct(self, name: str, fields: list[tuple[str, TypeRef]]) -> Any:
        """A Struct type named `name` with these fields, over this mapping's records and enums."""
        struct = self._define(name, fields)
        self._resolve(struct)
        return struct

    def annotation(self, ref: TypeRef) -> Any:
        """The msgspec type of one contract type (e.g. `list[Order] | None`)."""
        base: Any = list[self.annotation(ref.item)] if ref.item is not None else self._aliases[_alias(ref)]  # type: ignore[misc]
        return base | None if ref.optional else base

    @staticmethod
    def _define(name: str, fields: list[tuple[str, TypeRef]]) -> Any:
        # An optional field may be omitted (it is then None); a required one may not.
        spec = [(f, _annotation(t), None) if t.optional else (f, _annotation(t)) for f, t in fields]
        return msgspec.defstruct(name, spec, kw_only=True, forbid_unknown_fields=True, module=__name__)

    def _resolve(self, struct: Any) -> None:
        for alias, value in self._aliases.items():
            setattr(struct, alias, value)


class ArgumentChecker:
    def __init__(
        self,
        operations: Mapping[str, tuple[ParamSpec, ...]],
        records: Mapping[str, Mapping[str, TypeRef]],
        enums: Mapping[str, tuple[str, ...]],
    ) -> None:
        mapping = TypeMapping(records, enums)
        self._types: dict[str, Any] = {}
        self._money: dict[str, tuple[str, ...]] = {}
        for name, params in operations.items():
            # Keyword-only: a call names every argument, so declaration order never matters.
            self._types[name] = mapping.struct(f"{name}_arguments", [(p.name, p.type) for p in params])
            self._money[name] = tuple(p.name for p in params if p.type.kind == "money")
        self._params = {name: {p.name: p.type for p in params} for name, params in operations.items()}
        self._records = records

    @classmethod
    def for_table(cls, table: GateTable) -> ArgumentChecker:
        """A checker for every operation of a compiled contract's gate table."""
        return cls({name: rule.params for name, rule in table.operations.items()}, table.records, table.enums)

    def check(self, operation: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as Python values (Decimal, datetime, records as dicts), or InvalidArguments."""
        declared = self._params[operation]
        for name, value in arguments.items():
            ref = declared.get(name) if isinstance(name, str) else None
            if ref is not None:
                self._money_text(ref, value, f"$.{name}")
        try:
            converted = msgspec.convert(arguments, self._types[operation], strict=True)
        except msgspec.ValidationError as error:
            raise InvalidArguments(_said(str(error))) from None
        values = {f: plain(getattr(converted, f)) for f in converted.__struct_fields__}
        for name in self._money[operation]:
            amount = values.get(name)
            if isinstance(amount, decimal.Decimal) and (
                not amount.is_finite() or -amount.as_tuple().exponent > MONEY_SCALE  # type: ignore[operator]
            ):
                raise InvalidArguments(f"Expected an amount with at most {MONEY_SCALE} decimal places - at `$.{name}`")
        return {k: v for k, v in values.items() if k in arguments}

    def _money_text(self, ref: TypeRef, value: Any, path: str) -> None:
        """Refuse money, at any depth, that is a float or text other than ASCII digits with
        at most MONEY_SCALE places: msgspec would take "1e1" or full-width digits through Decimal()
        and the backend would see 1E+1. Any other mismatch is left for the conversion to name."""
        if value is None:
            return
        if ref.kind == "money":
            if isinstance(value, float):
                raise InvalidArguments(f"Expected a decimal string for money, got a float - at `{path}`")
            if isinstance(value, str):
                try:
                    parse_money(value)
                except ValueError as error:
                    raise InvalidArguments(f"{error} - at `{path}`") from None
        elif ref.kind == "list" and ref.item is not None and isinstance(value, list):
            for i, item in enumerate(value):
                self._money_text(ref.item, item, f"{path}[{i}]")
        elif ref.kind == "record" and ref.name is not None and isinstance(value, Mapping):
            fields = self._records[ref.name]
            for name, item in value.items():
                field = fields.get(name) if isinstance(name, str) else None
                if field is not None:
                    self._money_text(field, item, f"{path}.{name}")


# msgspec's words for a text that is no calendar date, said as what a program must send
_NOT_A_DATE = "Invalid RFC3339 encoded date - at"
DATE_EXPECTED = "Expected `date`, a calendar date written YYYY-MM-DD (e.g. 2026-03-01)"


def _said(message: str) -> str:
    if message.startswith(_NOT_A_DATE):
        return DATE_EXPECTED + message[len(_NOT_A_DATE) - len(" - at") :]
    return message


def plain(value: Any) -> Any:
    """A converted value with its Structs as dicts (every field, absent optionals as None)."""
    if isinstance(value, msgspec.Struct):
        return {f: plain(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
