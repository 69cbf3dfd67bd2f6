"""`charter contract import-openapi`: a draft from the orders service's own OpenAPI document."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from charter.contract import Contract, load_contract
from charter.contract.openapi import draft_from_openapi, load_openapi
from tests.conftest import ROOT, charter, compiled

SPEC = ROOT / "examples" / "orders" / "openapi.json"


def test_the_kept_document_is_the_services_own() -> None:
    from examples.orders.service import app

    if os.environ.get("UPDATE_SNAPSHOTS"):
        SPEC.write_text(json.dumps(app.openapi(), indent=2) + "\n", encoding="utf-8")
    assert json.loads(SPEC.read_text(encoding="utf-8")) == app.openapi()


def test_a_draft_checks_and_binds_every_operation_as_the_written_contract_does(tmp_path: Path) -> None:
    draft = tmp_path / "orders.yaml"
    result = charter("contract", "import-openapi", str(SPEC), "-o", str(draft), "--name", "orders")
    assert result.returncode == 0, result.stderr
    assert "6 operations, 1 entities" in result.stdout
    checked = load_contract(draft)  # a draft is a valid contract: the author edits, never repairs
    model = checked.model
    written = compiled("orders").gate.operations
    assert set(model.operations) == set(written)
    for name, operation in model.operations.items():
        assert operation.binding is not None
        assert operation.binding.http is not None
        endpoint = written[name].binding.http
        assert endpoint is not None
        assert operation.binding.http.method == endpoint.method
        assert operation.binding.http.path.replace("{order_id}", "{id}") == endpoint.path
        assert operation.kind == written[name].kind
    order = model.entities["Order"]
    assert order.lifecycle is not None
    assert order.lifecycle.states[0] == "pending"
    assert order.fields["total"] == "money"
    assert model.operations["refund_order"].params["amount"] == "money"
    # What a document cannot say is listed for the author, never guessed silently.
    text = draft.read_text(encoding="utf-8")
    assert "# TO DECIDE before publishing" in text
    assert "entities.Order.lifecycle: the states come from the schema; write the allowed transitions" in text
    assert "operations.cancel_order: the lifecycle transition it performs" in text
    assert "boundaries: the hard boundaries" in text
    assert model.boundaries == []


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("swagger: '2.0'\npaths: {}\n", "not an OpenAPI 3 document"),
        ("openapi: 3.1.0\ninfo: {title: x}\npaths: {}\n", "the document has no paths"),
        ("openapi: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_document_gets_a_clear_error_and_writes_nothing(tmp_path: Path, content: str, words: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(content, encoding="utf-8")
    out = tmp_path / "draft.yaml"
    result = charter("contract", "import-openapi", str(spec), "-o", str(out))
    assert result.returncode == 1
    assert words in result.stderr
    assert not out.exists()


# --- real public documents (tests/data/openapi/SOURCES.md) ------------------------------------

REAL = ROOT / "tests" / "data" / "openapi"
DOCUMENTS = {
    "oai-petstore-expanded-3.0": "petstore",
    "swagger-petstore-3.0": "petstore",
    "redocly-museum-3.1": "museum",
    "redoc-demo-3.1": "petstore",
}


@dataclass
class Drafted:
    spec: dict[str, Any]
    path: Path
    model: Contract
    text: str


def _draft(document: str, folder: Path) -> Drafted:
    spec = load_openapi(REAL / f"{document}.yaml")
    draft = draft_from_openapi(spec, name=DOCUMENTS[document], source=f"{document}.yaml")
    path = folder / f"{document}.yaml"
    path.write_text(draft.text, encoding="utf-8")
    return Drafted(spec, path, load_contract(path).model, draft.text)  # load_contract: the draft checks


@pytest.fixture(params=sorted(DOCUMENTS))
def real(request: pytest.FixtureRequest, tmp_path: Path) -> Drafted:
    return _draft(request.param, tmp_path)


def _resolve(spec: dict[str, Any], node: Any) -> dict[str, Any]:
    """A schema with $ref followed and allOf merged (top-level properties only), done apart from
    the importer so the tests do not check the importer against itself."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if not isinstance(node, dict):
        return {}
    merged = dict(node)
    for part in node.get("allOf", []):
        resolved = _resolve(spec, part)
        merged["properties"] = {**resolved.get("properties", {}), **merged.get("properties", {})}
    return merged


