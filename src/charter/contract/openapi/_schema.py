"""JSON schemas of an OpenAPI 3.0/3.1 document, as contract types (for `contract.openapi`).

`$ref` chains are followed and `allOf` merged before a schema is mapped, 3.0's `nullable` and
3.1's type lists (`type: [string, "null"]`) and null variants become optionals, and
`oneOf`/`anyOf` become the one type every variant fits (a record of all their fields when they
are objects), noted for the author. What has no contract type (a map, a value of any type, a
union of unrelated types) raises `Unmappable` with the reason, and the caller decides whether
to leave the field out or the whole operation, and lists it.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from charter.contract.checker import RESERVED_NAMES

__all__ = ["Flat", "Schemas", "Unmappable", "is_field_name", "mapping", "pascal", "snake"]

Mode = Literal["input", "output"]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SNAKE_VALUE = re.compile(r"[a-z][a-z0-9_]*\Z")
_MAX_DEPTH = 64  # nesting of schemas within schemas; deeper is a cycle, or no document anyone writes


class Unmappable(Exception):
    """A schema no contract type can hold; `str(error)` says why, in the author's terms."""


def snake(text: str) -> str:
    text = re.sub(r"[^0-9A-Za-z]+", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)).strip("_").lower()
    return text if text and text[0].isalpha() else f"x_{text}"


def pascal(text: str) -> str:
    name = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", text) if part)
    return name if name[:1].isalpha() else f"T{name}"


def mapping(value: Any) -> dict[str, Any]:
    """`value` if it is a mapping, else an empty one (documents hold anything anywhere)."""
    return value if isinstance(value, dict) else {}


def is_field_name(name: str) -> bool:
    """Whether a JSON property or parameter name can be a field or param as it is spelled on the wire."""
    return bool(_IDENT.match(name)) and not keyword.iskeyword(name)


@dataclass
class Flat:
    """A schema with its `$ref`s followed and its `allOf` merged."""

    node: dict[str, Any]  # the merged keywords (properties, required, type, ...)
    component: str | None = None  # the components.schemas key it is, when it is exactly one
    parts: tuple[str, ...] = ()  # the components.schemas keys its allOf merged

    @property
    def properties(self) -> dict[str, Any]:
        found = self.node.get("properties")
        return {str(name): sub for name, sub in found.items()} if isinstance(found, dict) else {}

    @property
    def required(self) -> set[str]:
        found = self.node.get("required")
        return {str(r) for r in found} if isinstance(found, list) else set()

    def flag(self, name: str) -> bool:
        return self.node.get(name) is True


