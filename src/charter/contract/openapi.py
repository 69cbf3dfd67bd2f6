"""Draft a contract from an OpenAPI 3 document (`charter contract import-openapi SPEC`).

What a document says, the draft says: operations with their params, returns and HTTP
bindings, and schemas as records and entities. What a document cannot say is left for
the author, and the draft lists it at its top under "TO DECIDE": lifecycle transitions,
hard boundaries, scopes, guards, and anything the mapping had to guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from charter.backends import service_url_variable
from charter.contract.checker import path_placeholders, state_enum_name
from charter.errors import UsageError

__all__ = ["Draft", "draft_from_openapi", "load_openapi"]

_METHODS = ("get", "post", "put", "patch", "delete")
_SKIPPED_HEADERS = {"idempotency-key", "if-match", "charter-receipt", "authorization"}


@dataclass
class Draft:
    text: str  # the contract YAML, with the author's to-do list at its top
    todos: list[str]
    operations: int
    entities: int


def load_openapi(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise UsageError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(data, dict) or not str(data.get("openapi", "")).startswith("3."):
        raise UsageError(f"{path}: not an OpenAPI 3 document (it needs `openapi: 3.x` at the top)")
    if not isinstance(data.get("paths"), dict) or not data["paths"]:
        raise UsageError(f"{path}: the document has no paths, so there is nothing to draft")
    return data


def _snake(text: str) -> str:
    text = re.sub(r"[^0-9A-Za-z]+", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)).strip("_").lower()
    return text if text and text[0].isalpha() else f"x_{text}"


def _pascal(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", text) if part)


@dataclass
class _Drafter:
    spec: dict[str, Any]
    todos: list[str] = field(default_factory=list)
    enums: dict[str, list[str]] = field(default_factory=dict)
    known: dict[tuple[str, ...], str] = field(default_factory=dict)  # enum values -> the name they got first

    def schema(self, ref: str) -> dict[str, Any]:
        node: Any = self.spec
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}

    def type_of(self, schema: dict[str, Any], where: str) -> str:
        """The contract type of a JSON schema ('?' when it may be null)."""
        if schema.get("format") in ("decimal", "money"):  # e.g. a decimal accepted as number or string
            return "money"
        variants = schema.get("anyOf") or schema.get("oneOf")
        if variants:
            kinds = [v for v in variants if v.get("type") != "null"]
            optional = len(kinds) < len(variants)
            inner = self.type_of(kinds[0], where) if len(kinds) == 1 else "str"
            if len(kinds) > 1:
                self.todos.append(f"{where}: one of several types; drafted as str")
            return inner.rstrip("?") + ("?" if optional else "")
        if "$ref" in schema:
            return _pascal(schema["$ref"].rsplit("/", 1)[-1])
        kind, fmt = schema.get("type"), schema.get("format")
        optional = bool(schema.get("nullable"))
        if isinstance(kind, list):
            optional = "null" in kind
            kind = next((k for k in kind if k != "null"), "string")
        if "enum" in schema and kind == "string":
            values = tuple(str(v) for v in schema["enum"])
            text = self.known.get(values) or _pascal(where.replace(".", " "))
            if values not in self.known:
                self.known[values] = text
                self.enums[text] = list(values)
        elif kind == "array":
            text = f"list[{self.type_of(schema.get('items', {}), where).rstrip('?')}]"
        elif fmt in ("decimal", "money") or (kind == "number" and fmt == "decimal"):
            text = "money"
        elif kind == "string" and fmt == "date-time":
            text = "datetime"
        else:
            text = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}.get(str(kind), "str")
            if kind not in ("integer", "number", "boolean", "string"):
                self.todos.append(f"{where}: type {kind or 'unspecified'} drafted as str")
        return text + ("?" if optional else "")

    def fields(self, name: str, schema: dict[str, Any]) -> dict[str, str]:
        required = set(schema.get("required", []))
        out = {}
        for prop, sub in (schema.get("properties") or {}).items():
            text = self.type_of(sub, f"{name}.{prop}")
            out[_snake(prop)] = text if prop in required or text.endswith("?") else text + "?"
        return out


def draft_from_openapi(spec: dict[str, Any], *, name: str | None = None, source: str = "the document") -> Draft:
    drafter = _Drafter(spec)
    info = spec.get("info") or {}
    contract_name = _snake(name or str(info.get("title", "service")))
    schemas = (spec.get("components") or {}).get("schemas") or {}

    records: dict[str, dict[str, str]] = {}
    entities: dict[str, dict[str, Any]] = {}
    for schema_name, schema in schemas.items():
        if schema_name in ("HTTPValidationError", "ValidationError") or schema.get("type") != "object":
            continue
        type_name = _pascal(schema_name)
        fields = drafter.fields(type_name, schema)
        if "id" in fields and not fields["id"].endswith("?"):
            entity: dict[str, Any] = {"doc": schema.get("description", ""), "key": "id", "fields": fields}
            status = fields.get("status") or fields.get("state")
            state_field = "status" if "status" in fields else "state"
            if status and status in drafter.enums:
                states = drafter.enums.pop(status)
                drafter.known[tuple(states)] = state_enum_name(type_name, state_field)  # the lifecycle's own enum
                del fields[state_field]
                entity["lifecycle"] = {"field": state_field, "states": states, "initial": states[0], "transitions": {}}
                drafter.todos.append(
                    f"entities.{type_name}.lifecycle: the states come from the schema; write the allowed transitions "
                    f"and check that '{states[0]}' is the initial state"
                )
            entities[type_name] = entity
        else:
            records[type_name] = fields
    if not entities:
        drafter.todos.append("entities: no schema has an `id`, so none became an entity; name at least one")

    operations: dict[str, dict[str, Any]] = {}
    for path, item in spec["paths"].items():
        for method in _METHODS:
            op = (item or {}).get(method)
            if op is None:
                continue
            op_name = _snake(op.get("operationId") or f"{method}_{path}")
            where = f"operations.{op_name}"
            params: dict[str, str] = {}
            query: list[str] = []
            for declared in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:
                parameter = drafter.schema(declared["$ref"]) if "$ref" in declared else declared
                place, pname = parameter.get("in"), str(parameter.get("name", ""))
                if place == "header" and pname.lower() in _SKIPPED_HEADERS:
                    continue  # Charter sends these itself
                if place not in ("path", "query"):
                    drafter.todos.append(f"{where}: {place} parameter '{pname}' is not mapped; bind it by hand")
                    continue
                text = drafter.type_of(parameter.get("schema") or {}, f"{op_name}.{pname}")
                params[_snake(pname)] = text if parameter.get("required") or text.endswith("?") else text + "?"
                if place == "query":
                    query.append(_snake(pname))
            body: list[str] = []
            content = ((op.get("requestBody") or {}).get("content") or {}).get("application/json") or {}
            if content:
                body_schema = content.get("schema") or {}
                if "$ref" in body_schema:
                    body_schema = drafter.schema(body_schema["$ref"])
                for field_name, text in drafter.fields(f"{op_name}.body", body_schema).items():
                    params[field_name] = text
                    body.append(field_name)
            returns = None
            responses = op.get("responses") or {}
            for code in ("200", "201", "202"):
                schema = (((responses.get(code) or {}).get("content") or {}).get("application/json") or {}).get(
                    "schema"
                )
                if schema:
                    returns = drafter.type_of(schema, f"{op_name}.returns")
                    break
            entity_name = (returns or "").removeprefix("list[").removesuffix("]").rstrip("?")
            kind = "read" if method == "get" else "write"
            operation: dict[str, Any] = {"kind": kind, "doc": op.get("summary") or op.get("description") or op_name}
            if entity_name in entities:
                operation["entity"] = entity_name
                path_params = path_placeholders(path)
                if len(path_params) == 1:
                    operation["key"] = _snake(path_params[0])
            operation["params"] = params
            if returns:
                operation["returns"] = returns
            operation["scopes"] = []
            endpoint: dict[str, Any] = {
                "method": method.upper(),
                "path": re.sub(r"\{([^{}]*)\}", lambda m: "{" + _snake(m.group(1)) + "}", path),
            }
            if query and kind == "write":
                endpoint["query"] = query
            operation["binding"] = {"http": endpoint}
            operations[op_name] = operation
            drafter.todos.append(f"{where}: scopes (who may call it)")
            if kind == "write":
                drafter.todos.append(
                    f"{where}: the lifecycle transition it performs (`transition:`), guards, and whether it is "
                    "idempotent"
                )

    service: dict[str, Any] = {"service": contract_name}
    servers = spec.get("servers") or []
    if servers and str(servers[0].get("url", "")).startswith(("http://", "https://")):
        service["base_url"] = servers[0]["url"]
    else:
        drafter.todos.append(
            f"binding.http.base_url: the document names no absolute server; set "
            f"{service_url_variable(contract_name)} or write base_url"
        )
    drafter.todos.append("boundaries: the hard boundaries (never ...) and the rules that enforce them")

    contract: dict[str, Any] = {
        "contract": contract_name,
        "version": "0.1.0",
        "summary": str(info.get("description") or info.get("title") or contract_name).strip().split("\n")[0],
        "owners": ["TODO@example.com"],
        "changelog": f"Drafted from {source} ({info.get('title', '')} {info.get('version', '')}).".replace(" )", ")"),
        "binding": {"http": service},
    }
    used = _names_used(entities, records, operations)
    records = {n: f for n, f in records.items() if n in used}  # request-body schemas became params
    if drafter.enums:
        contract["enums"] = drafter.enums
    if records:
        contract["records"] = records
    contract["entities"] = entities
    contract["operations"] = operations
    contract["boundaries"] = []
    todos = drafter.todos
    header = [
        f"# Drafted by `charter contract import-openapi` from {source}.",
        "# TO DECIDE before publishing (a document cannot say these):",
        *(f"#   - {todo}" for todo in todos),
        "",
    ]
    body_text = yaml.safe_dump(contract, sort_keys=False, allow_unicode=True, width=110)
    return Draft("\n".join(header) + body_text, todos, len(operations), len(entities))


def _names_used(entities: dict[str, Any], records: dict[str, dict[str, str]], operations: dict[str, Any]) -> set[str]:
    """Type names reachable from the entities and operations (records may name records)."""
    texts = [t for e in entities.values() for t in e["fields"].values()]
    texts += [t for o in operations.values() for t in [*o["params"].values(), o.get("returns") or ""]]
    used: set[str] = set()
    pending = [n for t in texts for n in re.findall(r"[A-Z][A-Za-z0-9]*", t)]
    while pending:
        name = pending.pop()
        if name not in used:
            used.add(name)
            pending += [n for t in records.get(name, {}).values() for n in re.findall(r"[A-Z][A-Za-z0-9]*", t)]
    return used
