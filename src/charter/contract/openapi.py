"""Draft a contract from an OpenAPI 3.0/3.1 document (`charter contract import-openapi SPEC`).

What a document says, the draft says: operations with their params, returns and HTTP
bindings, schemas as records and entities, and who may call each operation (the document's
security requirements as scopes). What a document cannot say, and every part of it the
mapping could not carry or had to choose, is listed under the draft's `to_decide:` key, and
`charter contract publish` refuses the draft until the author has decided each item and
deleted it. The draft always checks: an operation that cannot be drafted is left out and
listed, never dropped silently, and the draft is checked before it is returned.
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from charter.backends import service_url_variable
from charter.contract._openapi_schema import Flat, Schemas, Unmappable, is_field_name, snake
from charter.contract._yaml import SourceMap, load_yaml
from charter.contract.checker import RESERVED_NAMES, check_contract_data, is_scope, path_placeholders, state_enum_name
from charter.errors import ContractError, UsageError

__all__ = ["Draft", "draft_from_openapi", "load_openapi"]

_METHODS = ("get", "post", "put", "patch", "delete")
_UNMAPPED_METHODS = ("head", "options", "trace")
_SKIPPED_HEADERS = {"idempotency-key", "if-match", "charter-receipt", "authorization"}  # Charter's own
_SCALARS = {"str", "int", "float", "bool", "money", "datetime"}


@dataclass
class Draft:
    text: str  # the contract YAML; its `to_decide:` list at the top
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


@dataclass
class _Entity:
    name: str
    component: str
    key: str
    key_optional: bool  # the schema lets the key be absent (typically: before the entity exists)
    state_field: str | None = None
    states: list[str] = field(default_factory=list)


@dataclass
class _Drafter:
    spec: dict[str, Any]
    contract: str
    todos: list[str] = field(default_factory=list)
    entities: dict[str, _Entity] = field(default_factory=dict)  # by components.schemas key
    entity_paths: dict[str, tuple[str, str]] = field(default_factory=dict)  # GET path -> (entity, placeholder)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    entity_blocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # entity name -> its contract block
    open_reads: list[str] = field(default_factory=list)
    schemas: Schemas = field(init=False)

    def __post_init__(self) -> None:
        self.schemas = Schemas(self.spec, self.todos)

    # --- entities -------------------------------------------------------------------------------

    def find_entities(self) -> None:
        """Schemas that become entities: those with a str or int key, `id` or the placeholder a
        GET addresses them by (GET /events/{eventId} returning Event with an eventId)."""
        addressed: dict[str, str] = {}
        for path, method, op in self.each_operation():
            placeholders = path_placeholders(path)
            if method == "get" and len(placeholders) == 1 and path.endswith("{" + placeholders[0] + "}"):
                schema = self.success_schema(op)
                flat = self.safe(lambda s=schema: self.schemas.flatten(s)) if schema is not None else None
                if isinstance(flat, Flat) and (flat.component or len(flat.parts) == 1):
                    addressed.setdefault(flat.component or flat.parts[0], placeholders[0])
        returned = self.returned_components()
        for component in self.schemas.components():
            if returned and component not in returned:
                continue  # only what the service hands out is an entity (a Tag inside a Pet is a record)
            flat = self.safe(lambda c=component: self.schemas.flatten({"$ref": f"#/components/schemas/{c}"}))
            if not isinstance(flat, Flat) or not flat.properties or flat.node.get("oneOf") or flat.node.get("anyOf"):
                continue
            for key in ("id", addressed.get(component)):
                if key and key in flat.properties and is_field_name(key) and self.key_type(flat.properties[key]):
                    self.entities[component] = _Entity(
                        name="", component=component, key=key, key_optional=key not in flat.required
                    )
                    self.find_lifecycle(self.entities[component], flat)
                    break

    def returned_components(self) -> set[str]:
        """The schemas some operation returns: itself, a list of it, or it extended by allOf."""
        found: set[str] = set()
        for _, _, op in self.each_operation():
            schema = self.success_schema(op)
            flat = self.safe(lambda s=schema: self.schemas.flatten(s)) if schema is not None else None
            if isinstance(flat, Flat) and flat.node.get("type") == "array" and "items" in flat.node:
                flat = self.safe(lambda f=flat: self.schemas.flatten(f.node["items"]))
            if isinstance(flat, Flat):
                found.update([flat.component] if flat.component else flat.parts[:1] if len(flat.parts) == 1 else [])
        return found

    def key_type(self, schema: Any) -> str | None:
        try:
            node, _ = self.schemas.deref(schema)
        except Unmappable:
            return None
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if "enum" in node or node.get("format") in ("decimal", "money", "date-time"):
            return None
        return {"integer": "int", "string": "str"}.get(str(kind))

    def find_lifecycle(self, entity: _Entity, flat: Flat) -> None:
        for state_field in ("status", "state"):
            sub = flat.properties.get(state_field)
            if sub is None:
                continue
            node = self.safe(lambda s=sub: self.schemas.flatten(s).node)
            values = node.get("enum") if isinstance(node, dict) else None
            if not isinstance(values, list):
                return
            states = [str(v) for v in values if v is not None]
            if states and len(set(states)) == len(states) and all(re.match(r"[a-z][a-z0-9_]*\Z", s) for s in states):
                entity.state_field, entity.states = state_field, states
            return

    def declare_entities(self) -> None:
        """Name the entities (and their lifecycle enums) before any type is mapped, so every
        reference to a lifecycle's values uses the enum the lifecycle generates."""
        for component, entity in self.entities.items():
            entity.name = self.schemas.component_names.setdefault(component, self.schemas.name(component))
            self.schemas.entity_components.add(component)
            if entity.state_field:
                generated = state_enum_name(entity.name, entity.state_field)
                if generated in self.schemas.taken:
                    entity.state_field, entity.states = None, []
                    continue
                self.schemas.taken.add(generated)
                self.schemas.known_enums.setdefault(tuple(entity.states), generated)

    def draft_entities(self) -> None:
        out = self.entity_blocks
        for component, entity in self.entities.items():
            if entity.state_field:  # until its lifecycle is drafted, its states are an ordinary enum
                self.schemas.enums[state_enum_name(entity.name, entity.state_field)] = entity.states
            try:
                self.schemas.record(component)
            except Unmappable as reason:
                self.todos.append(f"entities.{entity.name}: left out: {reason}")
                continue
            fields = dict(self.schemas.records[entity.name])
            key_text = fields.get(entity.key, "").rstrip("?")
            if key_text not in ("int", "str"):
                self.todos.append(
                    f"entities.{entity.name}: its key '{entity.key}' could not be mapped, so it is drafted as a record"
                )
                continue
            del self.schemas.records[entity.name]
            fields[entity.key] = key_text
            if entity.key_optional:
                self.todos.append(
                    f"entities.{entity.name}.key: the document does not require '{entity.key}' (absent before the "
                    f"{entity.name} exists?); the draft requires it on every {entity.name} the service returns"
                )
            doc = str(self.schemas.components()[component].get("description") or "").strip()
            block: dict[str, Any] = {"doc": doc, "key": entity.key, "fields": fields}
            if entity.state_field and entity.state_field in fields:
                del fields[entity.state_field]
                del self.schemas.enums[state_enum_name(entity.name, entity.state_field)]
                block["lifecycle"] = {
                    "field": entity.state_field,
                    "states": entity.states,
                    "initial": entity.states[0],
                    "transitions": {},
                }
                self.todos.append(
                    f"entities.{entity.name}.lifecycle: the states come from the schema; write the allowed transitions "
                    f"and check that '{entity.states[0]}' is the initial state"
                )
            out[entity.name] = block
        for entity in self.entities.values():
            if entity.name in out:
                self.remember_entity_paths(entity)

    def remember_entity_paths(self, entity: _Entity) -> None:
        for path, method, op in self.each_operation():
            placeholders = path_placeholders(path)
            if method != "get" or len(placeholders) != 1 or not path.endswith("{" + placeholders[0] + "}"):
                continue
            schema = self.success_schema(op)
            if schema is not None and self.schemas.entity_of(schema) == entity.component:
                self.entity_paths.setdefault(path, (entity.name, placeholders[0]))

    # --- operations -----------------------------------------------------------------------------

    def each_operation(self) -> list[tuple[str, str, dict[str, Any]]]:
        found = []
        for path, item in self.spec["paths"].items():
            resolved = item
            if isinstance(item, dict) and "$ref" in item:
                resolved = self.safe(lambda i=item: self.schemas.deref(i, "path item")[0])
            if not isinstance(resolved, dict):
                continue
            for method in _METHODS:
                op = resolved.get(method)
                if isinstance(op, dict):
                    found.append((str(path), method, {**op, "_item": resolved}))
        return found

    def draft_operations(self) -> None:
        names: set[str] = set()
        for path, item in self.spec["paths"].items():
            for method in _UNMAPPED_METHODS:
                if isinstance(item, dict) and method in item:
                    self.todos.append(f"paths.{path}.{method}: {method.upper()} requests are not mapped")
        for path, method, op in self.each_operation():
            name = _operation_name(str(op.get("operationId") or f"{method}_{path}"), names)
            before = len(self.todos)
            try:
                operation = self.operation(name, path, method, op)
            except Unmappable as reason:
                # What was noted about an operation that is left out is moot; notes on types stay.
                self.todos[before:] = [t for t in self.todos[before:] if not t.startswith(f"operations.{name}:")]
                self.todos.append(f"operations.{name} ({method.upper()} {path}): left out: {reason}")
                continue
            names.add(name)
            self.operations[name] = operation
        webhooks = self.spec.get("webhooks")
        if isinstance(webhooks, dict) and webhooks:
            self.todos.append(
                f"webhooks {', '.join(map(str, webhooks))}: not mapped: the service calls them, and a contract "
                "describes the calls made to the service"
            )
        if self.open_reads:
            self.todos.append(
                f"operations {', '.join(self.open_reads)}: the document requires no authentication for these reads, "
                "so they have no scopes: add scopes if a caller needs a permission to read"
            )

    def operation(self, name: str, path: str, method: str, op: dict[str, Any]) -> dict[str, Any]:
        where = f"operations.{name}"
        kind = "read" if method == "get" else "write"
        params: dict[str, str] = {}
        placed: dict[str, str] = {}  # param -> where it is sent
        declared: dict[tuple[str, str], Any] = {}
        for raw in [*(op["_item"].get("parameters") or []), *(op.get("parameters") or [])]:
            parameter, _ = self.schemas.deref(raw, "parameter")
            declared[(str(parameter.get("in")), str(parameter.get("name")))] = parameter
        for (place, pname), parameter in declared.items():
            self.parameter(where, name, place, pname, parameter, params, placed)
        for placeholder in path_placeholders(path):
            if placed.get(placeholder) != "path":
                raise Unmappable(f"its path placeholder {{{placeholder}}} is not a path parameter the draft can send")
        body = self.request_body(where, name, method, op, params, placed)
        returns = self.returns(where, name, op, kind)
        operation: dict[str, Any] = {
            "kind": kind,
            "doc": str(op.get("summary") or op.get("description") or name).strip().split("\n")[0] or name,
        }
        self.assign_entity(operation, path, params, returns)
        operation["params"] = params
        if returns:
            operation["returns"] = returns
        self.security(where, name, op, kind, operation)
        endpoint: dict[str, Any] = {"method": method.upper(), "path": path}
        query = [p for p, at in placed.items() if at == "query"]
        if kind == "write":
            if query:
                endpoint["query"] = query
            if body and (query or method == "delete"):
                endpoint["body"] = body
        operation["binding"] = {"http": endpoint}
        if kind == "write":
            self.todos.append(
                f"{where}: the lifecycle transition it performs (`transition:`), guards, and whether it is idempotent"
            )
        return operation

    def parameter(
        self,
        where: str,
        op_name: str,
        place: str,
        pname: str,
        parameter: dict[str, Any],
        params: dict[str, str],
        placed: dict[str, str],
    ) -> None:
        required = place == "path" or parameter.get("required") is True
        if place in ("header", "cookie"):
            if place == "header" and pname.lower() in _SKIPPED_HEADERS:
                return  # Charter sends these itself
            self.todos.append(
                f"{where}: {place} parameter '{pname}' is not sent by an HTTP binding"
                + (" and the document requires it: the service may refuse every call" if required else "")
            )
            return
        if place not in ("path", "query"):
            raise Unmappable(f"its parameter '{pname}' is in '{place}', which OpenAPI does not define")

        def skip(reason: str) -> None:
            if required:
                raise Unmappable(f"its required {place} parameter '{pname}' {reason}")
            self.todos.append(f"{where}: optional {place} parameter '{pname}' left out: it {reason}")

        if not is_field_name(pname):
            skip("is not a Python identifier, so no param can carry it")
            return
        if "schema" not in parameter:
            skip("has `content` instead of a schema")
            return
        try:
            text = self.schemas.type_of(parameter["schema"], f"{op_name}.{pname}", "input")
        except Unmappable as reason:
            skip(str(reason).replace("it ", "", 1) if str(reason).startswith("it ") else f"cannot be mapped: {reason}")
            return
        base = text.rstrip("?")
        base = base[5:-1].rstrip("?") if base.startswith("list[") else base
        if base not in _SCALARS and base not in self.schemas.enums and base not in self.schemas.known_enums.values():
            skip(f"is an object ({base}), which a URL cannot carry")
            return
        if place == "path":
            text = text.rstrip("?")
            if text.startswith("list["):
                skip("is a list, which a path placeholder cannot carry")
                return
        params[pname] = text if required or text.endswith("?") else text + "?"
        placed[pname] = place

    def request_body(
        self,
        where: str,
        op_name: str,
        method: str,
        op: dict[str, Any],
        params: dict[str, str],
        placed: dict[str, str],
    ) -> list[str]:
        """The body's fields as params (readOnly ones left out: the service sets them); their names."""
        if "requestBody" not in op:
            return []
        body, _ = self.schemas.deref(op["requestBody"], "request body")
        content = _mapping(body.get("content"))
        media = _json_media(content)
        required = body.get("required") is True
        if method == "get":
            if required:
                raise Unmappable("it is a GET with a request body, which an HTTP binding never sends")
            self.todos.append(f"{where}: the optional request body of this GET is not sent")
            return []
        if media is None:
            types = ", ".join(content) or "no content"
            if required:
                raise Unmappable(f"its request body is {types}; an HTTP binding sends JSON")
            self.todos.append(f"{where}: the optional request body ({types}) is not sent; an HTTP binding sends JSON")
            return []
        schema = content[media].get("schema") if isinstance(content[media], dict) else None
        if schema is None:
            raise Unmappable("its JSON request body has no schema")
        if media.split(";")[0].strip().lower() != "application/json":
            self.todos.append(f"{where}: the document's request body is {media}; the binding sends application/json")
        flat = self.schemas.flatten(schema)
        node = flat.node
        variants = node.get("oneOf") or node.get("anyOf")
        if isinstance(variants, list) and variants:
            shapes = [self.schemas.flatten(v) for v in variants if not self.schemas.is_null(v)]
            if not shapes or not all(shape.properties for shape in shapes):
                raise Unmappable("its request body is one of several shapes that are not all JSON objects")
            union = Flat(self.schemas.union(shapes))
            drafted = self.schemas.fields(union, f"{op_name}.body", "input")
            fields = {f: t if t.endswith("?") else t + "?" for f, t in drafted.items()}
            self.todos.append(
                f"{where}: the request body is one of {len(shapes)} object shapes; drafted as optional params for all "
                "their fields: decide which combinations a caller may send (guards), or split the operation"
            )
        else:
            declared = node.get("type")
            kinds = declared if isinstance(declared, list) else [declared]
            if "array" in kinds or "items" in node:
                raise Unmappable(
                    "its request body is a JSON array, and an HTTP binding sends the params as one JSON object; "
                    "bind it to a Python function that sends the array, or ask for an endpoint that takes an object"
                )
            if not flat.properties:
                raise Unmappable("its request body is not a JSON object with properties")
            fields = self.schemas.fields(flat, f"{op_name}.body", "input")
        sent: list[str] = []
        for field_name, text in fields.items():
            if field_name in placed:
                self.todos.append(
                    f"{where}: body field '{field_name}' has the name of a {placed[field_name]} parameter; it is sent "
                    f"in the {placed[field_name]} only"
                )
                continue
            params[field_name] = text if required or text.endswith("?") else text + "?"
            placed[field_name] = "body"
            sent.append(field_name)
        return sent

    def success_schema(self, op: dict[str, Any]) -> Any | None:
        found = self.success(op)
        return found[1] if found else None

    def success(self, op: dict[str, Any]) -> tuple[str, Any] | None:
        """The first 2xx response: (its JSON media type or another content type, its schema)."""
        responses = _mapping(op.get("responses"))
        for code in sorted((str(c) for c in responses), key=lambda c: (not c.startswith("2"), c)):
            if not code.startswith("2"):
                break
            response = self.safe(lambda c=code: self.schemas.deref(responses[c], "response")[0])
            content = response.get("content") if isinstance(response, dict) else None
            if not isinstance(content, dict) or not content:
                continue
            media = _json_media(content)
            if media is None:
                return (", ".join(content), None)
            entry = content[media]
            return (media, entry.get("schema") if isinstance(entry, dict) else None)
        return None

    def returns(self, where: str, op_name: str, op: dict[str, Any], kind: str) -> str | None:
        found = self.success(op)

        def unmapped(reason: str) -> None:
            if kind == "read":
                raise Unmappable(reason)
            self.todos.append(f"{where}: returns nothing in the draft: {reason}")

        if found is None:
            if kind == "read":
                raise Unmappable("it answers no JSON body, and a read must return something")
            return None
        media, schema = found
        if schema is None:
            unmapped(f"it answers {media} without a JSON schema")
            return None
        try:
            return self.schemas.type_of(schema, f"{op_name}.result", "output")
        except Unmappable as reason:
            unmapped(f"its result cannot be mapped: {reason}")
            return None

    def assign_entity(self, operation: dict[str, Any], path: str, params: dict[str, str], returns: str | None) -> None:
        for prefix, (entity, placeholder) in self.entity_paths.items():
            if path == prefix or path.startswith(prefix + "/"):
                key_type = self.entity_key_type(entity)
                if params.get(placeholder) == key_type:
                    operation["entity"], operation["key"] = entity, placeholder
                    return
        returned = (returns or "").rstrip("?")
        returned = returned[5:-1] if returned.startswith("list[") else returned
        if returned in self.entity_blocks:
            operation["entity"] = returned

    def entity_key_type(self, entity: str) -> str | None:
        block = self.entity_blocks.get(entity)
        return block["fields"].get(block["key"]) if block else None

    # --- security -------------------------------------------------------------------------------

    def security(self, where: str, name: str, op: dict[str, Any], kind: str, operation: dict[str, Any]) -> None:
        """Scopes from the operation's security requirement (or the document's).

        A requirement names schemes; OAuth2 and OpenID Connect schemes list scopes, which become
        the operation's scopes. A scheme without scopes (an API key, HTTP basic or bearer)
        says only "authenticated", drafted as `<contract>:read` or `<contract>:write`. Of
        several alternatives, the first that lists scopes is drafted, since a contract requires
        all the scopes it lists. An operation the document leaves unauthenticated has no scopes;
        a write like that is drafted `public: true`, for the author to confirm.
        """
        requirements = op.get("security", self.spec.get("security"))
        alternatives = [r for r in requirements if isinstance(r, dict)] if isinstance(requirements, list) else []
        if not alternatives or any(not r for r in alternatives):
            operation["scopes"] = []
            why = "allows anonymous calls" if alternatives else "requires no authentication"
            if kind == "write":
                operation["public"] = True
                self.todos.append(
                    f"{where}: the document {why} for this write, so it is drafted `public: true` (anyone may call "
                    "it); if a caller needs a permission, replace that with `scopes: [...]`"
                )
            else:
                self.open_reads.append(name)
            return
        schemes = (self.spec.get("components") or {}).get("securitySchemes") or {}
        chosen = next((r for r in alternatives if any(r.values())), alternatives[0])
        scopes: list[str] = []
        for scheme_name, listed in chosen.items():
            scheme = self.safe(lambda s=scheme_name: self.schemas.deref(schemes.get(s), "security scheme")[0])
            scheme_type = scheme.get("type", "unknown") if isinstance(scheme, dict) and scheme else None
            if scheme_type is None:
                self.todos.append(f"{where}: security scheme '{scheme_name}' is not declared in the document")
            if isinstance(listed, list) and listed:
                for scope in listed:
                    scopes.append(self.scope(where, str(scope)))
            else:
                fallback = f"{self.contract}:{kind}"
                scopes.append(fallback)
                self.todos.append(
                    f"{where}: the document requires '{scheme_name}' ({scheme_type or 'undeclared'}), which names no "
                    f"scopes; drafted as the scope {fallback}"
                )
        if len(alternatives) > 1:
            shown = " | ".join(
                " + ".join(f"{s}({', '.join(map(str, v or []))})" if v else s for s, v in r.items())
                for r in alternatives
            )
            self.todos.append(
                f"{where}: the document accepts any one of {shown}; drafted from the first that lists scopes, "
                "since a contract requires every scope it lists"
            )
        operation["scopes"] = list(dict.fromkeys(scopes))
        if kind == "write" and all(re.search(r"(^|[:._-])read([:._-]|$)", s) for s in scopes):
            self.todos.append(
                f"{where}: this write needs only the scopes {', '.join(operation['scopes'])} in the document, "
                "which read like read access: check that they are what a caller must hold to make it"
            )

    def scope(self, where: str, scope: str) -> str:
        """A document scope as a contract scope. One without a namespace ('read', not 'pets.read'
        or 'read:pets') is put under the contract's name ('trains:read'): Charter's tokens serve
        every contract, and a bare 'write' would grant it to all of them."""
        text = re.sub(r"[^a-z0-9_.*:-]+", "_", scope.lower())
        parts = [p.strip("_") or "x" for p in text.split(":") if p] or ["scope"]
        parts[0] = re.sub(r"[^a-z0-9_.-]", "_", parts[0])
        if len(parts) == 1 and "." not in parts[0]:  # 'orders.read' and 'read:orders' are namespaced already
            parts.insert(0, self.contract)
        elif not parts[0][:1].isalpha():
            parts[0] = f"s{parts[0]}"
        written = ":".join(parts)
        if not is_scope(written):
            written = f"{self.contract}:scope"
        if written != scope:
            self.todos.append(f"{where}: the document's scope '{scope}' is drafted as '{written}'")
        return written

    # --- helpers --------------------------------------------------------------------------------

    def safe(self, make: Any) -> Any:
        try:
            return make()
        except Unmappable:
            return None


