"""`charter mcp` as a real process, driven by the `mcp` SDK's own client over stdio (and HTTP)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import ROOT, charter

HAPPY = ROOT / "tests" / "data" / "model" / "happy.json"  # the model cancels order 101


@pytest.fixture
def published(charter_home: Path) -> Path:
    from examples.orders import backend

    backend.seed()
    for name in ("orders", "invoices"):
        result = charter("contract", "publish", f"contracts/{name}.yaml")
        assert result.returncode == 0, result.stderr
    return charter_home


def stdio_server(*scopes: str) -> StdioServerParameters:
    args = ["-m", "charter", "mcp", "--principal", "ada", "--replay", str(HAPPY)]
    for scope in scopes:
        args += ["--scope", scope]
    return StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ), cwd=str(ROOT))


def structured(result: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(result.content[0].text)
    assert result.structured_content == body
    return body


def test_a_client_session_lists_tools_and_resources_runs_an_intent_and_a_program(published: Path) -> None:
    async def session() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with Client(stdio_server("orders:read", "orders:write")) as client:
            tools = (await client.list_tools()).tools
            seen["tools"] = {t.name: t for t in tools}
            resources = (await client.list_resources()).resources
            seen["resources"] = sorted(str(r.uri) for r in resources)
            stubs = await client.read_resource("charter://contracts/orders/1.0.0/stubs")
            seen["stubs"] = stubs.contents[0].text
            seen["intent"] = structured(await client.call_tool("operate_orders", {"intent": "Cancel order 101"}))
            program = 'orders.cancel_order(id=123, reason="late")\nconclude("no")'
            seen["program"] = structured(
                await client.call_tool("execute_program", {"contract": "orders", "program": program})
            )
            seen["audit"] = structured(await client.call_tool("audit_run", {"run_id": seen["intent"]["run_id"]}))
            program_run = {"run_id": seen["program"]["run_id"]}
            seen["program_audit"] = structured(await client.call_tool("audit_run", program_run))
            seen["bad"] = await client.call_tool("execute_program", {"contract": "ordrs", "program": "conclude(1)"})
        return seen

    seen = anyio.run(session)
    assert set(seen["tools"]) == {"operate_orders", "operate_invoices", "execute_program", "audit_run"}
    operate = seen["tools"]["operate_orders"]
    # Generated from the contract: its summary, version, operations and hard boundaries.
    assert operate.description.startswith("Customer orders, from placement to delivery")
    assert "contract orders 1.0.0" in operate.description
    assert "cancel_order (write): Cancel an order at the customer's request." in operate.description
    assert "Never cancel an order in picking, packed, or dispatched state." in operate.description
    assert operate.input_schema["required"] == ["intent"]
    assert seen["resources"] == [
        "charter://contracts/invoices/1.0.0/prompt",
        "charter://contracts/invoices/1.0.0/stubs",
        "charter://contracts/orders/1.0.0/prompt",
        "charter://contracts/orders/1.0.0/stubs",
    ]
    assert "def cancel_order" in seen["stubs"]
    intent = seen["intent"]
    assert (intent["status"], intent["answer"], intent["attempts"]) == ("done", "Order 101 is now cancelled.", 1)
    assert set(intent) == {
        "run_id",
        "status",
        "cause",
        "decision",
        "answer",
        "reason",
        "attempts",
        "contract",
        "version",
    }  # the conclusion only
    # One status for the run, whoever asks: the uncaught denial is refused, its cause the gate's code.
    assert (seen["program"]["status"], seen["program"]["cause"]) == ("refused", "STATE_VIOLATION")
    assert (intent["decision"], seen["program"]["decision"]["code"]) == (None, "STATE_VIOLATION")
    assert (seen["program_audit"]["status"], seen["program_audit"]["cause"]) == ("refused", "STATE_VIOLATION")
    assert "hard boundary no_cancel_after_picking" in seen["program"]["reason"]
    audit = seen["audit"]
    assert (audit["kind"], audit["principal"], audit["status"]) == ("intent", "ada", "done")
    assert audit["verification"]["ok"] is True
    assert seen["bad"].is_error is True
    assert "did you mean 'orders'" in seen["bad"].content[0].text


def test_a_new_contract_version_shows_up_without_a_restart(published: Path, tmp_path: Path) -> None:
    source = (ROOT / "contracts" / "invoices.yaml").read_text(encoding="utf-8")
    newer = ROOT / ".charter" / "test-contracts" / f"invoices-{os.getpid()}.yaml"
    newer.parent.mkdir(parents=True, exist_ok=True)
    newer.write_text(
        source.replace("version: 1.0.0", "version: 1.1.0").replace(
            "changelog:", "changelog: Second version.\n# was:", 1
        ),
        encoding="utf-8",
    )

    async def session() -> tuple[str, str, list[str]]:
        async with Client(stdio_server("invoices:read")) as client:
            before = next(t for t in (await client.list_tools()).tools if t.name == "operate_invoices")
            result = charter("contract", "publish", str(newer))
            assert result.returncode == 0, result.stderr
            after = next(t for t in (await client.list_tools()).tools if t.name == "operate_invoices")
            resources = [str(r.uri) for r in (await client.list_resources()).resources]
            return before.description or "", after.description or "", resources

    try:
        before, after, resources = anyio.run(session)
    finally:
        newer.unlink()
    assert "contract invoices 1.0.0" in before
    assert "contract invoices 1.1.0" in after
    assert "charter://contracts/invoices/1.1.0/stubs" in resources


def test_stdio_runs_act_only_with_the_scopes_the_operator_gave(published: Path) -> None:
    async def session() -> dict[str, Any]:
        async with Client(stdio_server("orders:read")) as client:
            program = 'orders.cancel_order(id=101, reason="x")\nconclude("cancelled")'
            return structured(await client.call_tool("execute_program", {"contract": "orders", "program": program}))

    result = anyio.run(session)
    assert result["status"] == "refused"
    assert "orders:write" in result["reason"]


def test_streamable_http_needs_a_token_and_acts_for_its_principal(published: Path) -> None:
    import httpx
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from charter.audit import AuditLog
    from charter.registry import Registry
    from charter.server import CharterService, TokenStore, serving
    from charter.server._mcp import http_app

    store = TokenStore(published / "tokens.yaml")
    token = store.add("upstream", "upstream-ai", ["orders:read"])
    service = CharterService.create(registry=Registry(), audit=AuditLog(), agent=None)
    with serving(http_app(service, store, "127.0.0.1"), name="charter-mcp") as url:
        refused = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})

        async def session() -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
            ):
                program = "conclude(orders.get_order(id=102).status)"
                return structured(await client.call_tool("execute_program", {"contract": "orders", "program": program}))

        result = anyio.run(session)
    assert refused.status_code == 401
    assert result["status"] == "done"
    assert result["answer"] == "confirmed"
    assert AuditLog().run(result["run_id"]).opened.principal == "upstream-ai"
