"""Who a run acts for: the identity and scopes the gate checks, and programs can read.

A `Principal` cannot be made with an id or a scope that is not valid, so no entry point
(`charter token add`, `exec`, `run`, `mcp`, the token file behind HTTP, the Python API,
the agent) can open a run, or write anything, for one. An id is refused when it is

- empty, longer than MAX_ID_LENGTH, or not NFC;
- holding a character of Unicode category C* (controls, format characters such as
  U+200B ZERO WIDTH SPACE and the bidi controls, unassigned) or Z* (spaces, separators);
- mixed-script in the sense of Unicode TR39 (its resolved script set is empty, as
  'alice' with a Cyrillic U+0430 for its 'a'), or mixing digits of several systems, or holding an invisible
  repeated combining mark.

Look-alikes are found by TR39's confusable skeleton (`skeleton`): two ids whose skeletons
are equal look the same to a reader. `check_distinct` refuses a new id that looks like a
known one; `same_principal` is the comparison guards use for four-eyes rules.

The TR39 data and algorithms are ICU's (its spoof checker, through PyICU), not tables of
our own: they follow each Unicode release with ICU.
"""

from __future__ import annotations

import decimal
import re
import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import icu
import msgspec

from charter.errors import InvalidPrincipal

__all__ = [
    "MAX_ID_LENGTH",
    "Principal",
    "check_attributes",
    "check_distinct",
    "check_principal_id",
    "check_scope",
    "is_scope",
    "parse_attribute",
    "same_principal",
    "skeleton",
]

MAX_ID_LENGTH = 256
# How a scope is written: lowercase, colon-separated, e.g. 'orders:write'. Contracts
# (the checker) and principals (tokens, --scope) share this one rule.
_SCOPE = re.compile(r"[a-z][a-z0-9_.-]*(:[a-z0-9_.*-]+)*\Z")
_ID_RULE = (
    "a principal id is printable text in one script (letters, digits and punctuation such as . _ - @), "
    "with no spaces, control or invisible characters"
)


def _spoof_checker() -> icu.SpoofChecker:
    checker = icu.SpoofChecker()
    checker.setChecks(icu.USpoofChecks.RESTRICTION_LEVEL | icu.USpoofChecks.MIXED_NUMBERS | icu.USpoofChecks.INVISIBLE)
    # TR39 single-script: the resolved script set is not empty (Latin with Common digits and
    # punctuation is fine, and so are Han with Hiragana and Katakana); Latin mixed with
    # Cyrillic is not.
    checker.setRestrictionLevel(icu.URestrictionLevel.SINGLE_SCRIPT_RESTRICTIVE)
    return checker


# ICU's spoof checker is safe to share between threads once configured.
_CHECKER = _spoof_checker()
_SPOOF_REASONS = (
    (icu.USpoofChecks.RESTRICTION_LEVEL, "mixes scripts (Unicode TR39), as Latin with Cyrillic or Greek look-alikes"),
    (icu.USpoofChecks.MIXED_NUMBERS, "mixes digits of several number systems"),
    (icu.USpoofChecks.INVISIBLE, "repeats a combining mark invisibly"),
)


def is_scope(text: str) -> bool:
    """Whether `text` is written as a scope must be: lowercase, colon-separated, e.g. 'orders:write'."""
    return bool(_SCOPE.match(text))


def check_scope(scope: object) -> str:
    """`scope` itself if it is a valid scope; raises InvalidPrincipal saying why not."""
    if not isinstance(scope, str) or not is_scope(scope):
        raise InvalidPrincipal(
            f"scope {scope!r} is not valid: a scope is lowercase ASCII words joined by ':', e.g. 'orders:write'"
        )
    return scope


_CATEGORY_NAMES = {
    "Cc": "a control character",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "unassigned",
}


def _describe(char: str) -> str:
    name = unicodedata.name(char, "") or f"({_CATEGORY_NAMES.get(unicodedata.category(char), 'unnamed')})"
    return f"U+{ord(char):04X} {name}"


# Characters that show as nothing though they are letters or symbols (Hangul fillers U+3164,
# U+FFA0, U+115F, U+1160 are Default_Ignorable_Code_Point; U+2800 is the blank Braille
# pattern): an id holding one looks like another id without it.
_BLANK = icu.UnicodeSet("[[:Default_Ignorable_Code_Point:]\\u2800]")


def check_principal_id(principal_id: object) -> str:
    """`principal_id` itself if it is a valid principal id; raises InvalidPrincipal saying why not."""
    if not isinstance(principal_id, str):
        raise InvalidPrincipal(f"a principal id is a string, not {type(principal_id).__name__}")
    shown = ascii(principal_id)
    if not principal_id:
        raise InvalidPrincipal(f"the principal id is empty; {_ID_RULE}")
    if len(principal_id) > MAX_ID_LENGTH:
        raise InvalidPrincipal(f"principal id {shown[:40]}... is longer than {MAX_ID_LENGTH} characters")
    for position, char in enumerate(principal_id):
        if unicodedata.category(char)[0] in "CZ" or _BLANK.contains(char):
            raise InvalidPrincipal(f"principal id {shown} has {_describe(char)} at position {position}; {_ID_RULE}")
    if not unicodedata.is_normalized("NFC", principal_id):
        nfc = unicodedata.normalize("NFC", principal_id)
        raise InvalidPrincipal(f"principal id {shown} is not in Unicode normal form NFC; write it as {nfc!a}")
    failed = _CHECKER.check(principal_id)
    for flag, reason in _SPOOF_REASONS:
        if failed & flag:
            raise InvalidPrincipal(f"principal id {shown} {reason}; {_ID_RULE}")
    return principal_id


