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


REVISIONS = {"legacy": "2025-11-25", "auto": "2026-07-28"}  # Client mode -> the revision it negotiates
CONCLUSION_KEYS = {"run_id", "status", "cause", "decision", "answer", "data", "reason", "contract", "version"}


@pytest.mark.parametrize("mode", list(REVISIONS))
def test_a_client_session_lists_tools_and_resources_runs_an_intent_and_a_program(published: Path, mode: str) -> None:
    from mcp import MCPError

    async def session() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with Client(stdio_server("orders:read", "orders:write"), mode=mode) as client:
            seen["revision"] = client.protocol_version
            seen["server"] = client.server_info
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
            program = 'o = orders.get_order(id=102)\nconclude(o.status, data={"id": o.id, "status": o.status})'
            seen["data"] = structured(
                await client.call_tool("execute_program", {"contract": "orders", "program": program})
            )
            seen["audit"] = structured(await client.call_tool("audit_run", {"run_id": seen["intent"]["run_id"]}))
            program_run = {"run_id": seen["program"]["run_id"]}
            seen["program_audit"] = structured(await client.call_tool("audit_run", program_run))
            seen["bad"] = await client.call_tool("execute_program", {"contract": "ordrs", "program": "conclude(1)"})
            for label, name, arguments in [
                ("missing", "execute_program", {"contract": "orders"}),
                ("wrong_type", "execute_program", {"contract": "orders", "program": 5}),
                ("extra", "audit_run", {"run_id": "0" * 32, "verbose": True}),
                ("extra_program", "execute_program", {"contract": "orders", "program": "x", "input": {}}),
                ("extra_operate", "operate_orders", {"intent": "x", "verison": "1"}),
                ("unknown_tool", "operate_ordrs", {"intent": "x"}),
                ("version_in_name", "operate_orders@1", {"intent": "x"}),
            ]:
                with pytest.raises(MCPError) as raised:
                    await client.call_tool(name, arguments)
                seen[label] = raised.value.error
        return seen

    seen = anyio.run(session)
    assert seen["revision"] == REVISIONS[mode]
    from importlib.metadata import version

    assert (seen["server"].name, seen["server"].version) == ("charter", version("charter"))
    approval_tools = {"run_status", "approvals_list", "approval_show", "approval_decide"}
    assert set(seen["tools"]) == {"operate_orders", "operate_invoices", "execute_program", "audit_run", *approval_tools}
    operate = seen["tools"]["operate_orders"]
    # Generated from the contract: its summary, version, operations and hard boundaries.
    assert operate.description.startswith("Customer orders, from placement to delivery")
    assert "contract orders 1.0.0" in operate.description
    assert "cancel_order (write): Cancel an order at the customer's request." in operate.description
    assert "Never cancel an order in picking, packed, or dispatched state." in operate.description
    assert operate.input_schema["required"] == ["intent"]
    # Every tool says what it returns; the client validated each result above against it.
    for tool in seen["tools"].values():
        assert (tool.output_schema or {}).get("type") == "object", tool.name
    assert set(operate.output_schema["required"]) == CONCLUSION_KEYS
    # Hints from the contract: orders and invoices each have a write that is not idempotent.
    hints = {
        name: (t.annotations.read_only_hint, t.annotations.destructive_hint, t.annotations.idempotent_hint)
        for name, t in seen["tools"].items()
    }
    assert hints["operate_orders"] == (False, True, False)
    assert hints["operate_invoices"] == (False, True, False)
    assert hints["audit_run"] == (True, None, None)
    assert seen["resources"] == [
        "charter://contracts/invoices/1.0.0/prompt",
        "charter://contracts/invoices/1.0.0/stubs",
        "charter://contracts/orders/1.0.0/prompt",
        "charter://contracts/orders/1.0.0/stubs",
    ]
    assert "def cancel_order" in seen["stubs"]
    intent = seen["intent"]
    assert (intent["status"], intent["answer"], intent["attempts"]) == ("done", "Order 101 is now cancelled.", 1)
    assert set(intent) == CONCLUSION_KEYS | {"attempts"}  # the conclusion only, as HTTP returns it
    assert set(seen["program"]) == CONCLUSION_KEYS
    assert seen["data"]["data"] == {"id": 102, "status": "confirmed"}
    # One status for the run, whoever asks: the uncaught denial is refused, its cause the gate's code.
    assert (seen["program"]["status"], seen["program"]["cause"]) == ("refused", "STATE_VIOLATION")
    assert (intent["decision"], seen["program"]["decision"]["code"]) == (None, "STATE_VIOLATION")
    assert (seen["program_audit"]["status"], seen["program_audit"]["cause"]) == ("refused", "STATE_VIOLATION")
    assert "hard boundary no_cancel_after_picking" in seen["program"]["reason"]
    audit = seen["audit"]
    assert (audit["kind"], audit["principal"], audit["status"]) == ("intent", "ada", "done")
    assert audit["verification"]["ok"] is True
    bad = seen["bad"]
    assert bad.is_error is True
    assert bad.structured_content["type"] == "urn:charter:problem:contract-not-found"
    assert "did you mean 'orders'" in bad.structured_content["detail"]
    # Bad arguments are JSON-RPC invalid_params naming the argument, never a private class.
    errors = {label: seen[label] for label in ("missing", "wrong_type", "extra", "unknown_tool", "version_in_name")}
    assert {e.code for e in errors.values()} == {-32602}
    assert "missing argument 'program'" in errors["missing"].message
    assert "argument 'program' must be a string, not a number" in errors["wrong_type"].message
    assert "unknown argument 'verbose'" in errors["extra"].message
    # The optional arguments are listed with the required ones: a caller learns every argument it may send.
    assert seen["extra_program"].message == (
        "execute_program: unknown argument 'input' (did you mean 'inputs'?); it takes contract, program; "
        "optional: inputs, secret_inputs"
    )
    assert seen["extra_operate"].message == (
        "operate_orders: unknown argument 'verison' (did you mean 'version'?); it takes intent; optional: version, "
        "inputs, secret_inputs"
    )
    assert "no tool 'operate_ordrs'" in errors["unknown_tool"].message
    fields = [errors[label].data["field"] for label in ("missing", "wrong_type", "extra", "unknown_tool")]
    assert fields == ["program", "program", "verbose", "name"]
    for error in [*errors.values(), bad]:
        assert "_ToolError" not in str(error)
        assert "Error'" not in str(error)


