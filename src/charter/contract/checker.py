"""Load and check a contract: every problem found, each with file, line and column.

`load_contract` is the one entry point from a file; `check_contract_data` checks data that
came from elsewhere (the registry). The result, a `CheckedContract`, holds the validated
model plus every type resolved, which is what the compiler needs.
"""

from __future__ import annotations

import builtins
import decimal
import keyword
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args, get_origin

import pydantic
from pydantic import BaseModel

from charter._paths import allowed_modules
from charter.contract import _attributes
from charter.contract._approvals import check_approvals
from charter.contract._binding_checks import (
    check_binding,
    check_default_binding,
    check_service,
    endpoint_placement,
    path_placeholders,
    placements,
)
from charter.contract._lookups import check_lookups, hint_fields
from charter.contract._names import SNAKE
from charter.contract._provenance import (
    check_label_literals,
    check_provenance,
    provenance_fields,
    provenance_hint,
    provenance_params,
)
from charter.contract._quotas import check_quota_ref, check_quotas
from charter.contract._secrets import check_secret_params, check_secret_uses
from charter.contract._yaml import Path as DocPath
from charter.contract._yaml import SourceMap, load_yaml
from charter.contract.bindings import BoundModule, binding_search_dirs
from charter.contract.cel_guards import (
    check_guard,
    names_used,
    raw_principal_comparisons,
    suggest,
)
from charter.contract.model import Contract, Entity, Operation, param_type
from charter.contract.types import (
    MAX_ARGUMENT_DEPTH,
    MONEY_SCALE,
    PRIMITIVES,
    TypeRef,
    TypeSyntaxError,
    UnknownTypeName,
    parse_type,
)
from charter.errors import ContractError, Problem
from charter.principal import is_scope

__all__ = [
    "RESERVED_NAMES",
    "CheckedContract",
    "check_contract_data",
    "endpoint_placement",
    "entity_reader",
    "is_scope",
    "load_contract",
    "path_placeholders",
    "state_enum_name",
]

_PASCAL = re.compile(r"[A-Z][A-Za-z0-9]*\Z")
# Field and param names: identifiers, but not '__x' (Python mangles such names inside the
# stubs' classes, and the guest runtime keeps its own names in that space).
_FIELD = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*\Z")
# Names a program already uses for something else: the runtime's own functions and types.
_RESERVED = {"conclude", "refuse", "ContractViolation", "OperationError", "Decimal", "datetime", "date", "Literal"}
RESERVED_NAMES = frozenset(_RESERVED)
# A program reaches the contract by its name, beside the runtime's names, Python's builtins
# and the modules it may import; a contract named like one of them would hide it or them.
_RESERVED_CONTRACT_NAMES = frozenset(
    {"conclude", "refuse", "principal", *dir(builtins), *(m.split(".")[0] for m in allowed_modules())}
)
# Python bindings receive the call's context as the keyword argument `charter`.
_RESERVED_PARAMS = frozenset({"charter"})

Fields = Mapping[str, TypeRef]


@dataclass(frozen=True, slots=True)
class CheckedContract:
    """A contract that passed every check, with its types resolved."""

    model: Contract
    file: str
    enums: Mapping[str, tuple[str, ...]]  # declared enums plus one per lifecycle (its states)
    records: Mapping[str, Fields]  # declared records plus every entity (its state field included)
    params: Mapping[str, Fields]  # operation -> param -> type
    returns: Mapping[str, TypeRef | None]
    # Each Python binding module as found (file and sha256); empty when bindings were not resolved.
    modules: Mapping[str, BoundModule] = field(default_factory=dict)
    # Sound but risky, e.g. a guard comparing principal.id with == (`charter contract check` prints them).
    warnings: tuple[Problem, ...] = ()
    principal_attributes: Mapping[str, TypeRef] = field(default_factory=dict)  # `principal.attributes`, resolved

    @property
    def name(self) -> str:
        return self.model.contract

    @property
    def version(self) -> str:
        return self.model.version