@dataclass
class Schemas:
    """Maps a document's schemas to contract types, declaring the records and enums they need."""

    spec: dict[str, Any]
    notes: list[str]  # TO DECIDE items, shared with the drafter
    taken: set[str] = field(default_factory=set)  # every type name declared or reserved
    enums: dict[str, list[str]] = field(default_factory=dict)
    records: dict[str, dict[str, str]] = field(default_factory=dict)
    known_enums: dict[tuple[str, ...], str] = field(default_factory=dict)  # values -> the enum that has them
    component_names: dict[str, str] = field(default_factory=dict)  # components.schemas key -> record name
    entity_components: set[str] = field(default_factory=set)  # components.schemas keys that are entities
    declared: set[str] = field(default_factory=set)  # records declared (entities stay here once moved out)
    _building: set[str] = field(default_factory=set)
    _depth: int = 0
    _shapes: dict[tuple[tuple[str, str], ...], str] = field(default_factory=dict)  # inline records by fields

    # --- names ------------------------------------------------------------------------------

    def name(self, wanted: str) -> str:
        """A fresh PascalCase type name based on `wanted`."""
        base = pascal(wanted) or "Value"
        if base in RESERVED_NAMES:
            base += "Value"
        candidate, n = base, 2
        while candidate in self.taken:
            candidate, n = f"{base}{n}", n + 1
        self.taken.add(candidate)
        return candidate

    def components(self) -> dict[str, Any]:
        return mapping(mapping(self.spec.get("components")).get("schemas"))

    # --- references and allOf -----------------------------------------------------------------

    def deref(self, node: Any, what: str = "schema") -> tuple[dict[str, Any], str | None]:
        """Follow a `$ref` chain: the target with the referring node's own keywords laid over it,
        and the components.schemas key when the chain ends at one."""
        seen: set[str] = set()
        extra: dict[str, Any] = {}
        component = None
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise Unmappable(f"its {what} is the external reference {ref}; inline it or bundle the document")
            if ref in seen:
                raise Unmappable(f"its {what} {ref} refers to itself")
            seen.add(ref)
            extra = {**{k: v for k, v in node.items() if k != "$ref"}, **extra}
            parts = [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
            target: Any = self.spec
            for part in parts:
                target = target.get(part) if isinstance(target, dict) else None
            if target is None:
                raise Unmappable(f"its {what} {ref} names nothing in the document")
            component = parts[2] if len(parts) == 3 and parts[:2] == ["components", "schemas"] else None
            node = target
        if not isinstance(node, dict):
            return ({}, None)
        return ({**node, **extra} if extra else node, component)

    def flatten(self, schema: Any) -> Flat:
        """`schema` with its `$ref`s followed and its `allOf` merged: a property (or `items`) that
        several parts declare must satisfy each, so it becomes their `allOf` in turn."""
        with self._nested():
            return self._flatten(schema)

    @contextmanager
    def _nested(self) -> Iterator[None]:
        # A schema may contain itself through $refs (`Thing: {oneOf: [$ref Thing]}`); only an
        # object breaks such a cycle (its record names itself), so any other one ends here.
        if self._depth >= _MAX_DEPTH:
            raise Unmappable("it refers to itself with no object in between, so it has no finite value")
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def _flatten(self, schema: Any) -> Flat:
        node, component = self.deref(schema)
        parts = node.get("allOf")
        if not isinstance(parts, list) or not parts:
            return Flat(node, component)
        own = {k: v for k, v in node.items() if k != "allOf"}
        merged: dict[str, Any] = {}
        _merge(merged, own)
        found: list[str] = []
        substantial = bool(own.get("properties"))
        for part in parts:
            flat = self.flatten(part)
            if flat.component:
                found.append(flat.component)
            else:
                found += flat.parts  # allOf: [{type: object}, {allOf: [$ref Trip, {links}]}] extends Trip too
                substantial |= any(k in flat.node for k in ("properties", "items", "enum", "oneOf", "anyOf", "const"))
            _merge(merged, flat.node)
        if merged.get("properties"):
            merged["type"] = "object"
        # `allOf: [$ref]`, or a $ref beside parts that add nothing (3.0's way to give a $ref a
        # description), is the referenced schema itself.
        sole = found[0] if len(found) == 1 and not substantial else None
        return Flat(merged, component or sole, tuple(found))

    # --- types ----------------------------------------------------------------------------------

    def type_of(self, schema: Any, where: str, mode: Mode = "output") -> str:
        """The contract type of `schema` ('T?' when the document allows null). Raises Unmappable."""
        with self._nested():
            return self._type_of(schema, where, mode)

    def _type_of(self, schema: Any, where: str, mode: Mode) -> str:
        flat = self.flatten(schema)
        node = flat.node
        optional = node.get("nullable") is True
        if node.get("format") in ("decimal", "money"):  # a decimal, sent as a number or a string
            return "money" + ("?" if optional else "")
        if flat.component is not None and self._is_object(flat):
            return self.record(flat.component) + ("?" if optional else "")
        wrapped = self.wrapped_entity(flat)
        if wrapped is not None:
            name = self.record(wrapped)
            self.notes.append(
                f"{where}: {name} with fields added by allOf; drafted as {name} (the added fields are not read)"
            )
            return name + ("?" if optional else "")
        variants = node.get("oneOf") or node.get("anyOf")
        if isinstance(variants, list) and variants:
            text = self._variants(variants, where, mode)
            return text if text.endswith("?") or not optional else text + "?"
        kind = node.get("type")
        if isinstance(kind, list):  # 3.1: type: [string, "null"]
            kinds = [k for k in kind if k != "null"]
            optional = optional or len(kinds) < len(kind)
            if len(kinds) > 1:
                text = self._variants([{**node, "type": k} for k in kinds], where, mode)
                return text if text.endswith("?") or not optional else text + "?"
            kind = kinds[0] if kinds else None
            if kind is None:
                raise Unmappable("it is always null")
        if "enum" in node and isinstance(node["enum"], list):
            values = node["enum"]
            optional = optional or None in values
            named = flat.component or where  # an enum the document names keeps its name
            return self._enum([v for v in values if v is not None], named, kind) + ("?" if optional else "")
        if "const" in node:
            kind = kind or {str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(node["const"]))
        if kind is None:
            kind = "object" if "properties" in node else "array" if "items" in node else None
        text = self._kind(flat, kind, where, mode)
        return text + ("?" if optional else "")

    def _kind(self, flat: Flat, kind: Any, where: str, mode: Mode) -> str:
        node = flat.node
        if kind == "array":
            if "items" not in node or node["items"] in ({}, True):
                raise Unmappable("it is an array of values of any type")
            return f"list[{self.type_of(node['items'], where, mode).rstrip('?')}]"
        if kind == "object":
            if not flat.properties:
                raise Unmappable("it is a free-form object or a map (additionalProperties); a contract has no map type")
            name = self.name(where)
            return self._declare(name, flat, where)
        if kind == "string":
            return {"date-time": "datetime", "date": "date"}.get(str(node.get("format")), "str")
        if kind in ("integer", "number", "boolean"):
            return {"integer": "int", "number": "float", "boolean": "bool"}[kind]
        raise Unmappable("it may be a value of any type")

    def _enum(self, values: list[Any], where: str, kind: Any) -> str:
        if values and all(isinstance(v, bool) for v in values):
            return "bool"
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "int"
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return "float"
        texts = tuple(str(v) for v in values)
        if not texts or len(set(texts)) != len(texts) or not all(_SNAKE_VALUE.match(t) for t in texts):
            self.notes.append(
                f"{where}: the values {', '.join(texts) or '(none)'} are not all distinct lower snake_case names, so "
                "they cannot be an enum; drafted as str"
            )
            return "str"
        if texts not in self.known_enums:
            name = self.name(where)
            self.known_enums[texts] = name
            self.enums[name] = list(texts)
        return self.known_enums[texts]

    def _variants(self, variants: list[Any], where: str, mode: Mode) -> str:
        nulls = [v for v in variants if self.is_null(v)]
        kinds = [v for v in variants if not self.is_null(v)]
        optional = "?" if nulls else ""
        if not kinds:
            raise Unmappable("it is always null")
        if len(kinds) == 1:
            return self.type_of(kinds[0], where, mode).rstrip("?") + optional
        flats = [self.flatten(v) for v in kinds]
        if all(self._is_object(f) for f in flats):
            name = self._declare(self.name(where), Flat(self.union(flats)), where)
            note = (
                f"one of {len(flats)} object shapes; drafted as {name}, a record of all their fields (optional "
                "unless every shape requires them): check it fits what the service sends and accepts"
            )
            if not any(n.endswith(note) for n in self.notes):
                self.notes.append(f"{where}: {note}")
            return name + optional
        texts = []
        for variant in kinds:
            texts.append(self.type_of(variant, where, mode).rstrip("?"))
        if len(set(texts)) == 1:
            return texts[0] + optional
        if set(texts) == {"int", "float"}:
            return "float" + optional
        raise Unmappable(f"it is one of {', '.join(dict.fromkeys(texts))}, and a contract value has one type")

    def union(self, flats: list[Flat]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for flat in flats:
            for prop, sub in flat.properties.items():
                properties.setdefault(prop, sub)
        everywhere = set.intersection(*(f.required for f in flats))
        return {"type": "object", "properties": properties, "required": sorted(everywhere)}

    def is_null(self, variant: Any) -> bool:
        node, _ = self.deref(variant)
        return node.get("type") == "null" or node.get("enum") == [None]

    def _is_object(self, flat: Flat) -> bool:
        return bool(flat.properties) and not (flat.node.get("oneOf") or flat.node.get("anyOf"))

    def wrapped_entity(self, flat: Flat) -> str | None:
        """The entity an `allOf` extends with fields of its own (a response wrapper such as
        `allOf: [$ref Booking, {properties: {links: ...}}]`): read as the entity, since a value
        holds every field of each part and fields a contract does not declare are dropped."""
        entities = [p for p in flat.parts if p in self.entity_components]
        if flat.component is None and len(flat.parts) == 1 and entities and self._is_object(flat):
            return entities[0]
        return None

    def entity_of(self, schema: Any) -> str | None:
        """The components.schemas key of the entity `schema` is, or extends; None if none."""
        try:
            flat = self.flatten(schema)
        except Unmappable:
            return None
        if flat.component in self.entity_components:
            return flat.component
        return self.wrapped_entity(flat)

    # --- records --------------------------------------------------------------------------------

    def record(self, component: str) -> str:
        """The record (or entity) named after components.schemas[component], declared on first use."""
        name = self.component_names.get(component)
        if name is None:
            name = self.component_names[component] = self.name(component)
        if name in self.declared or name in self._building:
            return name
        self._declare(name, self.flatten({"$ref": f"#/components/schemas/{component}"}), name, shared=False)
        return name

    def _declare(self, name: str, flat: Flat, where: str, *, shared: bool = True) -> str:
        self._building.add(name)
        try:
            fields = self.fields(flat, where, "output")
        finally:
            self._building.discard(name)
        if not fields:
            raise Unmappable(f"none of the fields of {where} can be mapped")
        shape = tuple(fields.items())
        if shared and shape in self._shapes:  # the same inline object met again (e.g. through an allOf)
            self.taken.discard(name)
            return self._shapes[shape]
        self._shapes.setdefault(shape, name)
        self.records[name] = fields
        self.declared.add(name)
        return name

    def fields(self, flat: Flat, where: str, mode: Mode) -> dict[str, str]:
        """The fields of an object, as the wire spells them.

        An output (what the service returns) leaves out writeOnly fields; an input (a request
        body) leaves out readOnly ones, which the service sets itself. A field that cannot be
        mapped is left out and noted: a value the contract does not declare is dropped when read.
        """
        out: dict[str, str] = {}
        required = flat.required
        for prop, sub in flat.properties.items():
            at = f"{where}.{prop}"
            node, _ = self.deref(sub) if isinstance(sub, dict) else ({}, None)
            if node.get("writeOnly") is True and mode == "output":
                continue
            if node.get("readOnly") is True and mode == "input":
                continue
            if not is_field_name(prop):
                self.notes.append(f"{at}: '{prop}' is not a Python identifier, so it is left out")
                continue
            try:
                text = self.type_of(sub, at, mode)
            except Unmappable as reason:
                self.notes.append(f"{at}: left out: {reason}")
                continue
            out[prop] = text if prop in required or text.endswith("?") else text + "?"
        return out


def _merge(into: dict[str, Any], node: dict[str, Any]) -> None:
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            properties = into.setdefault("properties", {})
            for name, sub in value.items():
                properties[name] = {"allOf": [properties[name], sub]} if name in properties else sub
        elif key == "required" and isinstance(value, list):
            required = into.setdefault("required", [])
            required += [r for r in value if r not in required]
        elif key == "items" and "items" in into:
            into["items"] = {"allOf": [into["items"], value]}
        else:
            into.setdefault(key, value)
