"""The `charter` command, run as a real process against real files and a real registry."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT, WriteContract, charter


def test_check_ok_and_failing(write_contract: WriteContract) -> None:
    ok = charter("contract", "check", "contracts/orders.yaml", "contracts/invoices.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "contracts/orders.yaml: ok (orders 1.0.0, sha256 " in ok.stdout
    bad = write_contract(replace={"to: cancelled}": "to: canceled}"})
    failed = charter("contract", "check", str(bad))
    assert failed.returncode == 1
    assert (
        f"{bad}:21:50: transition 'cancel' names unknown state 'canceled' (did you mean 'cancelled'?)" in failed.stdout
    )


def test_compile_writes_artifacts(tmp_path: Path) -> None:
    result = charter("contract", "compile", "contracts/orders.yaml", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["contract"] == "orders"
    assert (tmp_path / "out" / "stubs.py").read_text().startswith('"""Typed proxies for contract orders 1.0.0')


def test_publish_list_show_diff(write_contract: WriteContract, charter_home: Path) -> None:
    published = charter("contract", "publish", "contracts/orders.yaml")
    assert published.returncode == 0, published.stderr
    assert "published orders 1.0.0" in published.stdout
    again = charter("contract", "publish", "contracts/orders.yaml")
    assert "already published with this content" in again.stdout
    listing = json.loads(charter("contract", "list", "--json").stdout)
    assert [(v["name"], v["version"]) for v in listing] == [("orders", "1.0.0")]
    shown = charter("contract", "show", "orders@1.0.0")
    assert "## HARD BOUNDARIES" in shown.stdout
    assert (
        "def cancel_order(*, id: int, reason: str) -> Order:" in charter("contract", "show", "orders", "--stubs").stdout
    )
    relaxed = ROOT.joinpath("contracts/orders.yaml").read_text().replace("version: 1.0.0", "version: 1.1.0")
    relaxed = relaxed.replace("cancel: {from: [pending, confirmed]", "cancel: {from: [pending, confirmed, dispatched]")
    relaxed_file = ROOT / ".charter" / "test-relaxed.yaml"  # below the checkout so its binding resolves
    relaxed_file.parent.mkdir(exist_ok=True)
    relaxed_file.write_text(relaxed)
    try:
        diff = json.loads(charter("contract", "diff", "orders@1.0.0", str(relaxed_file), "--json").stdout)
        assert diff == [
            {
                "kind": "relaxation",
                "where": "entities.Order.lifecycle.transitions.cancel",
                "message": "'cancel' is now also allowed from dispatched",
            }
        ]
        refused = charter("contract", "publish", str(relaxed_file))
        assert refused.returncode == 1
        assert "--allow-relaxation" in refused.stderr
        assert charter("contract", "publish", str(relaxed_file), "--allow-relaxation").returncode == 0
    finally:
        relaxed_file.unlink()
    assert [v["version"] for v in json.loads(charter("contract", "list", "--json").stdout)] == ["1.0.0", "1.1.0"]


def test_show_unknown_contract_fails_clearly() -> None:
    result = charter("contract", "show", "nothing")
    assert result.returncode == 1
    assert "error: no contract named 'nothing' is published" in result.stderr


def test_schema_is_json() -> None:
    result = charter("contract", "schema")
    schema = json.loads(result.stdout)
    assert schema["title"] == "Charter contract"
    assert "operations" in schema["properties"]
