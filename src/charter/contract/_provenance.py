"""Provenance (`from:` of a param): where a param's value must have been seen in the run.

    recipient: {type: str, from: [request, list_payees.iban, "get_standing_orders[].recipient"]}
    note: {type: str?, from: [request, {source: "read_document.body", match: token}]}

A source is `request` (the intent's text or a program request's inputs; the value may occur
anywhere in them), `inputs.<name>` (the value must equal the request's input `name`), `principal` (any of
the principal's attribute values), `principal.<attr>`, or `<read operation>.<field path>`:
the path walks the read's declared `returns`, stepping through lists (`[]` may be written
after a list step). It must end at str or enum (or a list of them). A whole operation, or a
path ending at a record, is refused: every scalar anywhere in such a result would count, so
text injected into any field (a search echoing its query, a document's sender) would be
laundered into a trusted value.

`resolve_source` is shared by the checker (errors) and the compiler (the gate's rules and the
per-operation harvest plan); a source's canonical *label* writes `[]` after every list step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from charter.contract.cel_guards import suggest
from charter.contract.model import Approval, Contract, Operation, Param, Source
from charter.contract.types import TypeRef

__all__ = [
    "ResolvedSource",
    "SourceError",
    "check_provenance",
    "provenance_fields",
    "provenance_hint",
    "provenance_params",
    "resolve_source",
]

Fields = Mapping[str, TypeRef]
_LIST_STR = TypeRef("list", item=TypeRef("str"))


class SourceError(ValueError):
    """A `from:` source that cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    """One checked source: its kind, canonical label, and for a result its operation and field path."""

    kind: Literal["request", "input", "principal", "result"]
    label: str  # request | inputs.<name> | principal | principal.<attr> | list_payees[].iban
    match: Literal["exact", "token"]
    operation: str | None = None
    path: tuple[str, ...] = ()  # field names below the operation's result
    attribute: str | None = None
    input: str | None = None  # inputs.<name>


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _written(item: str | Source) -> tuple[str, Literal["exact", "token"]]:
    return (item, "exact") if isinstance(item, str) else (item.source, item.match)


def _text_leaves(ref: TypeRef, records: Mapping[str, Fields], prefix: str, depth: int = 0) -> list[str]:
    """Paths below `ref` that end at text: examples for a message."""
    while ref.kind == "list" and ref.item is not None:
        ref = ref.item
    if ref.kind in ("str", "enum"):
        return [prefix]
    if ref.kind != "record" or ref.name is None or depth > 3:
        return []
    found: list[str] = []
    for name, field in records.get(ref.name, {}).items():
        found += _text_leaves(field, records, f"{prefix}.{name}", depth + 1)
    return found


def resolve_source(
    item: str | Source,
    model: Contract,
    records: Mapping[str, Fields],
    returns: Mapping[str, TypeRef | None],
) -> ResolvedSource:
    """The source as the gate uses it; raises SourceError saying what is wrong with it."""
    text, match = _written(item)
    head, _, rest = text.partition(".")
    if head == "request":
        if rest:
            raise SourceError(f"source '{text}': request is the request's whole text and inputs; write 'request'")
        return ResolvedSource("request", "request", match)
    if head == "inputs":
        # Contracts declare no inputs (a program request names its own), so any identifier is
        # accepted; a request without that input gives the param no value to equal.
        if not _IDENTIFIER.fullmatch(rest):
            raise SourceError(
                f"source '{text}': write inputs.<name>, the name of one input of the request (an identifier)"
            )
        if match == "token":
            raise SourceError(
                f"source '{text}': an input matches exactly (the value must equal it); `match: token` applies to "
                "request and read results"
            )
        return ResolvedSource("input", text, match, input=rest)
    if head == "principal":
        if match == "token":
            raise SourceError(
                f"source '{text}': principal attributes match exactly; `match: token` applies to request and read "
                "results"
            )
        attributes = model.principal.attributes
        if not rest:
            if not attributes:
                raise SourceError(
                    f"source '{text}': the contract declares no principal attributes (principal.attributes)"
                )
            return ResolvedSource("principal", "principal", match)
        if rest not in attributes:
            raise SourceError(
                f"source '{text}': the contract declares no principal attribute '{rest}'{suggest(rest, attributes)}"
            )
        return ResolvedSource("principal", f"principal.{rest}", match, attribute=rest)
    steps = text.split(".")
    operation = steps[0].removesuffix("[]")
    op = model.operations.get(operation)
    if op is None:
        raise SourceError(
            f"unknown source '{text}'{suggest(operation, [*model.operations, 'request', 'inputs', 'principal'])}: "
            "write request, inputs.<name>, principal, principal.<attribute> or <read operation>.<field path>"
        )
    if op.kind != "read":
        raise SourceError(
            f"source '{text}': {operation} is a write operation; a source is a read operation's result at a field path"
        )
    ref = returns.get(operation)
    if ref is None:
        raise SourceError(f"source '{text}': the result type of {operation} did not resolve")
    label = operation
    path: list[str] = []
    written = steps[0]
    for index, step in enumerate(steps):
        if index > 0:
            name = step.removesuffix("[]")
            if ref.kind != "record" or ref.name is None:
                raise SourceError(f"source '{text}': {label} is {ref}, which has no field '{name}'")
            fields = records.get(ref.name, {})
            if name not in fields:
                raise SourceError(f"source '{text}': {ref.name} has no field '{name}'{suggest(name, fields)}")
            ref, written = fields[name], step
            label += f".{name}"
            path.append(name)
        if ref.kind == "list" and ref.item is not None:
            label += "[]"
            ref = ref.item
        elif written.endswith("[]"):
            raise SourceError(f"source '{text}': {label} is {ref}, not a list; remove the '[]'")
    if ref.kind == "record":
        leaves = _text_leaves(ref, records, label)
        example = f", e.g. '{leaves[0]}'" if leaves else ""
        what = f"the whole result of {operation}" if not path else f"a whole {ref.name}"
        raise SourceError(
            f"source '{text}' names {what}: any text anywhere in it would count, which would launder injected text "
            f"(a search echoing its query, a document's sender); name one text field{example}"
        )
    if ref.kind not in ("str", "enum"):
        raise SourceError(f"source '{text}' ends at {ref.kind}: provenance compares text; name a str or enum field")
    return ResolvedSource("result", label, match, operation=operation, path=tuple(path))


