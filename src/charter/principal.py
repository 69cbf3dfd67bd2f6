"""Who a run acts for: the identity and scopes the gate checks, and programs can read.

A `Principal` cannot be made with an id or a scope that is not valid, so no entry point
(`charter token add`, `exec`, `run`, `mcp`, the token file behind HTTP, the Python API,
the agent) can open a run, or write anything, for one. An id is refused when it is

- empty, longer than MAX_ID_LENGTH, or not NFKC ('ada' in full-width or circled letters, or
  with U+00AA FEMININE ORDINAL INDICATOR for its first 'a', is refused, naming the character
  and the id to write instead: 'ada');
- holding a character of Unicode category C* (controls, format characters such as
  U+200B ZERO WIDTH SPACE and the bidi controls, unassigned) or Z* (spaces, separators);
- mixed-script in the sense of Unicode TR39 (its resolved script set is empty, as
  'alice' with a Cyrillic U+0430 for its 'a'), or mixing digits of several systems, or holding an invisible
  repeated combining mark;
- SYSTEM_PRINCIPAL ('charter') or an id that looks like it: Charter records its own
  automatic decisions (the denial of an expired approval) under that id.

Look-alikes are found by TR39's confusable skeleton (`skeleton`), taken after compatibility
folding: two ids whose skeletons are equal look the same to a reader. `check_distinct`
refuses a new id that looks like a known one; `same_principal` is the comparison four eyes
(charter.approvals) and guards use.

Ids already in a log were checked by the rules of the release that wrote them and are never
rewritten: `Principal.of_record` reads them back (replay, resume) under the rules every
release applied, while the comparisons above apply to them as strictly as to new ids.

The TR39 data and algorithms are ICU's (its spoof checker, through PyICU), not tables of
our own: they follow each Unicode release with ICU.
"""

from __future__ import annotations

import decimal
import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import icu
import msgspec

from charter.errors import InvalidPrincipal

__all__ = [
    "MAX_ID_LENGTH",
    "SYSTEM_PRINCIPAL",
    "Principal",
    "check_attributes",
    "check_distinct",
    "check_principal_id",
    "check_scope",
    "is_scope",
    "parse_attribute",
    "same_principal",
    "skeleton",
    "skeletons",
]

MAX_ID_LENGTH = 256
# Whom Charter itself acts as when it decides (an expired approval is denied by it): reserved,
# so no person's decision can be mistaken for the system's.
SYSTEM_PRINCIPAL = "charter"
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


def check_principal_id(principal_id: object, *, recorded: bool = False) -> str:
    """`principal_id` itself if it is a valid principal id; raises InvalidPrincipal saying why not.

    `recorded`: the id was read back from a log (Principal.of_record), not given by anyone
    now; only the rules every release applied are checked, not those added since (NFKC form,
    the reserved SYSTEM_PRINCIPAL), so a run recorded under an older release still replays.
    """
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
    if not recorded:
        _check_nfkc(principal_id)
    elif not unicodedata.is_normalized("NFC", principal_id):
        raise InvalidPrincipal(f"principal id {shown} is not in Unicode normal form NFC")
    failed = _CHECKER.check(principal_id)
    for flag, reason in _SPOOF_REASONS:
        if failed & flag:
            raise InvalidPrincipal(f"principal id {shown} {reason}; {_ID_RULE}")
    if not recorded and skeletons(principal_id) & skeletons(SYSTEM_PRINCIPAL):
        looks = "is" if principal_id == SYSTEM_PRINCIPAL else f"looks like {SYSTEM_PRINCIPAL!r}, which is"
        raise InvalidPrincipal(
            f"principal id {shown} {looks} reserved: Charter records its own decisions under it (an expired "
            f"approval is denied by {SYSTEM_PRINCIPAL!r}), and a person's must not read as the system's; "
            "choose another id"
        )
    return principal_id