def _operations(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (str(op.get("operationId", "")), op)
        for item in spec["paths"].values()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _draft_name(model: Contract, operation_id: str) -> str | None:
    wanted = re.sub(r"[^0-9a-z]+", "", operation_id.lower())
    return next((n for n in model.operations if n.replace("_", "") == wanted), None)


def test_a_real_document_drafts_a_contract_that_checks_and_lists_what_is_left(real: Drafted) -> None:
    assert real.model.operations
    assert real.model.to_decide
    assert real.text.index("to_decide:") < real.text.index("\noperations:")  # the author sees it first
    assert "boundaries: the hard boundaries (never ...) and the rules that enforce them" in real.model.to_decide
    # Every operation of the document is drafted or listed as left out, never dropped silently.
    for operation_id, _ in _operations(real.spec):
        name = _draft_name(real.model, operation_id)
        assert name is not None or any(
            re.sub(r"[^0-9a-z]+", "", item.split(" ")[0].lower()).endswith(
                re.sub(r"[^0-9a-z]+", "", operation_id.lower())
            )
            and "left out" in item
            for item in real.model.to_decide
        ), operation_id


def test_a_write_is_never_open_unless_the_document_says_so_and_the_author_is_asked(real: Drafted) -> None:
    for name, operation in real.model.operations.items():
        if operation.kind != "write":
            continue
        if operation.public:
            assert operation.scopes == []
            assert any(
                item.startswith(f"operations.{name}: the document ") and "public: true" in item
                for item in real.model.to_decide
            ), name
        else:
            assert operation.scopes, name


def test_read_only_fields_are_never_params_and_write_only_fields_never_returned(real: Drafted) -> None:
    for operation_id, op in _operations(real.spec):
        name = _draft_name(real.model, operation_id)
        content = (op.get("requestBody") or {}).get("content", {}).get("application/json")
        if name is None or content is None:
            continue
        body = _resolve(real.spec, content["schema"])
        for prop, sub in body.get("properties", {}).items():
            if _resolve(real.spec, sub).get("readOnly"):
                assert prop not in real.model.operations[name].params, f"{name}.{prop}"
    for type_name, component in (real.spec.get("components") or {}).get("schemas", {}).items():
        fields = real.model.records.get(type_name) or (
            real.model.entities[type_name].fields if type_name in real.model.entities else {}
        )
        for prop, sub in _resolve(real.spec, component).get("properties", {}).items():
            if _resolve(real.spec, sub).get("writeOnly"):
                assert prop not in fields, f"{type_name}.{prop}"


def test_all_of_responses_resolve_to_their_merged_fields(tmp_path: Path) -> None:
    expanded = _draft("oai-petstore-expanded-3.0", tmp_path).model
    # Pet is allOf [NewPet, {id}]: an entity with the fields of both, keyed by the id.
    assert expanded.entities["Pet"].key == "id"
    assert set(expanded.entities["Pet"].fields) == {"id", "name", "tag"}
    assert expanded.operations["find_pet_by_id"].returns == "Pet"
    assert expanded.operations["find_pets"].returns == "list[Pet]"
    assert expanded.operations["add_pet"].params == {"name": "str", "tag": "str?"}
    museum = _draft("redocly-museum-3.1", tmp_path).model
    assert museum.operations["buy_museum_tickets"].returns == "MuseumTicketsConfirmation"
    assert {"message", "confirmationCode", "ticketDate", "ticketType"} <= set(
        museum.records["MuseumTicketsConfirmation"]
    )
    assert {"email", "ticketDate", "ticketType"} <= set(museum.operations["buy_museum_tickets"].params)


def test_document_security_becomes_contract_scopes(tmp_path: Path) -> None:
    swagger = _draft("swagger-petstore-3.0", tmp_path).model
    for name in ("add_pet", "update_pet", "delete_pet", "update_pet_with_form"):
        assert swagger.operations[name].scopes == ["write:pets", "read:pets"], name
    assert swagger.operations["place_order"].public  # the document sets no security on it
    assert any(
        i.startswith("operations.get_pet_by_id: the document accepts any one of api_key") for i in swagger.to_decide
    )
    museum = _draft("redocly-museum-3.1", tmp_path).model  # global `security`, HTTP basic: no scopes
    for name, operation in museum.operations.items():
        assert operation.scopes == [f"museum:{operation.kind}"], name
    redoc = _draft("redoc-demo-3.1", tmp_path).model
    assert redoc.operations["get_pet_by_id"].scopes == ["petstore:read"]  # api_key
    assert redoc.operations["place_order"].public  # `security: [{}]`: anonymous calls allowed
    expanded = _draft("oai-petstore-expanded-3.0", tmp_path).model
    assert expanded.operations["delete_pet"].public
    assert expanded.operations["add_pet"].public


def test_what_cannot_be_mapped_is_listed_not_dropped(tmp_path: Path) -> None:
    swagger = _draft("swagger-petstore-3.0", tmp_path).model
    # An optional `id` still makes an entity: the draft requires it and says so.
    assert swagger.entities["Pet"].key == "id"
    assert swagger.entities["Pet"].fields["id"] == "int"
    assert any(i.startswith("entities.Pet.key: the document does not require 'id'") for i in swagger.to_decide)
    assert "create_users_with_list_input" not in swagger.operations
    assert any(
        i.startswith(
            "operations.create_users_with_list_input (POST /user/createWithList): left out: its request body "
            "is a JSON array"
        )
        for i in swagger.to_decide
    )
    assert any(i.startswith("operations.get_inventory (GET /store/inventory): left out:") for i in swagger.to_decide)
    assert "operations.delete_pet: header parameter 'api_key' is not sent by an HTTP binding" in swagger.to_decide
    redoc = _draft("redoc-demo-3.1", tmp_path).model
    assert redoc.operations["place_order"].params.keys() >= {"requestId", "quantity"}
    assert "id" not in redoc.operations["place_order"].params  # readOnly
    assert "complete" not in redoc.operations["place_order"].params  # readOnly
    assert "requestId" not in redoc.entities["Order"].fields  # writeOnly
    assert redoc.entities["Pet"].fields["huntingSkill"] == "int?"  # 3.1: type: [integer]


def test_publish_refuses_a_draft_until_its_items_are_decided(real: Drafted) -> None:
    refused = charter("contract", "publish", str(real.path))
    assert refused.returncode == 1
    assert "item(s) still to decide, so it is not published" in refused.stderr
    assert real.model.to_decide[0] in refused.stderr
    assert "delete its line under `to_decide:`" in refused.stderr
    assert "no contracts published yet" in charter("contract", "list").stdout
    # The author decides each item and deletes it; the key goes once the list is empty.
    data = yaml.safe_load(real.path.read_text(encoding="utf-8"))
    del data["to_decide"]
    real.path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    published = charter("contract", "publish", str(real.path))
    assert published.returncode == 0, published.stderr


# --- one small document, one assertion per mapping rule -----------------------------------------

SMALL: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Shop API", "version": "1"},
    "servers": [{"url": "{scheme}://shop.example.com/v1", "variables": {"scheme": {"default": "https"}}}],
    "security": [{"oauth": ["shop.read"]}],
    "components": {
        "securitySchemes": {"oauth": {"type": "oauth2", "flows": {}}, "key": {"type": "apiKey", "in": "header"}},
        "schemas": {
            "Order": {
                "type": "object",
                "required": ["orderId", "total"],
                "properties": {
                    "orderId": {"type": "string", "readOnly": True},
                    "total": {"type": "number"},
                    "note": {"type": ["string", "null"]},
                    "legacyNote": {"type": "string", "nullable": True},
                    "card": {"type": "string", "writeOnly": True},
                    "x-trace": {"type": "string"},
                    "payer": {
                        "oneOf": [
                            {"type": "object", "required": ["iban"], "properties": {"iban": {"type": "string"}}},
                            {"type": "object", "required": ["card"], "properties": {"card": {"type": "string"}}},
                        ]
                    },
                    "ref": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                },
            },
        },
    },
    "paths": {
        "/orders/{orderId}": {
            "get": {
                "operationId": "getOrder",
                "parameters": [{"name": "orderId", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {
                        "description": "x",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [
                                        {"$ref": "#/components/schemas/Order"},
                                        {"properties": {"links": {"type": "object"}}},
                                    ]
                                }
                            }
                        },
                    }
                },
            },
            "delete": {
                "operationId": "class",
                "security": [{"oauth": ["shop.write", "admin"]}],
                "parameters": [{"name": "orderId", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"204": {"description": "x"}},
            },
        },
        "/orders": {
            "post": {
                "operationId": "createOrder",
                "security": [],
                "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": ["boolean", "null"]}}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}},
                },
                "responses": {
                    "201": {
                        "description": "x",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}},
                    }
                },
            },
            "put": {
                "operationId": "importOrders",
                "security": [{"key": []}],
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "other.yaml#/Order"}}}},
                "responses": {"200": {"description": "x"}},
            },
        },
    },
}