def _operation_name(raw: str, taken: set[str]) -> str:
    """operationId (or METHOD_path) as a snake_case operation name no other operation has."""
    name = snake(raw)  # always [a-z][a-z0-9_]*
    if keyword.iskeyword(name) or name in RESERVED_NAMES:
        name += "_op"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_media(content: dict[str, Any]) -> str | None:
    for media in content:
        base = str(media).split(";")[0].strip().lower()
        if base == "application/json" or (base.startswith("application/") and base.endswith("+json")):
            return str(media)
    return None


def draft_from_openapi(spec: dict[str, Any], *, name: str | None = None, source: str = "the document") -> Draft:
    """Draft a contract from a loaded OpenAPI 3.0/3.1 document (see `load_openapi`).

    Raises UsageError when no operation of the document can be drafted.
    """
    info = _mapping(spec.get("info"))
    contract_name = snake(name or str(info.get("title") or "service"))
    if keyword.iskeyword(contract_name):
        contract_name += "_api"
    drafter = _Drafter(spec, contract_name)
    drafter.find_entities()
    drafter.declare_entities()
    drafter.draft_entities()
    if not drafter.entity_blocks:
        drafter.todos.append("entities: no schema has a str or int key (`id`), so none became an entity; name one")
    drafter.draft_operations()
    if not drafter.operations:
        left_out = [t for t in drafter.todos if ": left out: " in t]
        raise UsageError(f"{source}: no operation could be drafted:\n" + "\n".join(f"  {t}" for t in left_out))
    service = _service(spec, contract_name, drafter.todos)
    drafter.todos.append("boundaries: the hard boundaries (never ...) and the rules that enforce them")
    contract: dict[str, Any] = {
        "to_decide": drafter.todos,
        "contract": contract_name,
        "version": "0.1.0",
        "summary": str(info.get("description") or info.get("title") or contract_name).strip().split("\n")[0],
        "owners": ["TODO@example.com"],
        "changelog": f"Drafted from {source} ({info.get('title', '')} {info.get('version', '')}).".replace(" )", ")"),
        "binding": {"http": service},
    }
    schemas = drafter.schemas
    used = _names_used(drafter.entity_blocks, schemas.records, drafter.operations)
    enums = {n: v for n, v in schemas.enums.items() if n in used}
    records = {n: f for n, f in schemas.records.items() if n in used}
    if enums:
        contract["enums"] = enums
    if records:
        contract["records"] = records
    contract["entities"] = drafter.entity_blocks
    contract["operations"] = drafter.operations
    contract["boundaries"] = []
    text = _checked_text(contract, source, drafter.todos)
    return Draft(text, drafter.todos, len(drafter.operations), len(drafter.entity_blocks))


