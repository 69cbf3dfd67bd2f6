"""`charter contract import-openapi`: a draft from the orders service's own OpenAPI document."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from charter.contract import load_contract
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