def _check_nfkc(principal_id: str) -> None:
    """Refuse an id not in NFKC form, naming the first compatibility character and what to write.

    A compatibility character (full-width U+FF41, circled U+24D0, U+00AA, mathematical U+1D41A) is a
    presentation of a plain one: an id holding it would read as, and be a second identity of,
    the plain id.
    """
    if unicodedata.is_normalized("NFKC", principal_id):
        return
    shown, plain = ascii(principal_id), unicodedata.normalize("NFKC", principal_id)
    for position, char in enumerate(principal_id):
        if unicodedata.normalize("NFKC", char) != char:
            raise InvalidPrincipal(
                f"principal id {shown} has {_describe(char)} at position {position}, a compatibility form of "
                f"{unicodedata.normalize('NFKC', char)!a}; an id is in Unicode normal form NFKC: write {plain!a}"
            )
    # Each character is its own NFKC form, yet they compose (a letter and a combining accent).
    raise InvalidPrincipal(f"principal id {shown} is not in Unicode normal form NFKC; write {plain!a}")


# A character whose Unicode name is a plain letter's name with decorations: the Latin, Greek
# and Cyrillic small capitals ('LATIN LETTER SMALL CAPITAL A', U+1D00; U+0280 R, U+026A I,
# U+A730 F, ...) and the letters drawn in a shape ('NEGATIVE SQUARED LATIN CAPITAL LETTER A',
# U+1F170; 'REGIONAL INDICATOR SYMBOL LETTER A', U+1F1E6). Neither NFKC (no decomposition)
# nor the TR39 confusables cover them, yet they read as their letter.
_DECORATED_LETTER = re.compile(
    r"(?:[A-Z -]+ )?(LATIN|GREEK|CYRILLIC) (?:CAPITAL |SMALL )?LETTER (?:SMALL CAPITAL )?(\w+)"
)
_REGIONAL_LETTER = re.compile(r"REGIONAL INDICATOR SYMBOL LETTER (\w)")


@functools.cache
def _plain_letter(char: str) -> str:
    """The plain small letter `char` is a decorated form of (see _DECORATED_LETTER), else `char`.

    Read from the character names of the Unicode Character Database (UAX #44, the Name
    property, as Python's unicodedata carries it). Names never change once assigned (the
    Unicode name stability policy) and new decorated letters are named the same way, so the
    rule follows each Unicode release with Python, as TR39's data follows it with ICU. CLDR's
    Latin-ASCII transform (ICU) maps the Latin small capitals too, but not the Greek and
    Cyrillic ones nor the letters drawn in squares and circles, and it maps far more than
    look-alikes (ß to ss).
    """
    if char.isascii() or unicodedata.category(char) not in {"Ll", "Lu", "Lt", "Lm", "Lo", "So"}:
        return char
    name = unicodedata.name(char, "")
    regional = _REGIONAL_LETTER.fullmatch(name)
    match = _DECORATED_LETTER.fullmatch(name)
    if regional is not None:
        wanted = f"LATIN SMALL LETTER {regional.group(1)}"
    elif match is not None:
        wanted = f"{match.group(1)} SMALL LETTER {match.group(2)}"
    else:
        return char
    try:
        return unicodedata.lookup(wanted)
    except KeyError:  # no plain letter of that name (LATIN LETTER SMALL CAPITAL REVERSED R)
        return char


def _fold(text: str, *, casefold: bool = True) -> str:
    """NFKC (and casefold) of `text`, the combining marks left after composing dropped, then
    each decorated letter as its plain letter. A mark with no precomposed letter ('a̸da', 'a̲da',
    'adͣa', the dot casefolding leaves on 'İ') is drawn over or beside a letter a reader takes
    for the bare one, so it is dropped; a composed letter ('á') is a letter of its own and stays."""
    folded = unicodedata.normalize("NFKC", text)
    if casefold:
        folded = unicodedata.normalize("NFKC", folded.casefold())
    bare = "".join(c for c in folded if unicodedata.category(c) not in ("Mn", "Me"))
    return "".join(_plain_letter(char) for char in bare)


