"""Refused and failed conclusions carry the deciding gate decision, from its receipt, beside
the prose: the Python API (Execution, Conclusion), `charter exec --json`, HTTP and MCP. Where
no gate decision decided the run (refuse(), a timeout), `decision` is null and `cause` names
the outcome."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters

from charter.agent import Charter, ScriptedModel
from charter.audit import AuditLog
from charter.principal import Principal
from charter.sandbox import SandboxLimits
from tests.conftest import ALL_ORDER_SCOPES, ROOT, Governed, charter

UNCAUGHT = 'orders.cancel_order(id=123, reason="x")\nconclude("cancelled")'
CAUGHT = 'try:\n    orders.cancel_order(id=123, reason="x")\nexcept ContractViolation as v:\n    refuse(v.reason)'
READ_ONLY = Principal("bob", frozenset({"orders:read"}))


def assert_from_receipt(log: AuditLog, decision: dict[str, Any], code: str, operation: str) -> None:
    """The decision names a Decision receipt that says exactly this."""
    row = log.stored_at(decision["log_seq"])
    assert row is not None
    assert (row.run_id, row.seq, row.link) == (decision["run_id"], decision["seq"], decision["link"])
    body = json.loads(row.body)
    assert (body["kind"], body["decision"], body["code"], body["operation"]) == ("decision", "DENY", code, operation)
    assert (decision["code"], decision["operation"]) == (code, operation)
    assert (decision["clause"], decision["boundary"]) == (body["clause"], body["boundary"])


def test_an_uncaught_denial_is_the_executions_decision(governed: Governed) -> None:
    import msgspec

    execution = governed.run(UNCAUGHT)
    assert (execution.status, execution.cause) == ("refused", "STATE_VIOLATION")
    assert execution.decision is not None
    decision = msgspec.to_builtins(execution.decision)
    assert_from_receipt(governed.log, decision, "STATE_VIOLATION", "cancel_order")
    assert decision["run_id"] == execution.run_id
    assert decision["clause"] == "transition:Order.cancel"
    assert decision["boundary"] == "no_cancel_after_picking"

    scoped = governed.runner.execute(UNCAUGHT, contract=governed.contract, principal=READ_ONLY)
    assert scoped.decision is not None
    assert (scoped.decision.code, scoped.cause) == ("FORBIDDEN_SCOPE", "FORBIDDEN_SCOPE")


def test_no_gate_decision_decided_a_refusal_or_a_timeout(governed: Governed) -> None:
    refused = governed.run(CAUGHT)
    assert (refused.status, refused.cause, refused.decision) == ("refused", "refused", None)
    timed_out = governed.runner.execute(
        "while True:\n    pass",
        contract=governed.contract,
        principal=Principal("ada", ALL_ORDER_SCOPES),
        limits=SandboxLimits.from_contract(governed.contract.gate.limits).tightened(cpu_seconds=0.2),
    )
    assert timed_out.status == "failed"
    assert timed_out.decision is None
    assert timed_out.cause is not None


def test_an_intents_conclusion_carries_the_denial_of_its_program_run(governed: Governed) -> None:
    import msgspec

    model = ScriptedModel([f"```python\n{CAUGHT}\n```"])
    conclusion = Charter(model=model, runner=governed.runner).handle(
        "Cancel order 123", contract=governed.contract, principal=Principal("ada", ALL_ORDER_SCOPES)
    )
    assert (conclusion.status, conclusion.cause) == ("refused", "STATE_VIOLATION")
    assert conclusion.decision is not None
    (program_run,) = governed.log.run(conclusion.run_id).program_runs()
    decision = msgspec.to_builtins(conclusion.decision)
    assert decision["run_id"] == program_run
    assert_from_receipt(governed.log, decision, "STATE_VIOLATION", "cancel_order")


def test_exec_json_carries_the_decision(governed: Governed, tmp_path: Path) -> None:
    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    program = tmp_path / "p.py"
    program.write_text(UNCAUGHT, encoding="utf-8")
    result = charter("exec", str(program), "-c", "orders", "-p", "ada", "-s", "orders:write", "--json")
    assert result.returncode == 2, result.stderr
    body = json.loads(result.stdout)
    assert_from_receipt(governed.log, body["decision"], "STATE_VIOLATION", "cancel_order")
    program.write_text(CAUGHT, encoding="utf-8")
    refused = json.loads(charter("exec", str(program), "-c", "orders", "-p", "ada", "--json").stdout)
    assert (refused["status"], refused["cause"], refused["decision"]) == ("refused", "refused", None)


def test_http_and_mcp_conclusions_carry_the_decision(governed: Governed, charter_home: Path) -> None:
    from charter.registry import Registry
    from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving

    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    service = CharterService.create(registry=Registry(), audit=governed.log, agent=None)
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["orders:read", "orders:write"])
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    with serving(app, name="charter-api") as url, httpx.Client(base_url=url, timeout=60) as client:
        headers = {"Authorization": f"Bearer {token}"}
        denied = client.post("/v1/programs", json={"contract": "orders", "program": UNCAUGHT}, headers=headers)
        refused = client.post("/v1/programs", json={"contract": "orders", "program": CAUGHT}, headers=headers)
    assert denied.status_code == 200
    assert_from_receipt(governed.log, denied.json()["decision"], "STATE_VIOLATION", "cancel_order")
    assert (refused.json()["cause"], refused.json()["decision"]) == ("refused", None)

    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "charter", "mcp", "--principal", "ada", "--scope", "orders:write"],
        env=dict(os.environ),
        cwd=str(ROOT),
    )

    async def session() -> dict[str, Any]:
        async with Client(parameters) as mcp:
            result = await mcp.call_tool("execute_program", {"contract": "orders", "program": UNCAUGHT})
            body: dict[str, Any] = json.loads(result.content[0].text)
            return body

    body = anyio.run(session)
    assert_from_receipt(governed.log, body["decision"], "STATE_VIOLATION", "cancel_order")