def skeleton(text: str) -> str:
    """The TR39 confusable skeleton of `text`, case-folded: two ids with equal skeletons look alike
    ('alice' in Cyrillic letters, 'ALICE' and 'alice' share one)."""
    # Folded before and after: the skeleton maps some characters to capitals ('0' to 'O'), so
    # 'b0b' and 'bob' share a skeleton only once it is folded again.
    return str(_CHECKER.getSkeleton(0, text.casefold())).casefold()


def same_principal(a: str | None, b: str | None) -> bool:
    """Whether `a` and `b` name the same principal or look alike (equal TR39 skeletons).

    The CEL function `same_principal(a, b)` of guards: a four-eyes rule written
    `!same_principal(entity.submitted_by, principal.id)` also refuses a look-alike id.
    None (null: an optional id not set) is no principal, the same as none. Raises
    TypeError for anything but strings and None.
    """
    if not isinstance(a, str | None) or not isinstance(b, str | None):
        raise TypeError(f"same_principal() takes two strings, not {type(a).__name__} and {type(b).__name__}")
    if a is None or b is None:
        return False
    return a == b or skeleton(a) == skeleton(b)


def check_distinct(principal_id: str, known: Iterable[str], *, where: str) -> None:
    """Raise InvalidPrincipal if `principal_id` looks like, but is not, one of the `known` ids.

    `where` names what the known ids are (e.g. the token file), for the message.
    """
    mine = skeleton(principal_id)
    for other in known:
        if other != principal_id and skeleton(other) == mine:
            raise InvalidPrincipal(
                f"principal id {principal_id!a} looks like the principal {other!a} of {where} "
                "(the same Unicode TR39 confusable skeleton); use that id, or one that cannot be mistaken for it"
            )


# An attribute's name is a snake_case identifier, as the contract declares it
# (`principal: {attributes: {daily_limit: money}}`); its value is text the operator wrote
# (`--attr daily_limit=2000.00`) or a scalar given through the Python API.
_ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
MAX_ATTRIBUTE_LENGTH = 1024
_ATTRIBUTE_RULE = "write NAME=VALUE, NAME a snake_case identifier as the contract declares it, e.g. daily_limit=2000.00"


def parse_attribute(text: str) -> tuple[str, str]:
    """`name=value` (`charter token add --attr`, `charter exec --attr`) as (name, value).

    Only the syntax is checked here: the value's type is the contract's to say, and one
    token may serve several contracts, so the gate checks it against the version a call
    runs under (ATTRIBUTE_INVALID). Raises InvalidPrincipal saying what is wrong.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep:
        raise InvalidPrincipal(f"attribute {text!a} has no '=': {_ATTRIBUTE_RULE}")
    check_attributes({name: value})
    return name, value


def check_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """`attributes` as a plain dict if every name and value is valid; raises InvalidPrincipal.

    A value is a str (printable, at most MAX_ATTRIBUTE_LENGTH characters), int, float, bool
    or Decimal: what the gate can check against a declared type.
    """
    checked: dict[str, Any] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.match(name):
            raise InvalidPrincipal(f"attribute name {name!a} is not valid: {_ATTRIBUTE_RULE}")
        if isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_LENGTH:
                raise InvalidPrincipal(f"attribute {name} is longer than {MAX_ATTRIBUTE_LENGTH} characters")
            if any(unicodedata.category(c)[0] == "C" for c in value):
                raise InvalidPrincipal(f"attribute {name} holds a control or invisible character")
        elif not isinstance(value, bool | int | float | decimal.Decimal):
            raise InvalidPrincipal(
                f"attribute {name} is a {type(value).__name__}; an attribute is text, a number or a bool"
            )
        checked[name] = value
    return checked


class Principal(msgspec.Struct, frozen=True):
    """Who a run acts for: `id` (see check_principal_id), `scopes` (see is_scope) and
    `attributes` (see check_attributes; read-only once made), which the operator binds
    (tokens.yaml, `--attr`) and the contract types (`principal.attributes`). Nothing a
    caller sends in a request can set them.

    Raises InvalidPrincipal (a UsageError and a ValueError) if any is not valid.
    """

    id: str
    scopes: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_principal_id(self.id)
        for scope in self.scopes:
            check_scope(scope)
        # Frozen means frozen: a check that read the attributes sees them as the run opened.
        msgspec.structs.force_setattr(self, "attributes", MappingProxyType(check_attributes(self.attributes)))

    def __hash__(self) -> int:  # the attributes' read-only view is not hashable; their items are
        return hash((self.id, self.scopes, tuple(sorted(self.attributes.items()))))

    def has(self, scope: str) -> bool:
        return scope in self.scopes
