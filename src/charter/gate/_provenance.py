"""The provenance ledger: what a run was given and what it was shown, kept host-side.

One ledger per run (`GateSession`). It holds

- the *request*: the intent's text and the program request's input values, at session start,
  and each input by its name (the `inputs.<name>` sources);
- the principal's attribute values, at session start;
- at each planned path (`GateTable.provenance_paths`), every value an operation returned to
  the program, recorded by the gate from the checked reply just before the program gets it;
- an index of every string any reply held, by operation, for the denial's "seen only in the
  result of read_document". It is bounded: at most `SEEN_INDEX_CHARS` characters per run;
  beyond that a result's strings are not indexed, and a denial may then not name
  where the value was seen (the decision itself never depends on this index).

The guest never writes to it: a value counts only if the gate itself passed it to the program
from a trusted source. Results of the gate's own entity reads and lookups were never shown to
the program and are not recorded; text seen only in error feedback is not a result.

Matching. Both sides are normalised by the same rule (`normalise`): Unicode NFKC and
lower-casing (`str.lower`, not case folding, which would make `straße` equal `strasse`); and for
a *code-like* value (only letters, digits, whitespace and hyphens: an IBAN, a card or phone
number) whitespace and hyphens removed, so `GB29 NWBK 6016...` equals `gb29nwbk6016...`. In any
other value (an address, a URL) they are part of it: `ann-smith@x.com` is not `annsmith@x.com`.
`exact` (and always `inputs.<name>`): the normalised value equals a normalised value recorded
there. `token` (and always for `request`): the normalised value occurs in the text, folded the
same way (without its separators when the value is code-like), and the characters around the
occurrence *in the text before spaces and hyphens were removed* are not alphanumeric (or are its
edges). Boundaries are judged on that text because removing a space would glue a word to the
value, while a code-like value is matched on the text without separators (so
`GB29 NWBK 6016 1331 9268 19` in a request matches the IBAN sent as `GB29NWBK60161331926819`,
and the other way round).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from charter.compiler.artifact import GateTable, OperationRule, ProvenanceRule, SourceRule

__all__ = ["SEEN_INDEX_CHARS", "Check", "ProvenanceLedger", "normalise", "occurs"]

SEEN_INDEX_CHARS = 4_000_000  # characters of the "seen in" index per run (strings as the replies held them)
_DROPPED = frozenset("-\u00ad\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d")
_SEPARATORS = re.compile("[\\s" + "".join(re.escape(c) for c in sorted(_DROPPED)) + "]+")


def _fold(text: str) -> str:
    # str.lower, not casefold: casefold merges letters that name different things (ß -> ss makes
    # `straße-bank.de` equal `strasse-bank.de`, a different domain), and a value
    # must equal what was seen, not a look-alike of it.
    return unicodedata.normalize("NFKC", text.lower())


def _code_like(value: str) -> bool:
    """Only letters, digits, whitespace and hyphens (after NFKC): an IBAN, a card, phone or
    account number, whose grouping by spaces or hyphens is presentation, not content."""
    return bool(value) and all(c.isalnum() or c.isspace() or c in _DROPPED for c in value)


class _Key:
    """A value in the form it is compared in: separators dropped only when it is code-like;
    in anything else (an address, a URL, a name with punctuation) `ann-smith` and `annsmith`
    are different values."""

    __slots__ = ("code", "text")

    def __init__(self, value: str) -> None:
        source = unicodedata.normalize("NFKC", value)
        self.code = _code_like(source)
        folded = _fold(source)
        self.text = _SEPARATORS.sub("", folded) if self.code else folded


class _Text:
    """A text normalised for matching. Where each normalised character came from is worked
    out only when a candidate occurrence needs its boundaries judged."""

    __slots__ = ("_folded", "_stripped", "source")

    def __init__(self, text: str) -> None:
        self.source = unicodedata.normalize("NFKC", text)
        self._folded: str | None = None
        self._stripped: str | None = None  # both cached: a text is searched once per checked value

    def folded(self, strip: bool) -> str:
        """The whole text folded; `strip`: with whitespace and hyphens removed (for code-like values)."""
        if self._folded is None:
            self._folded = _fold(self.source)
        if not strip:
            return self._folded
        if self._stripped is None:
            self._stripped = _SEPARATORS.sub("", self._folded)
        return self._stripped

    def _mapped(self, strip: bool) -> tuple[str, list[int]]:
        # Character by character, so each normalised character knows its source position.
        # For the rare text where that differs from normalising the whole (combining marks
        # across a separator), the character-wise form is the one matched here.
        norm: list[str] = []
        origin: list[int] = []
        for index, char in enumerate(self.source):
            if strip and (char.isspace() or char in _DROPPED):
                continue
            folded = _fold(char)
            norm.append(folded)
            origin.extend([index] * len(folded))
        return "".join(norm), origin

    def contains(self, key: _Key) -> bool:
        """`key` occurs here bounded by non-alphanumerics or the edges."""
        value = key.text
        if not value or value not in self.folded(key.code):
            return False
        norm, origin = self._mapped(key.code)
        start = norm.find(value)
        while start >= 0:
            end = start + len(value) - 1
            first, last = origin[start], origin[end]
            whole = (start == 0 or origin[start - 1] != first) and (end + 1 == len(origin) or origin[end + 1] != last)
            before = self.source[first - 1] if first > 0 else ""
            after = self.source[last + 1] if last + 1 < len(self.source) else ""
            if whole and not before.isalnum() and not after.isalnum():
                return True
            start = norm.find(value, start + 1)
        return False


def normalise(text: str) -> str:
    """The form a value is compared in: NFKC and lower-cased; whitespace and hyphens removed
    too when the value is code-like (only letters, digits, whitespace and hyphens)."""
    return _Key(text).text


def occurs(value: str, text: str) -> bool:
    """Whether `value` occurs in `text` as a token (see the module's docstring)."""
    return _Text(text).contains(_Key(value))


@dataclass(frozen=True, slots=True)
class Check:
    """One call's provenance: per `from:` param, the labels its value was seen in; and the
    first violation's message and clause, or None."""

    labels: dict[str, tuple[str, ...]]
    violation: str | None = None
    rule: ProvenanceRule | None = None


class _Store:
    """Recorded values of one label: exact (a set) and as texts (for token matches)."""

    __slots__ = ("exact", "texts")

    def __init__(self) -> None:
        self.exact: set[str] = set()
        self.texts: list[_Text] = []

    def add(self, value: str) -> None:
        key = _Key(value)
        if key.text not in self.exact:
            self.exact.add(key.text)
            self.texts.append(_Text(value))

    def matches(self, key: _Key, token: bool) -> bool:
        if not key.text:
            return False
        if key.text in self.exact:
            return True
        return token and any(t.contains(key) for t in self.texts)


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _at(value: Any, path: Sequence[str]) -> Iterator[str]:
    """The strings at `path` below `value`, stepping through lists at every level."""
    if isinstance(value, list):
        for item in value:
            yield from _at(item, path)
    elif not path:
        if isinstance(value, str):
            yield value
    elif isinstance(value, dict):
        yield from _at(value.get(path[0]), path[1:])


class ProvenanceLedger:
    """The provenance of one run (see the module's docstring). Thread-safe."""

    def __init__(
        self,
        table: GateTable,
        request: Iterable[str] = (),
        attributes: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
    ) -> None:
        self._table = table
        self._lock = threading.Lock()
        self._request = _Store()
        for text in request:
            self._request.add(text)
        self._inputs: dict[str, _Store] = {}  # `inputs.<name>`: each input of the request on its own
        for name, value in (inputs or {}).items():
            self._inputs.setdefault(name, _Store()).add(str(value))
        self._principal: dict[str, _Store] = {}
        for name, value in (attributes or {}).items():
            for text in _strings(value if isinstance(value, str | list | dict) else str(value)):
                self._principal.setdefault(name, _Store()).add(text)
        self._results: dict[str, _Store] = {}  # label -> values recorded at that path
        # operation -> every string of its replies, as sent: normalised only when a denial names
        # where a value was seen, so a run that is never denied pays only for the copy.
        self._seen: dict[str, list[str]] = {}
        self._seen_chars = 0
        # A contract without `from:` rules has nothing to check: its replies are not recorded.
        self._active = any(op.provenance for op in table.operations.values())

    @classmethod
    def rebuild(cls, table: GateTable, opened: Any, receipts: Iterable[Any]) -> ProvenanceLedger:
        """The ledger of a run as its receipts show it: the request from the Opened receipt
        (the intent and the inputs; a secret input is recorded as a digest, so it does not
        count), the principal's attributes when the receipt records them, and every reply an
        Outcome receipt says the program got (`ok` and `replayed`). Error feedback is not a
        result and does not count."""
        secret = set(getattr(opened, "secret_inputs", ()) or ())
        inputs = getattr(opened, "inputs", None) or {}
        request = [t for t in [getattr(opened, "intent", None)] if t]
        given = {k: v for k, v in inputs.items() if k not in secret}
        request += list(given.values())
        ledger = cls(table, request, getattr(opened, "attributes", None), given)
        for receipt in receipts:
            if getattr(receipt, "status", None) in ("ok", "replayed") and getattr(receipt, "result", None) is not None:
                ledger.record(receipt.operation, receipt.result)
        return ledger

    def record(self, operation: str, reply: str) -> None:
        """A reply (its JSON, exactly as the program gets it) of `operation`."""
        if not self._active:
            return
        value = msgspec.json.decode(reply)
        with self._lock:
            for source in self._table.provenance_paths.get(operation, ()):
                store = self._results.setdefault(source.label, _Store())
                for text in _at(value, source.path):
                    store.add(text)
            if self._seen_chars < SEEN_INDEX_CHARS:
                seen = self._seen.setdefault(operation, [])
                for text in _strings(value):
                    self._seen_chars += len(text)
                    if self._seen_chars > SEEN_INDEX_CHARS:
                        break
                    seen.append(text)

    # -- checking ---------------------------------------------------------------------

    def _matches(self, source: SourceRule, value: _Key) -> bool:
        if source.kind == "request":
            return self._request.matches(value, token=True)
        if source.kind == "input":
            # The named input and nothing else: equal to it, never a part of it or of another input.
            given = self._inputs.get(source.input or "")
            return given is not None and given.matches(value, token=False)
        if source.kind == "principal":
            stores = (
                [self._principal.get(source.attribute)] if source.attribute is not None else self._principal.values()
            )
            return any(s is not None and s.matches(value, token=False) for s in stores)
        store = self._results.get(source.label)
        return store is not None and store.matches(value, token=source.match == "token")

    def _labels(self, rule: ProvenanceRule, value: str) -> tuple[str, ...]:
        key = _Key(value)
        return tuple(s.label for s in rule.sources if self._matches(s, key))

    def _seen_in(self, value: str) -> list[str]:
        norm = _Key(value)
        where = ["the request"] if self._request.matches(norm, token=True) else []
        where += [
            f"the result of {op}" for op, texts in self._seen.items() if any(_Text(t).contains(norm) for t in texts)
        ]
        return where

    def check(self, operation: OperationRule, arguments: Mapping[str, Any]) -> Check | None:
        """The provenance of one call's `from:` params (None when it has none). Never echoes a value."""
        if not operation.provenance:
            return None
        labels: dict[str, tuple[str, ...]] = {}
        violation: tuple[str, ProvenanceRule] | None = None
        with self._lock:
            for rule in operation.provenance:
                value = arguments.get(rule.param)
                if value is None:
                    labels[rule.param] = ()
                    continue
                values = value if isinstance(value, list) else [value]
                common: tuple[str, ...] | None = None
                for index, item in enumerate(values):
                    found = self._labels(rule, str(item))
                    common = found if common is None else tuple(x for x in common if x in found)
                    if not found and violation is None:
                        name = f"{rule.param}[{index}]" if isinstance(value, list) else rule.param
                        violation = (self._message(operation.name, name, rule, str(item)), rule)
                labels[rule.param] = common or ()
        if violation is None:
            return Check(labels)
        return Check(labels, violation[0], violation[1])

    def _message(self, operation: str, name: str, rule: ProvenanceRule, value: str) -> str:
        allowed = " or ".join(
            s.label + (" (as a token)" if s.match == "token" and s.kind == "result" else "") for s in rule.sources
        )
        seen = self._seen_in(value)
        if seen:
            said = f"its value was seen only in {', '.join(seen)}"
        else:
            said = "its value was seen in none of them in this run"
        return (
            f"{operation} refused: {name} must come from {allowed} (its `from:` rule), but {said}; a value the "
            "program read elsewhere, or built itself, is not accepted."
        )