def provenance_params(params: Mapping[str, str | Param]) -> dict[str, Param]:
    """The params of one operation that declare `from:`."""
    return {n: p for n, p in params.items() if isinstance(p, Param) and p.from_ is not None}


def provenance_fields(params: Mapping[str, str | Param]) -> dict[str, TypeRef]:
    """`provenance.<p>` as guards see it: for each `from:` param, the list of labels it was seen in."""
    return dict.fromkeys(provenance_params(params), _LIST_STR)


_NO_FIELD = re.compile(r"'provenance' has no field '([A-Za-z_]\w*)'")


def provenance_hint(message: str, params: Mapping[str, str | Param]) -> str:
    """A CEL check's message about `provenance.<p>` said in the contract's terms: `provenance`
    holds only the params that declare `from:`, which "has no field 'd'" does not tell."""
    if "unknown name 'provenance'" in message and not provenance_params(params):
        return "no param of this operation declares `from:`, so `provenance` does not exist here"
    match = _NO_FIELD.search(message)
    if match is not None and match.group(1) in params:
        param = match.group(1)
        return f"param {param} declares no `from:`, so provenance.{param} does not exist"
    return message


def _text_param(ref: TypeRef) -> bool:
    inner = ref.item if ref.kind == "list" and ref.item is not None else ref
    return inner.kind == "str" or (inner.kind == "enum" and ref.kind != "list")


def check_provenance(
    name: str,
    params: Mapping[str, str | Param],
    resolved: Mapping[str, TypeRef],
    model: Contract,
    records: Mapping[str, Fields],
    returns: Mapping[str, TypeRef | None],
    fail: Callable[[tuple[str | int, ...], str], None],
    warn: Callable[[tuple[str | int, ...], str], None],
) -> None:
    """Report every problem with the `from:` rules of operation `name` through `fail`/`warn`
    (a path into the contract and a message)."""
    for pname, param in provenance_params(params).items():
        path: tuple[str | int, ...] = ("operations", name, "params", pname, "from")
        ref = resolved.get(pname)
        if ref is not None and not _text_param(ref):
            fail(
                path,
                f"param '{name}.{pname}' is {ref}: provenance (`from:`) applies to str, enum and list[str] params",
            )
        sources = param.from_ or []
        if not sources:
            fail(path, f"param '{name}.{pname}': `from:` lists no source; name at least one, or remove it")
        seen: dict[str, int] = {}
        for index, item in enumerate(sources):
            where = (*path, index) if isinstance(item, str) else (*path, index, "source")
            try:
                source = resolve_source(item, model, records, returns)
            except SourceError as error:
                fail(where, f"param '{name}.{pname}': {error}")
                continue
            read = model.operations.get(source.operation or "")
            if read is not None and source.path and source.path[-1] in read.params:
                # A read that echoes its argument into that field would turn any value the
                # program passes it into a trusted one; the contract cannot tell, so it warns.
                warn(
                    where,
                    f"param '{name}.{pname}': source '{source.label}' ends at a field named like {source.operation}'s "
                    f"param '{source.path[-1]}': if the read echoes its argument there, any value the program passes "
                    "it would count as seen; name a field the backend fills from its own data",
                )
            if source.label in seen:
                warn(
                    where,
                    f"param '{name}.{pname}' lists source '{source.label}' twice "
                    f"(items {seen[source.label]} and {index})",
                )
            seen.setdefault(source.label, index)