def test_each_mapping_rule_on_a_small_document(tmp_path: Path) -> None:
    draft = draft_from_openapi(SMALL)
    path = tmp_path / "shop.yaml"
    path.write_text(draft.text, encoding="utf-8")
    model = load_contract(path).model
    todo = model.to_decide
    assert model.binding is not None
    assert model.binding.http is not None
    assert model.binding.http.base_url == "https://shop.example.com/v1"  # server variables filled in
    order = model.entities["Order"]
    assert order.key == "orderId"  # no `id`: the placeholder GET /orders/{orderId} addresses it by
    assert order.fields["note"] == "str?"  # 3.1: type: [string, "null"]
    assert order.fields["legacyNote"] == "str?"  # 3.0: nullable
    assert "card" not in order.fields  # writeOnly: never returned
    assert "x-trace" not in order.fields
    assert "Order.x-trace: 'x-trace' is not a Python identifier, so it is left out" in todo
    assert "ref" not in order.fields
    assert "Order.ref: left out: it is one of str, int, and a contract value has one type" in todo
    payer = order.fields["payer"].rstrip("?")
    assert model.records[payer] == {"iban": "str?", "card": "str?"}  # oneOf objects: every field, optional
    assert any(t.startswith(f"Order.payer: one of 2 object shapes; drafted as {payer}") for t in todo)
    get = model.operations["get_order"]
    assert (get.returns, get.entity, get.key, get.scopes) == ("Order", "Order", "orderId", ["shop.read"])
    delete = model.operations["class_op"]  # a Python keyword is no operation name
    assert (delete.entity, delete.key) == ("Order", "orderId")
    assert delete.scopes == ["shop.write", "shop_api:admin"]  # a scope without a namespace gets the contract's
    assert "operations.class_op: the document's scope 'admin' is drafted as 'shop_api:admin'" in todo
    create = model.operations["create_order"]
    assert "orderId" not in create.params  # readOnly: never a param
    assert create.params["card"] == "str?"  # writeOnly: a param (optional, as the schema says)
    assert create.params["dryRun"] == "bool?"
    assert create.public  # `security: []` overrides the document's: unauthenticated
    assert create.binding is not None
    assert create.binding.http is not None
    assert create.binding.http.query == ["dryRun"]
    assert "import_orders" not in model.operations
    assert any(
        t.startswith(
            "operations.import_orders (PUT /orders): left out: its schema is the external reference other.yaml#/Order"
        )
        for t in todo
    )


