"""The type language of contract fields, params and returns.

    str | int | float | bool | money | datetime | date     primitives
    Name                                            an enum, record or entity declared in the contract
    list[T]                                         a list of T
    T?                                              T or absent (null)

`money` is an exact decimal with two places (Decimal in programs). CEL guards see it as an
integer count of minor units (cents), so `params.amount + entity.refunded <= entity.total`
is exact; floating point would let a refund cap drift by a rounding error.

`date` is an ISO calendar date, YYYY-MM-DD (`datetime.date` in programs, the ISO text on the
wire). CEL guards see it as the timestamp of its midnight UTC, as they see a `datetime` as a
timestamp: `params.due < timestamp("2027-01-01T00:00:00Z")`, `params.due - params.start >=
duration("72h")` and comparisons with datetime fields work, and comparing it with a string is
a type error `check` reports (a string compare would also be right for this one format, but
would not mix with datetimes and durations).
"""

from __future__ import annotations

import decimal
import re
from typing import Literal

import msgspec

__all__ = [
    "MAX_ARGUMENT_DEPTH",
    "MONEY_EXPECTED",
    "MONEY_SCALE",
    "PRIMITIVES",
    "TypeRef",
    "TypeSyntaxError",
    "UnknownTypeName",
    "parse_money",
    "parse_type",
]

PRIMITIVES = ("str", "int", "float", "bool", "money", "datetime", "date")
MONEY_SCALE = 2
# Money as text is exactly ASCII digits, an optional minus and at most MONEY_SCALE places.
# Decimal() alone also takes "1e1", " 0.01", "1_000" and full-width digits: each would
# reach a backend and a receipt in a form no one wrote ("1E+1"), so none is money.
_MONEY_TEXT = re.compile(rf"-?[0-9]+(\.[0-9]{{1,{MONEY_SCALE}}})?\Z")
_MONEY_TOO_PRECISE = re.compile(r"-?[0-9]+\.[0-9]+\Z")
MONEY_EXPECTED = (
    f"Expected `money` as a decimal string of ASCII digits with at most {MONEY_SCALE} decimal places, "
    'no exponent or spaces (e.g. "12.50")'
)
# How deeply the arguments of one call may nest (the arguments object is level 0, each
# param value level 1). The sandbox's wire decoder refuses deeper calls; the checker
# refuses param types no call could fit in.
MAX_ARGUMENT_DEPTH = 16

Kind = Literal["str", "int", "float", "bool", "money", "datetime", "date", "enum", "record", "list"]


class TypeRef(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A resolved type. `name` is set for enum and record kinds, `item` for lists."""

    kind: Kind
    name: str | None = None
    item: TypeRef | None = None
    optional: bool = False

    def __str__(self) -> str:
        if self.kind == "list":
            assert self.item is not None
            text = f"list[{self.item}]"
        elif self.kind in ("enum", "record"):
            assert self.name is not None
            text = self.name
        else:
            text = self.kind
        return text + ("?" if self.optional else "")

    def python(self) -> str:
        """The annotation a program sees for this type."""
        if self.kind == "list":
            assert self.item is not None
            text = f"list[{self.item.python()}]"
        elif self.kind in ("enum", "record"):
            assert self.name is not None
            text = self.name
        else:
            text = {"money": "Decimal"}.get(self.kind, self.kind)
        return f"{text} | None" if self.optional else text


def parse_money(text: str) -> decimal.Decimal:
    """`text` as money, e.g. "12.50" -> Decimal("12.50").

    Raises ValueError whose message says what money text is (MONEY_EXPECTED, or that it has
    more than MONEY_SCALE decimal places); the message never quotes `text`.
    """
    if _MONEY_TEXT.match(text):
        return decimal.Decimal(text)
    if _MONEY_TOO_PRECISE.match(text):
        raise ValueError(f"Expected money with at most {MONEY_SCALE} decimal places")
    raise ValueError(MONEY_EXPECTED)


class TypeSyntaxError(ValueError):
    """A type text that does not parse; the message says why."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_type(text: str, named: dict[str, Literal["enum", "record"]]) -> TypeRef:
    """Parse `text` against the contract's named types (name -> enum or record).

    Raises TypeSyntaxError with a message that says what was expected; unknown names
    raise UnknownTypeName so the caller can suggest a close match.
    """
    stripped = text.strip()
    if not stripped:
        raise TypeSyntaxError("empty type")
    if stripped.endswith("?"):
        inner = parse_type(stripped[:-1], named)
        if inner.optional:
            raise TypeSyntaxError(f"type '{text}' is marked optional twice")
        return msgspec.structs.replace(inner, optional=True)
    if stripped.startswith("list[") and stripped.endswith("]"):
        return TypeRef("list", item=parse_type(stripped[5:-1], named))
    if stripped in PRIMITIVES:
        return TypeRef(stripped)  # type: ignore[arg-type]
    if not _NAME.match(stripped):
        raise TypeSyntaxError(
            f"type '{text}' does not parse: expected a primitive ({', '.join(PRIMITIVES)}), "
            "a declared name, list[T] or T?"
        )
    if stripped not in named:
        raise UnknownTypeName(stripped)
    return TypeRef(named[stripped], name=stripped)


class UnknownTypeName(TypeSyntaxError):
    """A type name the contract does not declare."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)
