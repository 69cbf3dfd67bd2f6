"""Operations and entities of an OpenAPI document, drafted as contract blocks (for `contract.openapi`)."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import Any

from charter.contract.checker import RESERVED_NAMES, path_placeholders, state_enum_name
from charter.contract.openapi._schema import Flat, Schemas, Unmappable, is_field_name, mapping, snake
from charter.contract.openapi._security import Security

__all__ = ["Drafter"]

_METHODS = ("get", "post", "put", "patch", "delete")
_UNMAPPED_METHODS = ("head", "options", "trace")
_SKIPPED_HEADERS = {"idempotency-key", "if-match", "charter-receipt", "authorization"}  # Charter's own
_SCALARS = {"str", "int", "float", "bool", "money", "datetime", "date"}


@dataclass
class _Entity:
    name: str
    component: str
    key: str
    key_optional: bool  # the schema lets the key be absent (typically: before the entity exists)
    state_field: str | None = None
    states: list[str] = field(default_factory=list)


@dataclass
class Drafter:
    """Drafts a document's entities (first) and operations; what it cannot map goes to `todos`."""

    spec: dict[str, Any]
    contract: str
    todos: list[str] = field(default_factory=list)
    entities: dict[str, _Entity] = field(default_factory=dict)  # by components.schemas key
    entity_paths: dict[str, tuple[str, str]] = field(default_factory=dict)  # GET path -> (entity, placeholder)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    entity_blocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # entity name -> its contract block
    schemas: Schemas = field(init=False)
    security: Security = field(init=False)

    def __post_init__(self) -> None:
        self.schemas = Schemas(self.spec, self.todos)
        self.security = Security(self.spec, self.contract, self.schemas, self.todos)

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
        if "enum" in node or node.get("format") in ("decimal", "money", "date-time", "date"):
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
        for path, item in mapping(self.spec.get("paths")).items():
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
        for path, item in mapping(self.spec.get("paths")).items():
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
        if self.security.open_reads:
            self.todos.append(
                f"operations {', '.join(self.security.open_reads)}: the document requires no authentication for these "
                "reads, so they have no scopes: add scopes if a caller needs a permission to read"
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
        if kind == "write":
            body = self.drop_lifecycle_field(where, operation, params, placed, body)
        operation["params"] = params
        if returns:
            operation["returns"] = returns
        self.security.apply(where, name, op, kind, operation)
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
        content = mapping(body.get("content"))
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
            # The schema's `required` holds whenever a body is sent (a body the document calls
            # optional is noted below), so a required field stays required.
            params[field_name] = text
            placed[field_name] = "body"
            sent.append(field_name)
        if not required and any(not params[f].endswith("?") for f in sent):
            self.todos.append(
                f"{where}: the document does not mark the request body required; it is drafted as always sent, "
                "with the fields its schema requires required"
            )
        return sent

    def success_schema(self, op: dict[str, Any]) -> Any | None:
        found = self.success(op)
        return found[1] if found else None

    def success(self, op: dict[str, Any]) -> tuple[str, Any] | None:
        """The first 2xx response: (its JSON media type or another content type, its schema)."""
        responses = mapping(op.get("responses"))
        codes = {str(code): answer for code, answer in responses.items()}  # YAML reads `200:` as an int
        for code in sorted(codes, key=lambda c: (not c.startswith("2"), c)):
            if not code.startswith("2"):
                break
            response = self.safe(lambda c=code: self.schemas.deref(codes[c], "response")[0])
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

    def drop_lifecycle_field(
        self, where: str, operation: dict[str, Any], params: dict[str, str], placed: dict[str, str], body: list[str]
    ) -> list[str]:
        """A lifecycle's state field is never a param: only the lifecycle's transitions change it."""
        block = self.entity_blocks.get(operation.get("entity") or "")
        state_field = mapping(mapping(block).get("lifecycle")).get("field") if block else None
        if not state_field or placed.get(state_field) != "body":
            return body
        del params[state_field]
        self.todos.append(
            f"{where}: the document lets a caller write '{state_field}', the lifecycle state of "
            f"{operation['entity']}; it is not a param (only transitions change it): decide which transition this "
            "operation performs, or whether callers may pick the state"
        )
        return [name for name in body if name != state_field]

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


def _json_media(content: dict[str, Any]) -> str | None:
    for media in content:
        base = str(media).split(";")[0].strip().lower()
        if base == "application/json" or (base.startswith("application/") and base.endswith("+json")):
            return str(media)
    return None
