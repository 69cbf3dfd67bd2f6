"""Who may call a write is always said (scopes or `public: true`), and a draft with items left
`to_decide` is never published. The checker's messages are in tests/test_contract.py's corpus."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from charter.compiler import compile_contract
from charter.compiler.canonical import canonical_json
from charter.contract import Contract, load_contract
from charter.errors import UndecidedDraft
from charter.registry import Registry
from tests.conftest import ROOT, WriteContract, charter

OPEN = {"    scopes: [orders:write]\n": "    public: true\n"}
DRAFT = {"boundaries:": "to_decide:\n  - 'operations.cancel_order: scopes (who may call it)'\n  - guards\nboundaries:"}


def _sha(path: Path) -> str:
    return compile_contract(load_contract(path)).sha256


def test_public_and_to_decide_change_the_hash_only_when_they_say_something(write_contract: WriteContract) -> None:
    base = _sha(write_contract(name="base.yaml"))
    spelled = write_contract(
        replace={"    scopes: [orders:write]\n": "    scopes: [orders:write]\n    public: false\n"}
    )
    assert _sha(spelled) == base  # hashes of contracts written before `public` existed hold
    assert _sha(write_contract(replace=DRAFT, name="draft.yaml")) == base  # a to-do list is not content
    assert _sha(write_contract(replace=OPEN, name="open.yaml")) != base  # opening a write is a rule change
    for name in ("orders", "invoices"):  # the examples say who may make every write
        model = load_contract(ROOT / "contracts" / f"{name}.yaml").model
        assert all(op.scopes for op in model.operations.values() if op.kind == "write")


def test_a_version_published_before_the_rule_still_loads(write_contract: WriteContract) -> None:
    # An earlier release published writes without scopes; the registry must still serve them.
    registry = Registry()
    data = yaml.safe_load(write_contract().read_text(encoding="utf-8"))
    del data["operations"]["cancel_order"]["scopes"]
    old = Contract.model_validate(data)
    with sqlite3.connect(registry.path) as db:
        db.execute(
            "INSERT INTO contract_versions (name, version, sha256, canonical, source_text, source_file, "
            "published_at, relaxation_approved) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("shop", "1.0.0", "0" * 64, canonical_json(old).decode(), "", "old.yaml", "2026-01-01T00:00:00+00:00", 0),
        )
    compiled = registry.get("shop", "1.0.0")
    assert compiled.gate.operations["cancel_order"].scopes == ()


def test_publish_refuses_a_contract_with_items_to_decide(write_contract: WriteContract) -> None:
    registry = Registry()
    draft = write_contract(replace=DRAFT)
    checked = load_contract(draft)  # it checks: a draft is a valid contract the author edits
    with pytest.raises(UndecidedDraft) as refused:
        registry.publish(checked, draft.read_text(encoding="utf-8"))
    assert refused.value.items == ("operations.cancel_order: scopes (who may call it)", "guards")
    assert "shop 1.0.0" in str(refused.value)
    assert "  - operations.cancel_order: scopes (who may call it)\n  - guards\n" in str(refused.value)
    assert "delete its line under `to_decide:`" in str(refused.value)
    assert registry.versions("shop") == []  # nothing recorded
    checked_output = charter("contract", "check", str(draft))
    assert checked_output.returncode == 0
    assert "a draft: 2 item(s) under `to_decide:`; publish refuses it" in checked_output.stdout
    result = charter("contract", "publish", str(draft))
    assert result.returncode == 1
    assert "2 item(s) still to decide" in result.stderr
    # A hand-written contract has no `to_decide:` and publishes as before.
    assert charter("contract", "publish", str(write_contract(name="decided.yaml"))).returncode == 0