# A label a rule compares `provenance.<p>` with: `"request" in provenance.p`, or inside a macro
# over it, `provenance.p.exists(s, s == "request")`. A misspelt label would never match and the
# rule would silently always (or never) hold, so each one must be a label the param can carry.
_LABEL_IN = re.compile(r"""(["'])([^"']*)\1\s+in\s+provenance\s*\.\s*([A-Za-z_]\w*)""")
_LABEL_MACRO = re.compile(
    r"""provenance\s*\.\s*([A-Za-z_]\w*)\s*\.\s*(?:all|exists|exists_one|filter|map)\s*\(\s*([A-Za-z_]\w*)\s*,([^()]*)\)"""
)


# A list literal compared with the whole list, `provenance.p == ["list_payees[].iban"]` (or !=,
# either side), and a macro's variable tested against one, `s in ["request", ...]`.
_LIST_LITERAL = r"""\[((?:\s*(?:"[^"]*"|'[^']*')\s*,?)*)\]"""  # of string literals (labels hold `[]`)
_LABEL_LIST = re.compile(
    rf"""provenance\s*\.\s*([A-Za-z_]\w*)(?![\w.])\s*[!=]=\s*{_LIST_LITERAL}"""
    rf"""|{_LIST_LITERAL}\s*[!=]=\s*provenance\s*\.\s*([A-Za-z_]\w*)(?![\w.])"""
)
_STRING = re.compile(r"""(["'])([^"']*)\1""")


def _list_labels(source: str) -> Iterator[tuple[str, str]]:
    for match in _LABEL_LIST.finditer(source):
        param, items = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
        for item in _STRING.finditer(items):
            yield param, item.group(2)


def _macro_labels(variable: str, body: str) -> Iterator[str]:
    v = re.escape(variable)
    for pattern in (rf"""(?<![\w.]){v}\s*[!=]=\s*(["'])([^"']*)\1""", rf"""(["'])([^"']*)\1\s*[!=]=\s*{v}(?![\w.])"""):
        for match in re.finditer(pattern, body):
            yield match.group(2)
    for match in re.finditer(rf"(?<![\w.]){v}\s+in\s+{_LIST_LITERAL}", body):
        for item in _STRING.finditer(match.group(1)):
            yield item.group(2)


def _rule_sources(name: str, op: Operation) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    """(path, what, CEL source) of every rule of `op` that may read `provenance`."""
    for index, guard in enumerate(op.guards):
        yield ("operations", name, "guards", index, "when"), f"guard '{guard.id}'", guard.when
    if isinstance(op.requires_approval, Approval):
        yield ("operations", name, "requires_approval", "when"), "the approval condition", op.requires_approval.when
    for index, quota in enumerate(op.quotas):
        for source in (quota.sum, *quota.per):
            if source is not None:
                yield ("operations", name, "quotas", index), f"quota '{quota.id}'", source


def check_label_literals(
    name: str,
    op: Operation,
    model: Contract,
    records: Mapping[str, Fields],
    returns: Mapping[str, TypeRef | None],
    fail: Callable[[tuple[str | int, ...], str], None],
) -> None:
    """Every source label a rule of `name` compares `provenance.<p>` with must be one of p's
    canonical labels (`list_payees[].iban`, not `list_payees.iban`), else it is reported."""
    labels: dict[str, list[str]] = {}
    for pname, param in provenance_params(op.params).items():
        for item in param.from_ or []:
            try:
                labels.setdefault(pname, []).append(resolve_source(item, model, records, returns).label)
            except SourceError:
                labels.setdefault(pname, [])  # reported by check_provenance
    if not labels:
        return
    for path, what, source in _rule_sources(name, op):
        found = [(m.group(3), m.group(2)) for m in _LABEL_IN.finditer(source)]
        found.extend(_list_labels(source))
        for match in _LABEL_MACRO.finditer(source):
            found.extend((match.group(1), label) for label in _macro_labels(match.group(2), match.group(3)))
        for pname, label in found:
            known = labels.get(pname)
            if known is None or label in known:
                continue  # an unknown param is the CEL check's to report
            fail(
                path,
                f"{what} compares provenance.{pname} with '{label}', which is not one of its sources "
                f"({', '.join(known) or 'none'}), so it would never match{suggest(label, known)}; write the "
                "source's canonical label ([] after each list step)",
            )