def _service(spec: dict[str, Any], contract_name: str, todos: list[str]) -> dict[str, Any]:
    service: dict[str, Any] = {"service": contract_name}
    servers = spec.get("servers") if isinstance(spec.get("servers"), list) else []
    server = servers[0] if servers and isinstance(servers[0], dict) else {}
    url = str(server.get("url") or "")
    for variable, spec_var in (server.get("variables") or {}).items():
        if isinstance(spec_var, dict) and "default" in spec_var:
            url = url.replace("{" + str(variable) + "}", str(spec_var["default"]))
    variable = service_url_variable(contract_name)
    if re.match(r"https?://[^\s?#{}]+\Z", url):
        service["base_url"] = url
    elif url:
        todos.append(
            f"binding.http.base_url: the document's server '{url}' is not an absolute http(s) URL; set {variable} "
            "or write base_url as the service's full address (with its path prefix: paths are appended to it)"
        )
    else:
        todos.append(f"binding.http.base_url: the document names no server; set {variable} or write base_url")
    return service


def _header(source: str) -> str:
    return (
        f"# Drafted by `charter contract import-openapi` from {source}.\n"
        "# TO DECIDE before publishing: each item under `to_decide:` is something the document could not say\n"
        "# or the importer had to choose. Decide it, edit the contract, then delete the item. `charter contract\n"
        "# publish` refuses this contract while any item is left; delete the key once the list is empty.\n"
    )


