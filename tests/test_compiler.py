"""The compiler: byte-identical artifacts, snapshots of the examples, and what each part holds."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import msgspec
import pytest

from charter.compiler import CompiledContract, artifact_files, compile_contract
from charter.compiler.canonical import canonical_json, content_hash
from charter.contract import load_contract
from tests.conftest import ROOT, WriteContract

SNAPSHOTS = ROOT / "tests" / "snapshots"
EXAMPLES = ["orders", "invoices"]


def _compile(name: str) -> CompiledContract:
    return compile_contract(load_contract(ROOT / "contracts" / f"{name}.yaml"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_artifacts_match_snapshots(name: str) -> None:
    """Set UPDATE_SNAPSHOTS=1 to rewrite them after an intended change, then review the diff."""
    files = artifact_files(_compile(name))
    folder = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        folder.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            (folder / file).write_text(text, encoding="utf-8")
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for file, text in files.items():
        assert (folder / file).read_text(encoding="utf-8") == text, f"{name}/{file} differs from its snapshot"


@pytest.mark.parametrize("name", EXAMPLES)
def test_compilation_is_deterministic(name: str) -> None:
    first, second = _compile(name), _compile(name)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)


def test_hash_ignores_layout_and_comments_but_not_rules(write_contract: WriteContract) -> None:
    base = compile_contract(load_contract(write_contract())).sha256
    reformatted = write_contract(
        replace={
            "contract: shop\n": "# a comment\ncontract:   shop\n",
            "    doc: Fetch one order.\n": "    doc: 'Fetch one order.'\n",
        },
        name="reformatted.yaml",
    )
    assert compile_contract(load_contract(reformatted)).sha256 == base
    explicit_default = write_contract(
        replace={"    scopes: [orders:write]\n": "    scopes: [orders:write]\n    idempotent: false\n"},
        name="explicit.yaml",
    )
    assert compile_contract(load_contract(explicit_default)).sha256 == base
    stricter = write_contract(replace={"entity.total <= 100000": "entity.total <= 50000"}, name="stricter.yaml")
    assert compile_contract(load_contract(stricter)).sha256 != base


def test_hash_is_sha256_of_canonical_json() -> None:
    checked = load_contract(ROOT / "contracts" / "orders.yaml")
    compiled = compile_contract(checked)
    assert compiled.sha256 == content_hash(canonical_json(checked.model))
    assert compiled.canonical.encode() == canonical_json(checked.model)
    assert compiled.gate.sha256 == compiled.surface.sha256 == compiled.sha256


@pytest.mark.parametrize("name", EXAMPLES)
def test_stubs_are_valid_python_with_keyword_only_operations(name: str) -> None:
    compiled = _compile(name)
    namespace: dict[str, object] = {}
    exec(compile(compiled.stub_source, f"{name}_stubs.py", "exec"), namespace)  # the stub is our own output
    proxy = namespace[name]
    tree = ast.parse(compiled.stub_source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    functions = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert list(functions) == list(compiled.gate.operations)
    for op_name, fn in functions.items():
        assert not fn.args.args, f"{op_name} takes positional arguments"
        assert [a.arg for a in fn.args.kwonlyargs] == [p.name for p in compiled.gate.operations[op_name].params]
        assert getattr(proxy, op_name).__doc__.startswith(compiled.gate.operations[op_name].doc)


def test_stub_docstrings_carry_lifecycle_and_boundaries() -> None:
    stub = _compile("orders").stub_source
    cancel = stub[stub.index("def cancel_order") : stub.index("def verify_refund")]
    assert "moves Order.status from pending or confirmed to cancelled" in cancel
    assert "Never cancel an order in picking, packed, or dispatched state." in cancel
    refund = stub[stub.index("def refund_order") :]
    assert "Must follow a successful verify_refund" in refund
    assert "Never refund more than the order total" in refund


def test_prompt_context_states_each_rule_once_in_few_words() -> None:
    prompt = _compile("orders").prompt_context
    assert "OrderStatus (Order.status): pending|confirmed|picking|packed|dispatched|delivered|cancelled" in prompt
    boundaries = prompt[prompt.index("## HARD BOUNDARIES") : prompt.index("## Operations")]
    assert "- Never cancel an order in picking, packed, or dispatched state." in boundaries
    operations = prompt[prompt.index("## Operations") :]
    cancel = "cancel_order(id: int, reason: str) -> Order [write pending|confirmed -> cancelled]"
    assert cancel in operations
    assert (
        "refund_order(id: int, amount: money, reason: RefundReason) -> Order [write, after verify_refund]" in operations
    )
    # A guard that enforces a hard boundary is said once, as the boundary.
    assert "Refunds of an order may not add up to more than its total." not in prompt
    assert "A refund amount must be positive." in operations


def test_gate_table_carries_rules_with_their_boundaries() -> None:
    gate = _compile("orders").gate
    cancel = gate.operations["cancel_order"]
    assert cancel.transition is not None
    assert cancel.transition.from_states == ("pending", "confirmed")
    assert cancel.transition.boundaries == ("no_cancel_after_picking",)
    assert cancel.reader == "get_order"
    assert cancel.scopes == ("orders:write",)
    refund = gate.operations["refund_order"]
    assert refund.after == ("verify_refund",)
    assert refund.after_boundaries == ("refund_after_verification",)
    cap = next(g for g in refund.guards if g.id == "refund_within_total")
    assert cap.boundaries == ("refund_capped_by_total",)
    assert refund.binding.target == "POST /orders/{id}/refunds"
    assert refund.binding.http is not None
    assert (refund.binding.http.service, refund.binding.http.path_params) == ("orders", ("id",))
    assert refund.binding.http.body == ("amount", "reason")  # the params the path does not carry
    listing = gate.operations["list_orders"].binding.http
    assert listing is not None
    assert (listing.query, listing.body) == (("status", "customer"), ())  # a GET sends the rest as query
    assert (gate.limits.max_calls, gate.limits.max_writes) == (50, 5)


def test_surface_holds_no_rules() -> None:
    surface = msgspec.json.decode(msgspec.json.encode(_compile("invoices").surface))
    text = msgspec.json.encode(surface).decode()
    for secret in ("guards", "scopes", "binding", "examples.invoices"):
        assert secret not in text
    assert [o["name"] for o in surface["operations"]][:2] == ["get_invoice", "list_invoices"]


def test_artifact_round_trips_through_msgspec() -> None:
    compiled = _compile("invoices")
    decoded = msgspec.json.decode(msgspec.json.encode(compiled), type=CompiledContract)
    assert decoded == compiled


def test_compile_command_writes_manifest(tmp_path: Path) -> None:
    files = artifact_files(_compile("orders"))
    manifest = msgspec.json.decode(files["manifest.json"])
    assert manifest["sha256"] == _compile("orders").sha256
    assert set(manifest["files"]) == {"stubs.py", "prompt.md", "gate.json", "surface.json"}