def _booking_document(*, body_required: bool) -> dict[str, Any]:
    booking = {"$ref": "#/components/schemas/Booking"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "trains", "version": "1"},
        "servers": [{"url": "https://trains.example.com"}],
        "paths": {
            "/bookings": {
                "post": {
                    "operationId": "createBooking",
                    "security": [],
                    "requestBody": {
                        "required": body_required,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewBooking"}}},
                    },
                    "responses": {"201": {"content": {"application/json": {"schema": booking}}}},
                }
            },
            "/bookings/{id}": {
                "get": {
                    "operationId": "getBooking",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {"200": {"content": {"application/json": {"schema": booking}}}},
                }
            },
        },
        "components": {
            "schemas": {
                # The required list sits in an allOf member of its own, beside the $ref.
                "NewBooking": {"allOf": [{"$ref": "#/components/schemas/BookingBase"}, {"required": ["seat", "fare"]}]},
                "BookingBase": {
                    "type": "object",
                    "properties": {
                        "seat": {"type": "string"},
                        "fare": {"type": "integer"},
                        "note": {"type": "string"},
                        "status": {"type": "string", "enum": ["held", "paid"]},
                    },
                },
                "Booking": {
                    "type": "object",
                    "required": ["id", "seat", "fare", "status"],
                    "properties": {
                        "id": {"type": "integer", "readOnly": True},
                        "seat": {"type": "string"},
                        "fare": {"type": "integer"},
                        "status": {"type": "string", "enum": ["held", "paid"]},
                    },
                },
            }
        },
    }


@pytest.mark.parametrize("body_required", [True, False])
def test_all_of_required_fields_stay_required_and_the_lifecycle_field_is_never_a_param(
    tmp_path: Path, body_required: bool
) -> None:
    draft = draft_from_openapi(_booking_document(body_required=body_required))
    path = tmp_path / "trains.yaml"
    path.write_text(draft.text, encoding="utf-8")
    model = load_contract(path).model  # the draft checks
    assert model.entities["Booking"].lifecycle is not None
    assert model.entities["Booking"].lifecycle.field == "status"
    create = model.operations["create_booking"]
    assert create.params == {"seat": "str", "fare": "int", "note": "str?"}
    assert any(
        t.startswith("operations.create_booking: the document lets a caller write 'status', the lifecycle state")
        for t in model.to_decide
    )
    noted = any("does not mark the request body required" in t for t in model.to_decide)
    assert noted is not body_required