def _dump(contract: dict[str, Any], source: str) -> str:
    return _header(source) + yaml.safe_dump(contract, sort_keys=False, allow_unicode=True, width=4096)


def _checked_text(contract: dict[str, Any], source: str, todos: list[str]) -> str:
    """The draft's text, checked. An operation whose draft does not check is left out and listed
    (a safety net: each is drafted to check); any other problem is a bug, reported as such."""
    for _ in range(len(contract["operations"]) + 1):
        text = _dump(contract, source)
        data, source_map = load_yaml(text, "draft")
        try:
            check_contract_data(data, source_map)
            return text
        except ContractError as error:
            starts = sorted((source_map.locate(("operations", op), key=True).line, op) for op in contract["operations"])
            failed: dict[str, str] = {}
            for problem in error.problems:
                owner = next((op for line, op in reversed(starts) if line <= problem.line), None)
                if owner is None or problem.line < starts[0][0] or problem.line > _end_of_operations(source_map):
                    raise UsageError(
                        f"{source}: the draft does not check, which is a bug of the importer; please report it "
                        f"with the document:\n{error}"
                    ) from None
                failed.setdefault(owner, problem.message)
            for op, message in failed.items():
                del contract["operations"][op]
                todos.append(f"operations.{op}: left out: its draft did not check: {message}")
            if not contract["operations"]:
                raise UsageError(f"{source}: no operation could be drafted:\n{error}") from None
    raise UsageError(f"{source}: the draft does not check, which is a bug of the importer")


def _end_of_operations(source_map: SourceMap) -> int:
    return source_map.locate(("boundaries",), key=True).line - 1


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