def skeleton(text: str) -> str:
    """The TR39 confusable skeleton of `text`, compatibility- and case-folded: two ids with equal
    skeletons look alike ('alice' in Cyrillic letters, 'ALICE', 'alice' in full-width letters
    or small capitals, and 'alice' share one).

    Folded (NFKC_Casefold, marks dropped, then decorated letters to plain ones, see
    _plain_letter) before and after: TR39's confusables map neither compatibility forms nor
    small capitals to their letters, and the skeleton maps some characters to capitals or small
    capitals ('0' to 'O', 'ɶ' to 'oᴇ'), so 'b0b' and 'bob' share a skeleton only once it is
    folded again. Case folding first loses what capitals look like ('I' is TR39's look-alike of
    'l'): `skeletons` also gives the skeleton taken before case folding.
    """
    return _fold(str(_CHECKER.getSkeleton(0, _fold(text))))


def skeletons(text: str) -> frozenset[str]:
    """Both comparison keys of `text`: `skeleton`, and the TR39 skeleton of the text folded
    without case folding (then folded), so 'biII' (capital i) meets 'bill' as TR39 intends,
    which case folding first ('biii') would miss. Two ids look alike when they share a key."""
    return frozenset({skeleton(text), _fold(str(_CHECKER.getSkeleton(0, _fold(text, casefold=False))))})


def same_principal(a: str | None, b: str | None) -> bool:
    """Whether `a` and `b` name the same principal or look alike (equal skeletons, see `skeleton`:
    'ada' in ASCII, in full-width letters, in small capitals and in Cyrillic are one principal).

    The CEL function `same_principal(a, b)` of guards: a four-eyes rule written
    `!same_principal(entity.submitted_by, principal.id)` also refuses a look-alike id.
    None (null: an optional id not set) is no principal, the same as none. Raises
    TypeError for anything but strings and None.
    """
    if not isinstance(a, str | None) or not isinstance(b, str | None):
        raise TypeError(f"same_principal() takes two strings, not {type(a).__name__} and {type(b).__name__}")
    if a is None or b is None:
        return False
    return a == b or bool(skeletons(a) & skeletons(b))


def check_distinct(principal_id: str, known: Iterable[str], *, where: str) -> None:
    """Raise InvalidPrincipal if `principal_id` looks like, but is not, one of the `known` ids.

    `where` names what the known ids are (e.g. the token file), for the message.
    """
    mine = skeletons(principal_id)
    for other in known:
        if other != principal_id and skeletons(other) & mine:
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
        check_principal_id(self.id, recorded=_OF_RECORD.get())
        for scope in self.scopes:
            check_scope(scope)
        # Frozen means frozen: a check that read the attributes sees them as the run opened.
        msgspec.structs.force_setattr(self, "attributes", MappingProxyType(check_attributes(self.attributes)))

    def __hash__(self) -> int:  # the attributes' read-only view is not hashable; their items are
        return hash((self.id, self.scopes, tuple(sorted(self.attributes.items()))))

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def of_record(
        cls, principal_id: str, scopes: frozenset[str] = frozenset(), attributes: Mapping[str, Any] | None = None
    ) -> Principal:
        """The principal a log recorded a run for, to replay or resume it: its id is checked only
        by the rules every release applied (check_principal_id, `recorded`), since a log is never
        rewritten. Raises InvalidPrincipal as the constructor does."""
        reset = _OF_RECORD.set(True)
        try:
            return cls(principal_id, scopes, attributes or {})
        finally:
            _OF_RECORD.reset(reset)


# Set by Principal.of_record while it builds a principal from a log (a context variable, so
# another thread building a principal meanwhile is checked in full).
_OF_RECORD: ContextVar[bool] = ContextVar("charter_principal_of_record", default=False)
