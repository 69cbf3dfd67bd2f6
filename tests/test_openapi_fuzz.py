"""`import-openapi` on generated OpenAPI 3.0/3.1 documents: whatever the document, the draft checks.

Every construct the importer meets in the wild is generated here in any combination: $ref
chains, allOf/oneOf/anyOf, 3.0 `nullable` and 3.1 type lists, enums of any values, maps,
readOnly/writeOnly, names that are no Python identifier, parameters in every place, request
bodies of every kind, security requirements with and without scopes, anonymous alternatives.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.contract import check_contract_data
from charter.contract._yaml import load_yaml
from charter.contract.openapi import draft_from_openapi
from charter.errors import UsageError

NAMES = st.sampled_from(
    ["id", "name", "status", "petId", "from", "x-rate", "total", "items", "kind", "state", "Tag", 7]
)
VALUES = st.sampled_from(["pending", "done", "In-Progress", "ok", "", "1st", "try", None])
COMPONENTS = ["Thing", "Other", "Wrapper", "Code"]


def _schemas(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])},
            optional={
                "format": st.sampled_from(["date-time", "decimal", "uuid", "int64", "binary"]),
                "nullable": st.booleans(),
                "readOnly": st.booleans(),
                "writeOnly": st.booleans(),
            },
        ),
        st.builds(
            lambda t: {"type": t}, st.lists(st.sampled_from(["string", "integer", "null"]), min_size=1, max_size=3)
        ),
        st.builds(lambda v: {"type": "string", "enum": v}, st.lists(VALUES, min_size=1, max_size=4)),
        st.builds(lambda v: {"enum": v}, st.lists(st.integers(0, 3), min_size=1, max_size=3)),
        st.sampled_from([{"$ref": f"#/components/schemas/{c}"} for c in COMPONENTS]),
        st.just({"type": "object", "additionalProperties": {"type": "integer"}}),
        st.just({}),
    )
    if depth == 0:
        return leaf
    inner = _schemas(depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.builds(
            lambda props, req: {"type": "object", "properties": props, "required": req},
            st.dictionaries(NAMES, inner, max_size=4),
            st.lists(NAMES, max_size=3),
        ),
        st.builds(lambda parts: {"allOf": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"oneOf": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"anyOf": parts}, st.lists(inner, min_size=1, max_size=3)),
    )


SCHEMA = _schemas(2)
PARAM = st.one_of(st.just({"type": "integer"}), st.just({"type": "string", "format": "uuid"}), SCHEMA)
SECURITY = st.lists(
    st.one_of(
        st.just({}),
        st.builds(lambda s: {"oauth": s}, st.lists(st.sampled_from(["read:things", "write", "Admin Things", "*"]))),
        st.just({"key": []}),
        st.just({"missing": []}),
    ),
    max_size=3,
)


@st.composite
def _operation(draw: st.DrawFn, path: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = {"responses": {}}
    if draw(st.booleans()):
        op["operationId"] = draw(st.sampled_from(["getThing", "get-thing", "class", "refuse", "do it", "getThing"]))
    params = []
    for placeholder in [p[1:-1] for p in path.split("/") if p.startswith("{")]:
        params.append({"name": placeholder, "in": "path", "required": True, "schema": draw(PARAM)})
    for _ in range(draw(st.integers(0, 3))):
        params.append(
            {
                "name": draw(NAMES),
                "in": draw(st.sampled_from(["query", "header", "cookie"])),
                "required": draw(st.booleans()),
                "schema": draw(PARAM),
            }
        )
    op["parameters"] = params
    if method != "get" and draw(st.booleans()):
        media = draw(st.sampled_from(["application/json", "application/merge-patch+json", "text/plain"]))
        op["requestBody"] = {"required": draw(st.booleans()), "content": {media: {"schema": draw(SCHEMA)}}}
    for code in draw(
        st.lists(st.sampled_from(["200", 200, "201", "204", "2XX", "404", "default"]), min_size=1, max_size=2)
    ):
        media = draw(st.sampled_from(["application/json", "application/json", "image/png", None]))
        op["responses"][code] = {"description": "x"} | ({"content": {media: {"schema": draw(SCHEMA)}}} if media else {})
    if draw(st.booleans()):
        op["security"] = draw(SECURITY)
    return op


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from(["3.0.3", "3.1.0"]))
    components = {name: draw(SCHEMA) for name in COMPONENTS}
    # One resource the generator always gets right, so a draft has an entity to act on.
    components["Item"] = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    paths: dict[str, Any] = {
        "/items/{itemId}": {
            "get": {
                "operationId": "getItem",
                "parameters": [{"name": "itemId", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {
                    "200": {
                        "description": "x",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}},
                    }
                },
            }
        }
    }
    for path in draw(
        st.lists(
            st.sampled_from(["/things", "/things/{id}", "/things/{petId}/do", "/x/{a}/{b}"]), max_size=3, unique=True
        )
    ):
        methods = draw(
            st.lists(
                st.sampled_from(["get", "post", "put", "patch", "delete", "head"]), min_size=1, max_size=3, unique=True
            )
        )
        paths[path] = {m: draw(_operation(path, m)) for m in methods}
    document: dict[str, Any] = {
        "openapi": version,
        "info": {"title": draw(st.sampled_from(["Things API", "class", "42"])), "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "oauth": {"type": "oauth2", "flows": {}},
                "key": {"type": "apiKey", "in": "header", "name": "k"},
            },
        },
    }
    if draw(st.booleans()):
        document["security"] = draw(SECURITY)
    if draw(st.booleans()):
        document["servers"] = [
            draw(
                st.sampled_from(
                    [
                        {"url": "/v1"},
                        {"url": "https://api.example.com/v1"},
                        {"url": "{scheme}://h", "variables": {"scheme": {"default": "https"}}},
                    ]
                )
            )
        ]
    return document


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents())
def test_every_draft_checks_and_opens_no_write_silently(document: dict[str, Any]) -> None:
    try:
        draft = draft_from_openapi(document)
    except UsageError as error:
        refusal = str(error)
    else:
        refusal = ""
    if refusal:
        assert "no operation could be drafted" in refusal  # the only refusal, and it says why
        return
    data, source_map = load_yaml(draft.text, "draft.yaml")
    model = check_contract_data(data, source_map).model
    assert model.to_decide == draft.todos
    # Each operation is drafted to check; the importer's last-resort net (leave out what does not) stays unused.
    assert not [t for t in draft.todos if "its draft did not check" in t]
    for name, operation in model.operations.items():
        if operation.kind == "write":
            assert operation.scopes or (
                operation.public and any(t.startswith(f"operations.{name}: the document ") for t in draft.todos)
            ), name