def state_enum_name(entity: str, lifecycle_field: str) -> str:
    """The enum generated for an entity's lifecycle states: Order + status -> OrderStatus."""
    return entity + "".join(part.capitalize() for part in lifecycle_field.split("_"))


def entity_reader(model: Contract, entity: str) -> str | None:
    """The read operation the gate calls to observe one entity: reads it by key, returns it."""
    for name, op in model.operations.items():
        if op.kind == "read" and op.entity == entity and op.key and op.returns == entity:
            required = [p for p, t in op.params.items() if p != op.key and not param_type(t).strip().endswith("?")]
            if not required:
                return name
    return None


def load_contract(path: str | Path, *, resolve_bindings: bool = True) -> CheckedContract:
    """Read, parse and check one contract file. Raises ContractError listing every problem."""
    file_path = Path(path)
    shown = _display_path(file_path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContractError([Problem(shown, 1, 1, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError([Problem(shown, 1, 1, f"cannot read the file: {exc}")]) from None
    data, source_map = load_yaml(text, shown)
    search = binding_search_dirs(file_path) if resolve_bindings else None
    return check_contract_data(data, source_map, binding_search=search)


def check_contract_data(
    data: Any, source_map: SourceMap, *, binding_search: list[Path] | None = None, published: bool = False
) -> CheckedContract:
    """Check parsed contract data. Bindings are resolved only when `binding_search` is given.

    `published`: the data is a version the registry already holds. Authoring rules added to
    the language since (a write needs scopes or `public: true`) are not applied again, so a
    version published by an earlier release still loads and runs as it was published.
    """
    if not isinstance(data, dict):
        raise ContractError([source_map.problem((), "a contract is a mapping of keys to values")])
    try:
        model = Contract.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = _attributes.union_errors(exc.errors(include_url=False))
        raise ContractError(_sorted(_from_pydantic(err, source_map) for err in errors)) from None
    return _Checker(model, source_map, binding_search, authoring=not published).run()


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _operation_name_ok(name: str) -> bool:
    return bool(SNAKE.match(name)) and not keyword.iskeyword(name) and name not in _RESERVED


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line, p.column, p.message))


# --- pydantic errors, in the contract's own terms ---------------------------------------------


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) not in (None, list, dict):  # X | None, or a union of forms
        members = [a for a in get_args(annotation) if a is not type(None)]
        # Of `str | Param`, the mapping form is the one whose keys an unknown key is weighed against.
        return next((a for a in members if isinstance(a, type) and issubclass(a, BaseModel)), members[0])
    return annotation


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model accepts at `loc` (the parent of an unknown key)."""
    current: Any = Contract
    for step in loc:
        current = _unwrap_optional(current)
        if get_origin(current) in (list, dict):
            current = get_args(current)[-1]  # `step` is an index or a map key
        elif isinstance(current, type) and issubclass(current, BaseModel):
            info = next((f for n, f in current.model_fields.items() if step in (n, f.alias)), None)
            if info is None:
                return []
            current = info.annotation
        else:
            return []
    current = _unwrap_optional(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def _quota_max_hint(got: Any) -> str:
    """What a quota's max must be, with the integer to write when a money amount was written."""
    said = f"expected an integer, got {got!r}"
    if isinstance(got, float) and math.isfinite(got) and not isinstance(got, bool):
        amount = decimal.Decimal(repr(got)).quantize(decimal.Decimal(1).scaleb(-MONEY_SCALE))
        cents = int(amount.scaleb(MONEY_SCALE))
        return f"{said}: a max is a count of calls, or for a money sum integer cents (write {cents} for {amount:,})"
    return said


def _from_pydantic(err: Any, source_map: SourceMap) -> Problem:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    where = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key '{key}'{suggest(key, allowed)}"
        if where != key:
            message = f"{'.'.join(str(p) for p in loc[:-1])}: {message}"
        return source_map.problem(loc, message, key=True)
    if kind == "missing":
        parent = ".".join(str(p) for p in loc[:-1])
        message = f"missing required key '{loc[-1]}'" + (f" in {parent}" if parent else "")
        return source_map.problem(loc[:-1], message)
    if kind == "greater_than_equal":
        return source_map.problem(loc, f"{where}: must be {err['ctx']['ge']} or more, got {err['input']!r}")
    if kind == "too_short":
        least = err["ctx"]["min_length"]
        return source_map.problem(loc, f"{where}: is empty; list at least {least} {'item' if least == 1 else 'items'}")
    if kind == "int_type" and len(loc) > 2 and loc[-3] == "quotas" and loc[-1] == "max":
        return source_map.problem(loc, f"{where}: {_quota_max_hint(err['input'])}")
    if kind in _EXPECTED:
        got = err["input"]
        shown = (
            f"'{got}'"
            if isinstance(got, str)
            else repr(got)
            if not isinstance(got, dict | list)
            else type(got).__name__
        )
        return source_map.problem(loc, f"{where}: expected {_EXPECTED[kind]}, got {shown}")
    if kind == "literal_error":
        return source_map.problem(loc, f"{where}: expected {err['ctx']['expected']}, got {err['input']!r}")
    if kind == "value_error":
        error = str(err["ctx"]["error"])
        if not where or error.startswith(f"{loc[-1]} "):
            return source_map.problem(loc, error)
        return source_map.problem(loc, f"{where}: {err['ctx']['error']}" if where else str(err["ctx"]["error"]))
    return source_map.problem(loc, f"{where}: {err['msg']}")


# --- cross-reference checks ---------------------------------------------------------------------


@dataclass
class _Checker:
    model: Contract
    source: SourceMap
    binding_search: list[Path] | None
    authoring: bool = True  # apply the rules a new version must meet (see check_contract_data)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    named: dict[str, Literal["enum", "record"]] = field(default_factory=dict)
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    records: dict[str, dict[str, TypeRef]] = field(default_factory=dict)
    params: dict[str, dict[str, TypeRef]] = field(default_factory=dict)
    returns: dict[str, TypeRef | None] = field(default_factory=dict)
    guard_ids: dict[str, str] = field(default_factory=dict)  # guard id -> operation
    quota_ids: dict[str, str] = field(default_factory=dict)  # quota id -> operation
    # Records and operations with a type that did not resolve: their guards are not checked,
    # so one typo yields one error rather than a cascade.
    unresolved: set[str] = field(default_factory=set)
    modules: dict[str, BoundModule | str] = field(default_factory=dict)  # module -> where found, or why not

    def fail(self, path: DocPath, message: str, *, key: bool = False) -> None:
        self.problems.append(self.source.problem(path, message, key=key))

    def claim_id(
        self, path: DocPath, kind: str, ident: str, operation: str, taken: dict[str, str], why: str = ""
    ) -> None:
        """Record `ident` (a guard or quota id) as `operation`'s; it must be snake_case and unique
        in the contract (`taken`: id -> the operation that has it). `why` says why it must be."""
        if not SNAKE.match(ident):
            self.fail(path, f"{kind} id '{ident}' must be lower snake_case")
        elif ident in taken:
            self.fail(
                path,
                f"{kind} id '{ident}' is already used by operation '{taken[ident]}'; {kind} ids are unique in a "
                f"contract{why}",
            )
        taken.setdefault(ident, operation)

    def warn(self, path: DocPath, message: str) -> None:
        pos = self.source.locate(path)
        self.warnings.append(Problem(self.source.file, pos.line, pos.column, f"warning: {message}"))

    def run(self) -> CheckedContract:
        m = self.model
        if not SNAKE.match(m.contract) or keyword.iskeyword(m.contract):
            self.fail(
                ("contract",),
                f"contract name '{m.contract}' must be a snake_case identifier, e.g. 'orders'",
            )
        elif m.contract in _RESERVED_CONTRACT_NAMES:
            self.fail(
                ("contract",),
                f"contract name '{m.contract}' is taken in a program (a Python builtin, an importable module or a "
                "runtime name); choose another, e.g. 'orders'",
            )
        self._declare_names()
        self._resolve_records()
        attributes = _attributes.check_principal_attributes(m, self._type, self.fail)
        self.records[_attributes.ATTRIBUTES_RECORD] = attributes  # for CEL checks only; left out below
        for name, entity in m.entities.items():
            self._check_entity(name, entity)
        # Every operation's result type first: a write's `from:` sources name reads declared after it.
        for name, operation in m.operations.items():
            if _operation_name_ok(name):
                where: DocPath = ("operations", name, "returns")
                returns = operation.returns
                self.returns[name] = self._type(where, returns, f"return type of '{name}'") if returns else None
        for name, operation in m.operations.items():
            self._check_operation(name, operation)
        self._check_boundaries()
        check_approvals(self)
        check_default_binding(self)
        check_service(self)
        if m.limits.max_writes > m.limits.max_calls:
            self.fail(
                ("limits", "max_writes"),
                f"limits.max_writes ({m.limits.max_writes}) exceeds limits.max_calls ({m.limits.max_calls})",
            )
        if self.problems:
            raise ContractError(_sorted(self.problems))
        del self.records[_attributes.ATTRIBUTES_RECORD]
        return CheckedContract(
            model=m,
            file=self.source.file,
            enums=MappingProxyType(dict(sorted(self.enums.items()))),
            records=MappingProxyType({k: MappingProxyType(v) for k, v in sorted(self.records.items())}),
            params=MappingProxyType({k: MappingProxyType(v) for k, v in self.params.items()}),
            returns=MappingProxyType(self.returns),
            modules=MappingProxyType({k: v for k, v in sorted(self.modules.items()) if isinstance(v, BoundModule)}),
            warnings=tuple(_sorted(self.warnings)),
            principal_attributes=MappingProxyType(attributes),
        )

    # names and types

    def _declare_names(self) -> None:
        m = self.model
        declared: dict[str, DocPath] = {}
        sections: list[tuple[str, Iterable[str], Literal["enum", "record"]]] = [
            ("enums", m.enums, "enum"),
            ("records", m.records, "record"),
            ("entities", m.entities, "record"),
        ]
        for section, names, kind in sections:
            for name in names:
                path: DocPath = (section, name)
                if not _PASCAL.match(name) or name in PRIMITIVES or name in _RESERVED:
                    self.fail(
                        path,
                        f"type name '{name}' must be PascalCase, e.g. 'Order', and not a reserved name",
                        key=True,
                    )
                elif name in declared:
                    self.fail(
                        path,
                        f"type name '{name}' is declared twice (also in {declared[name][0]})",
                        key=True,
                    )
                declared[name] = path
                self.named[name] = kind
        for name, values in m.enums.items():
            self._check_value_names(("enums", name), values, "enum value")
            self.enums[name] = tuple(values)
        for name, entity in m.entities.items():
            if entity.lifecycle is None:
                continue
            generated = state_enum_name(name, entity.lifecycle.field)
            if generated in declared:
                self.fail(
                    ("entities", name, "lifecycle", "field"),
                    f"the lifecycle of {name} generates the type '{generated}', which is already declared",
                )
            self.named[generated] = "enum"
            self.enums[generated] = tuple(entity.lifecycle.states)

    def _check_value_names(self, path: DocPath, values: list[str], what: str) -> None:
        seen: set[str] = set()
        for index, value in enumerate(values):
            if not SNAKE.match(value):
                self.fail((*path, index), f"{what} '{value}' must be lower snake_case")
            if value in seen:
                self.fail((*path, index), f"{what} '{value}' is listed twice")
            seen.add(value)

    def _type(self, path: DocPath, text: str, what: str) -> TypeRef | None:
        try:
            return parse_type(text, self.named)
        except UnknownTypeName as exc:
            self.fail(
                path,
                f"{what} has unknown type '{exc.name}'{suggest(exc.name, [*PRIMITIVES, *self.named])}",
            )
        except TypeSyntaxError as exc:
            self.fail(path, f"{what}: {exc}")
        return None

    def _fields(self, path: DocPath, fields: Mapping[str, str], owner: str) -> dict[str, TypeRef]:
        resolved: dict[str, TypeRef] = {}
        for name, text in fields.items():
            if not _FIELD.match(name) or keyword.iskeyword(name):
                self.fail(
                    (*path, name),
                    f"field name '{name}' of {owner} must be a Python identifier not starting with '__'",
                    key=True,
                )
                continue
            ref = self._type((*path, name), text, f"field '{owner}.{name}'")
            if ref is None:
                self.unresolved.add(owner)
            else:
                resolved[name] = ref
        return resolved

    def _resolve_records(self) -> None:
        m = self.model
        for name, declared in m.records.items():
            self.records[name] = self._fields(("records", name), declared, name)
        for name, entity in m.entities.items():
            fields = self._fields(("entities", name, "fields"), entity.fields, name)
            if entity.lifecycle is not None:
                state_field = entity.lifecycle.field
                if state_field in entity.fields:
                    self.fail(
                        ("entities", name, "fields", state_field),
                        f"field '{name}.{state_field}' is the lifecycle's state field; declare it only under lifecycle",
                        key=True,
                    )
                fields[state_field] = TypeRef("enum", name=state_enum_name(name, state_field))
            self.records[name] = fields
        self._check_record_cycles()

    def _check_record_cycles(self) -> None:
        # A record that contains itself (not through a list or optional) has no finite value.
        def direct(name: str) -> set[str]:
            return {
                t.name for t in self.records.get(name, {}).values() if t.kind == "record" and not t.optional and t.name
            }

        for start in self.records:
            stack, seen = list(direct(start)), set()
            while stack:
                current = stack.pop()
                if current == start:
                    section = "entities" if start in self.model.entities else "records"
                    self.fail(
                        (section, start),
                        f"record '{start}' contains itself; make the field optional or a list",
                        key=True,
                    )
                    break
                if current not in seen:
                    seen.add(current)
                    stack.extend(direct(current))

    # entities

    def _check_entity(self, name: str, entity: Entity) -> None:
        path: DocPath = ("entities", name)
        fields = self.records.get(name, {})
        if entity.key not in entity.fields:
            self.fail(
                (*path, "key"),
                f"key '{entity.key}' of {name} is not one of its fields{suggest(entity.key, entity.fields)}",
            )
        elif entity.key in fields and fields[entity.key] not in (TypeRef("str"), TypeRef("int")):
            self.fail(
                (*path, "fields", entity.key),
                f"key field '{name}.{entity.key}' must be str or int, not {fields[entity.key]}",
            )
        lifecycle = entity.lifecycle
        if lifecycle is None:
            return
        lpath: DocPath = (*path, "lifecycle")
        if not _FIELD.match(lifecycle.field) or keyword.iskeyword(lifecycle.field):
            self.fail(
                (*lpath, "field"),
                f"state field '{lifecycle.field}' must be a Python identifier not starting with '__'",
            )
        self._check_value_names((*lpath, "states"), lifecycle.states, "state")
        states = lifecycle.states
        if lifecycle.initial not in states:
            self.fail(
                (*lpath, "initial"),
                f"initial state '{lifecycle.initial}' of {name} is not one of its states"
                + suggest(lifecycle.initial, states),
            )
        for tname, transition in lifecycle.transitions.items():
            tpath: DocPath = (*lpath, "transitions", tname)
            if not SNAKE.match(tname):
                self.fail(tpath, f"transition name '{tname}' must be lower snake_case", key=True)
            for index, state in enumerate(transition.from_):
                if state not in states:
                    self.fail(
                        (*tpath, "from", index),
                        f"transition '{tname}' names unknown state '{state}'{suggest(state, states)}",
                    )
            if transition.to not in states:
                self.fail(
                    (*tpath, "to"),
                    f"transition '{tname}' names unknown state '{transition.to}'{suggest(transition.to, states)}",
                )

    # operations

    def _check_operation(self, name: str, op: Operation) -> None:
        m = self.model
        path: DocPath = ("operations", name)
        if not _operation_name_ok(name):
            self.fail(
                path,
                f"operation name '{name}' must be a snake_case identifier and not a Python keyword",
                key=True,
            )
            return
        params: dict[str, TypeRef] = {}
        for pname, written in op.params.items():
            text = param_type(written)
            if not _FIELD.match(pname) or keyword.iskeyword(pname):
                self.fail(
                    (*path, "params", pname),
                    f"param name '{pname}' of {name} must be a Python identifier not starting with '__' and not a "
                    "keyword",
                    key=True,
                )
                continue
            if pname in _RESERVED_PARAMS:
                self.fail(
                    (*path, "params", pname),
                    f"param name '{pname}' of {name} is reserved: Python bindings receive the call's context under "
                    "that name",
                    key=True,
                )
                continue
            ref = self._type((*path, "params", pname), text, f"param '{name}.{pname}'")
            if ref is None:
                self.unresolved.add(name)
            else:
                params[pname] = ref
        self.params[name] = params
        for pname, ref in params.items():
            self._check_argument_depth((*path, "params", pname), f"{name}.{pname}", ref)
        if op.kind == "read" and op.returns is None:
            self.fail(path, f"read operation '{name}' must declare what it returns", key=True)

        entity = m.entities.get(op.entity) if op.entity else None
        if op.entity is not None and entity is None:
            self.fail(
                (*path, "entity"),
                f"operation '{name}' acts on unknown entity '{op.entity}'{suggest(op.entity, m.entities)}",
            )
        if op.key is not None:
            if op.entity is None:
                self.fail(
                    (*path, "key"),
                    f"operation '{name}' names a key param but no entity; add `entity:`",
                )
            elif op.key not in op.params:
                self.fail(
                    (*path, "key"),
                    f"key param '{op.key}' of '{name}' is not one of its params{suggest(op.key, op.params)}",
                )
            elif entity is not None and op.key in params:
                entity_key = self.records.get(op.entity or "", {}).get(entity.key)
                if entity_key is not None and params[op.key] != entity_key:
                    self.fail(
                        (*path, "params", op.key),
                        f"key param '{name}.{op.key}' is {params[op.key]} but {op.entity}.{entity.key} is {entity_key}",
                    )
        if op.transition is not None:
            self._check_transition_ref(name, op, entity)
        check_provenance(name, op.params, params, m, self.records, self.returns, self.fail, self.warn)
        check_label_literals(name, op, m, self.records, self.returns, self.fail)
        _attributes.check_after(name, op, m.operations, self.fail, self.warn)
        for index, scope in enumerate(op.scopes):
            if not is_scope(scope):
                self.fail(
                    (*path, "scopes", index),
                    f"scope '{scope}' must look like 'orders:write' (lowercase, colon-separated)",
                )
        self._check_exposure(name, op)
        self._check_guards(name, op, entity is not None and op.key is not None)
        check_binding(self, name, op)
        check_secret_params(name, op, params, placements(self, name, op), self.fail)
        check_secret_uses(name, op, self.fail)
        reads_state = op.transition is not None or any(
            "entity" in names_used(when) for when in [*(g.when for g in op.guards), *_attributes.approval_when(op)]
        )
        if (
            entity is not None
            and op.key
            and op.kind == "write"
            and reads_state
            and not entity_reader(m, op.entity or "")
        ):
            self.fail(
                ("operations", name),
                f"operation '{name}' depends on the state of {op.entity}, but no read operation returns one "
                f"{op.entity} by its key for the gate to check it; add one (kind: read, entity: {op.entity}, "
                f"key: ..., returns: {op.entity})",
                key=True,
            )

    def _check_argument_depth(self, path: DocPath, param: str, ref: TypeRef) -> None:
        # The sandbox's wire decoder refuses arguments nested deeper than MAX_ARGUMENT_DEPTH;
        # a param whose smallest value is deeper can never be passed, so no call could succeed.
        depth = 1 + self._min_depth(ref, frozenset())  # a param value sits at level 1
        if depth > MAX_ARGUMENT_DEPTH:
            self.fail(
                path,
                f"param '{param}' ({ref}) nests {depth} levels deep even with every optional field null and every "
                f"list empty, but a call's arguments may nest at most {MAX_ARGUMENT_DEPTH} levels, so every call "
                "would be refused; flatten the nested records, or make a deep field optional or a list",
            )

    def _min_depth(self, ref: TypeRef, visiting: frozenset[str]) -> int:
        """Levels below a value of `ref` in its smallest form (null optionals, empty lists)."""
        if ref.optional or ref.kind != "record" or ref.name is None or ref.name in visiting:
            return 0  # a record that contains itself through required fields is reported elsewhere
        fields = self.records.get(ref.name, {})
        if not fields:
            return 0
        inner = visiting | {ref.name}
        return 1 + max(self._min_depth(f, inner) for f in fields.values())

    def _check_exposure(self, name: str, op: Operation) -> None:
        # A write nobody has to be allowed to make is a decision, never a default: an empty scope
        # list is as likely a forgotten one as a deliberate "anyone".
        path: DocPath = ("operations", name)
        if op.public and op.scopes:
            self.fail(
                (*path, "public"),
                f"operation '{name}' is public but lists scopes {', '.join(op.scopes)}: remove `public: true` "
                "or the scopes",
            )
        elif self.authoring and op.kind == "write" and not op.scopes and not op.public:
            self.fail(
                path,
                f"write operation '{name}' lists no scopes, so any caller could run it: add `scopes: [...]` "
                "naming what a caller must hold, or `public: true` if anyone may",
                key=True,
            )

    def _check_transition_ref(self, name: str, op: Operation, entity: Entity | None) -> None:
        path: DocPath = ("operations", name, "transition")
        if op.kind != "write":
            self.fail(path, f"read operation '{name}' cannot perform a transition; make it kind: write")
        elif entity is None:
            self.fail(
                path,
                f"operation '{name}' performs transition '{op.transition}' but acts on no entity; add `entity:`",
            )
        elif entity.lifecycle is None:
            self.fail(
                path,
                f"operation '{name}' performs transition '{op.transition}' but {op.entity} has no lifecycle",
            )
        elif op.transition not in entity.lifecycle.transitions:
            known = entity.lifecycle.transitions
            self.fail(
                path,
                f"operation '{name}' performs unknown transition '{op.transition}' of {op.entity}"
                + suggest(op.transition or "", known),
            )
        elif op.key is None:
            self.fail(
                path,
                f"operation '{name}' performs transition '{op.transition}' on an existing {op.entity}, so it "
                "needs `key:` naming the param that identifies it",
            )

    def _check_guards(self, name: str, op: Operation, has_entity: bool) -> None:
        # Always params, entity, principal: the order "this guard may use ..." lists them in.
        variables: dict[str, Fields] = {"params": self.params[name]}
        if has_entity:
            variables["entity"] = self.records.get(op.entity or "", {})
        variables["principal"] = _attributes.principal_fields()
        if op.lookups:
            variables["lookups"] = check_lookups(self, name, op, variables)
        if provenance := provenance_fields(op.params):
            variables["provenance"] = provenance
        skip_types = name in self.unresolved or (has_entity and op.entity in self.unresolved)
        for index, guard in enumerate(op.guards):
            gpath: DocPath = ("operations", name, "guards", index)
            self.claim_id((*gpath, "id"), "guard", guard.id, name, self.guard_ids)
            if skip_types:
                continue
            found_all = check_guard(guard.when, variables, self.records, self.enums)
            for found in hint_fields(found_all, variables.get("lookups"), self.records):
                message = provenance_hint(found, op.params)
                if "unknown name 'entity'" in found and not has_entity:
                    message = (
                        f"unknown name 'entity': operation '{name}' reads no existing entity "
                        "(it needs `entity:` and `key:`), so this guard may use params, principal"
                    )
                self.fail((*gpath, "when"), f"guard '{guard.id}': {message}")
            for offset, advice in raw_principal_comparisons(guard.when):
                pos = self.source.locate_within((*gpath, "when"), guard.when, offset)
                self.warnings.append(
                    Problem(self.source.file, pos.line, pos.column, f"warning: guard '{guard.id}' {advice}")
                )
        check_quotas(self, name, op, variables)
        if not skip_types:
            _attributes.check_approval(name, op, variables, self.records, self.enums, self.fail, self.warn)

    # boundaries

    def _check_boundaries(self) -> None:
        m = self.model
        seen: set[str] = set()
        sequences = {name for name, op in m.operations.items() if op.after}
        transitions = {
            f"{ename}.{tname}"
            for ename, entity in m.entities.items()
            if entity.lifecycle
            for tname in entity.lifecycle.transitions
        }
        for index, boundary in enumerate(m.boundaries):
            bpath: DocPath = ("boundaries", index)
            if not SNAKE.match(boundary.id):
                self.fail((*bpath, "id"), f"boundary id '{boundary.id}' must be lower snake_case")
            if boundary.id in seen:
                self.fail((*bpath, "id"), f"boundary id '{boundary.id}' is used twice")
            seen.add(boundary.id)
            if not boundary.enforced_by and not boundary.advisory:
                self.fail(
                    bpath,
                    f"boundary '{boundary.id}' is enforced by no rule: add `enforced_by:` (a transition, guard, "
                    "sequence, approval or scope) or mark it `advisory: true`",
                )
            for rindex, rule in enumerate(boundary.enforced_by):
                rpath: DocPath = (*bpath, "enforced_by", rindex)
                if rule.transition is not None and rule.transition not in transitions:
                    self.fail(
                        (*rpath, "transition"),
                        f"boundary '{boundary.id}' is enforced by unknown transition '{rule.transition}' (write "
                        f"Entity.transition){suggest(rule.transition, transitions)}",
                    )
                if rule.guard is not None and rule.guard not in self.guard_ids:
                    self.fail(
                        (*rpath, "guard"),
                        f"boundary '{boundary.id}' is enforced by unknown guard '{rule.guard}'"
                        + suggest(rule.guard, self.guard_ids),
                    )
                check_quota_ref(self, boundary.id, rule, rpath)
                if rule.provenance is not None:
                    self._check_provenance_rule(boundary.id, rule.provenance, (*rpath, "provenance"))
                if rule.approval is not None or rule.scope is not None:
                    self._check_operation_rule(boundary.id, rule.kind, rule.target, (*rpath, rule.kind))
                if rule.sequence is not None and rule.sequence not in sequences:
                    hint = suggest(rule.sequence, sequences)
                    why = "" if rule.sequence in m.operations else " operation"
                    self.fail(
                        (*rpath, "sequence"),
                        f"boundary '{boundary.id}' is enforced by the sequence rule of{why} '{rule.sequence}', "
                        f"which has no `after:` rule{hint}",
                    )

    def _check_provenance_rule(self, boundary: str, target: str, path: DocPath) -> None:
        """A boundary enforced by `provenance: op.param`: that param must declare `from:`."""
        operation, _, param = target.partition(".")
        op = self.model.operations.get(operation)
        if op is None or not param:
            self.fail(
                path,
                f"boundary '{boundary}' is enforced by the provenance of '{target}': write operation.param, naming "
                f"an operation of this contract{suggest(operation, self.model.operations)}",
            )
            return
        with_from = provenance_params(op.params)
        if param not in with_from:
            why = "declares no `from:`" if param in op.params else "is not one of its params"
            self.fail(
                path,
                f"boundary '{boundary}' is enforced by the provenance of '{target}', but param '{param}' of "
                f"{operation} {why}{suggest(param, with_from)}",
            )

    def _check_operation_rule(self, boundary: str, kind: str, operation: str, path: DocPath) -> None:
        """A boundary enforced by an operation's approval or its scopes: that rule must exist."""
        op = self.model.operations.get(operation)
        if op is None:
            self.fail(
                path,
                f"boundary '{boundary}' is enforced by the {kind} rule of unknown operation '{operation}'"
                + suggest(operation, self.model.operations),
            )
        elif kind == "approval" and not op.requires_approval:
            self.fail(
                path,
                f"boundary '{boundary}' is enforced by the approval of '{operation}', which does not require "
                "approval; add `requires_approval: true` to it",
            )
        elif kind == "scope" and not op.scopes:
            self.fail(
                path,
                f"boundary '{boundary}' is enforced by the scopes of '{operation}', which lists none; add `scopes:`",
            )