def test_tool_hints_follow_the_contracts_operations() -> None:
    from types import SimpleNamespace

    from charter.server._mcp import tool_annotations

    def contract(*operations: tuple[str, bool]) -> Any:
        ops = {f"op{i}": SimpleNamespace(kind=kind, idempotent=idem) for i, (kind, idem) in enumerate(operations)}
        return SimpleNamespace(gate=SimpleNamespace(operations=ops))

    def hints(*operations: tuple[str, bool]) -> tuple[bool | None, bool | None, bool | None]:
        a = tool_annotations("t", [contract(*operations)])
        return a.read_only_hint, a.destructive_hint, a.idempotent_hint

    assert hints(("read", False)) == (True, None, None)
    assert hints(("read", False), ("write", True), ("write", True)) == (False, True, True)
    assert hints(("write", True), ("write", False)) == (False, True, False)


@pytest.mark.parametrize("mode", list(REVISIONS))
def test_a_new_contract_version_shows_up_without_a_restart(published: Path, mode: str) -> None:
    source = (ROOT / "contracts" / "invoices.yaml").read_text(encoding="utf-8")
    newer = ROOT / ".charter" / "test-contracts" / f"invoices-{os.getpid()}-{mode}.yaml"
    newer.parent.mkdir(parents=True, exist_ok=True)
    newer.write_text(
        source.replace("version: 1.0.0", "version: 1.1.0").replace(
            "changelog:", "changelog: Second version.\n# was:", 1
        ),
        encoding="utf-8",
    )
    told = anyio.Event()

    async def on_message(message: Any) -> None:  # 2025-11-25: a notification on the session
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            told.set()

    async def session() -> tuple[str, str, list[str], bool]:
        async with Client(stdio_server("invoices:read"), mode=mode, message_handler=on_message) as client:
            declared = bool(client.server_capabilities.tools and client.server_capabilities.tools.list_changed)
            before = next(t for t in (await client.list_tools()).tools if t.name == "operate_invoices")
            if mode == "legacy":
                result = charter("contract", "publish", str(newer))
                with anyio.fail_after(20):
                    await told.wait()
            else:  # 2026-07-28: a subscriptions/listen stream
                async with client.listen(tools_list_changed=True) as events:
                    result = charter("contract", "publish", str(newer))
                    with anyio.fail_after(20):
                        await events.__anext__()
            assert result.returncode == 0, result.stderr
            after = next(t for t in (await client.list_tools()).tools if t.name == "operate_invoices")
            resources = [str(r.uri) for r in (await client.list_resources()).resources]
            return before.description or "", after.description or "", resources, declared

    try:
        before, after, resources, declared = anyio.run(session)
    finally:
        newer.unlink()
    assert declared is True
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
        frame = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        refused = httpx.post(f"{url}/mcp", json=frame)
        wrong = httpx.post(f"{url}/mcp", json=frame, headers={"Authorization": "Bearer not-a-token"})
        discovery = httpx.get(f"{url}/.well-known/oauth-protected-resource")

        async def session() -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
            ):
                program = "conclude(orders.get_order(id=102).status)"
                return structured(await client.call_tool("execute_program", {"contract": "orders", "program": program}))

        result = anyio.run(session)
    # RFC 6750: a problem+json 401 with a Bearer challenge; error="invalid_token" when a token was sent.
    for response in (refused, wrong):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:charter:problem:unauthenticated"
    assert refused.headers["www-authenticate"] == 'Bearer realm="charter-mcp"'
    assert wrong.headers["www-authenticate"].startswith('Bearer realm="charter-mcp", error="invalid_token"')
    # Static tokens: no OAuth, so no protected-resource metadata (and no 401 for asking).
    assert discovery.status_code == 404
    assert "offers no OAuth" in discovery.json()["detail"]
    assert result["status"] == "done"
    assert result["answer"] == "confirmed"
    assert AuditLog().run(result["run_id"]).opened.principal == "upstream-ai"


def test_streamable_http_holds_bodies_to_the_http_apis_1_mib_with_a_problem(published: Path) -> None:
    import httpx

    from charter.audit import AuditLog
    from charter.registry import Registry
    from charter.server import CharterService, TokenStore, serving
    from charter.server._mcp import http_app

    store = TokenStore(published / "tokens.yaml")
    token = store.add("upstream", "upstream-ai", ["orders:read"])
    service = CharterService.create(registry=Registry(), audit=AuditLog(), agent=None)
    log = AuditLog()
    runs_before = len(log.run_ids())
    program = 'conclude("x")  # ' + "x" * (3 * 1_048_576)  # a 3 MiB tools/call
    frame = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "execute_program", "arguments": {"contract": "orders", "program": program}},
    }
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    with serving(http_app(service, store, "127.0.0.1"), name="charter-mcp") as url:
        answers = [
            httpx.post(f"{url}/mcp", json=frame, headers=headers, timeout=60),
            httpx.post(f"{url}/mcp", json=frame, timeout=60),  # no token: still the size is refused first
        ]
    for response in answers:
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:charter:problem:payload-too-large"
        assert "send at most 1048576 bytes" in response.json()["detail"]
    assert len(log.run_ids()) == runs_before  # nothing ran
