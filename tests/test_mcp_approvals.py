"""Human approvals over MCP: real MCP client sessions (the SDK's own Client) against `charter
mcp --http`'s app on a loopback uvicorn, the real sandbox and gate over the payments example's
SQLite bank, and the resume worker the server starts.

The payments contract requires approval for `send_payment` to an IBAN that is not a saved
payee. The holder's tool call pauses there: a client that declared the tasks extension
(SEP-2663, `io.modelcontextprotocol/tasks`, at 2026-07-28) gets a Task it polls with
tasks/get; any other client the awaiting_approval conclusion and the run_status poll tool.
Another principal holding `payments:approve` decides through `approval_decide`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters, types
from mcp.client import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client

from charter.agent import Charter, ScriptedModel
from charter.agent._model import ModelRequest
from charter.audit import AuditLog
from charter.contract import load_contract
from charter.registry import Registry
from charter.sandbox import Sandbox
from charter.server import CharterService, TokenStore, serving
from charter.server._mcp import http_app
from charter.server._mcp_tasks import TASKS_EXTENSION
from examples.payments import backend
from tests.conftest import ROOT, charter
from tests.payments_approval import HOLDER_ATTRIBUTES, HOLDER_SCOPES, NEW_IBAN, PAY, PAY_NEW_IBAN


def scripted(request: ModelRequest) -> str:
    return f"```python\n{PAY_NEW_IBAN}```"


# -- the client half of the tasks extension, as an MCP client application writes it ------------


class TaskHandle(types.Result):
    """CreateTaskResult (SEP-2663): `resultType: "task"` and the task's fields, flat."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_seconds: int | None = None
    poll_interval_milliseconds: int | None = None


class TaskParams(types.RequestParams):
    task_id: str
    input_responses: dict[str, Any] | None = None


class TaskState(types.Result):
    """GetTaskResult: the task and, once completed, the tool call's result."""

    task_id: str
    status: str
    status_message: str | None = None
    result: dict[str, Any] | None = None


class GetTask(types.Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskParams
    name_param = "taskId"


class UpdateTask(types.Request[TaskParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    params: TaskParams
    name_param = "taskId"


class Tasks(ClientExtension):
    """Declares the tasks extension; resolving a task polls tasks/get until it is terminal."""

    identifier = TASKS_EXTENSION

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self._poll)]

    async def _poll(self, handle: TaskHandle, ctx: ClaimContext) -> types.CallToolResult:
        while True:
            state = await ctx.session.send_request(GetTask(params=TaskParams(task_id=handle.task_id)), TaskState)
            if state.status == "completed" and state.result is not None:
                return types.CallToolResult.model_validate(state.result)
            await anyio.sleep(0.1)


# -- the server ---------------------------------------------------------------------------------


@dataclass
class Mcp:
    url: str
    tokens: dict[str, str]
    log: AuditLog
    service: CharterService
    elsewhere: dict[str, str]  # who -> the URL of the face whose token file holds its token

    @asynccontextmanager
    async def client(self, who: str, *, mode: str = "auto", tasks: bool = True) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        extensions = [Tasks()] if tasks else []
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            Client(
                streamable_http_client(f"{self.elsewhere.get(who, self.url)}/mcp", http_client=http),
                mode=mode,
                extensions=extensions,
            ) as client,
        ):
            yield client


@pytest.fixture
def server(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Mcp]:
    backend.seed()
    registry = Registry()
    path = ROOT / "contracts" / "payments.yaml"
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = AuditLog(charter_home / "audit.db")
    agent = Charter(model=ScriptedModel(scripted), audit=log, sandbox=shared_sandbox)  # its program: PAY_NEW_IBAN
    service = CharterService.create(registry=registry, audit=log, agent=agent)
    store = TokenStore(charter_home / "tokens.yaml")
    tokens = {
        # The holder may approve payments too (an approver herself): never her own request.
        "holder": store.add("holder", "holder", [*HOLDER_SCOPES, "payments:approve"], HOLDER_ATTRIBUTES),
        "carol": store.add("carol", "carol", HOLDER_SCOPES, {"account_id": "ACC-2002", "daily_limit": "10.00"}),
        "reviewer": store.add("reviewer", "reviewer", ["payments:approve"]),
        "auditor": store.add("auditor", "auditor", ["audit:read"]),
    }
    # The holder's id spelled "HOLDER", holding the approver scope: the same TR39 skeleton, so no token file
    # naming "holder" takes it (and a mixed-script spelling is no principal id at all); it comes from another
    # token file, served by a second MCP face on the same service and log (another operator's `charter mcp`).
    elsewhere = TokenStore(charter_home / "elsewhere-tokens.yaml")
    tokens["lookalike"] = elsewhere.add("lookalike", "HOLDER", ["payments:approve"])
    service.start_approvals(store.principal, poll_seconds=0.2)  # as `charter mcp --http` starts it
    try:
        with (
            serving(http_app(service, store, "127.0.0.1"), name="charter-mcp") as url,
            serving(http_app(service, elsewhere, "127.0.0.1"), name="charter-mcp-elsewhere") as other,
        ):
            yield Mcp(url, tokens, log, service, {"lookalike": other})
    finally:
        service.stop_approvals()


def body_of(result: types.CallToolResult) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert result.structured_content == body
    return body


def transfers_to(iban: str) -> list[dict[str, Any]]:
    with backend._db() as db:
        return [dict(r) for r in db.execute("SELECT * FROM transfers WHERE recipient = ?", (iban,))]


async def decide(client: Client, approval_id: str, decision: str, reason: str) -> types.CallToolResult:
    arguments = {"approval_id": approval_id, "decision": decision, "reason": reason}
    return await client.call_tool("approval_decide", arguments)


def refused(result: types.CallToolResult, code: str) -> dict[str, Any]:
    assert result.is_error is True, result
    body = body_of(result)
    assert body["code"] == code, body
    assert body["type"].startswith("urn:charter:problem:")
    return body


def test_a_paused_tool_call_is_a_task_that_completes_once_another_principal_approves(server: Mcp) -> None:
    async def session() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with server.client("holder") as holder:
            seen["extensions"] = (holder.server_capabilities.extensions or {}) if holder.server_capabilities else {}
            handle = await holder.session.call_tool("execute_program", PAY, allow_claimed=True)
            seen["handle"] = handle
            assert isinstance(handle, TaskHandle), handle  # a task, not a (fake) result
            get = GetTask(params=TaskParams(task_id=handle.task_id))
            seen["polled"] = await holder.session.send_request(get, TaskState)
            # The holder answers "input" on its own task, as if it were an approval: acknowledged, never a decision.
            update = UpdateTask(
                params=TaskParams(
                    task_id=handle.task_id,
                    input_responses={"approval": {"action": "accept", "content": {"approved": True}}},
                )
            )
            await holder.session.send_request(update, types.EmptyResult)
            seen["after_update"] = await holder.session.send_request(get, TaskState)
            # Reading the paused run is no run of its own: audit_run answers its view, never a task.
            seen["audit"] = await holder.session.call_tool("audit_run", {"run_id": handle.task_id}, allow_claimed=True)
            approval_id = seen["polled"].status_message.split()[2].rstrip(":")
            seen["approval_id"] = approval_id
            seen["pending"] = server.service.approvals.get(approval_id).status
            seen["self"] = await decide(holder, approval_id, "approved", "looks fine to me")
        async with server.client("lookalike") as lookalike:
            seen["lookalike"] = await decide(lookalike, approval_id, "approved", "me again")
        async with server.client("carol") as carol:
            seen["carol"] = await decide(carol, approval_id, "approved", "not mine to decide")
        async with server.client("auditor") as auditor:
            seen["auditor_show"] = body_of(await auditor.call_tool("approval_show", {"approval_id": approval_id}))
            seen["auditor"] = await decide(auditor, approval_id, "approved", "I only read")
        async with server.client("reviewer") as reviewer:
            listed = body_of(await reviewer.call_tool("approvals_list", {"status": "pending"}))
            seen["listed"] = [a["approval_id"] for a in listed["approvals"]]
            seen["decided"] = body_of(await decide(reviewer, approval_id, "approved", "the landlord's new account"))
        async with server.client("holder") as holder:
            with anyio.fail_after(90):
                while True:
                    state = await holder.session.send_request(get, TaskState)
                    if state.status != "working":
                        break
                    await anyio.sleep(0.1)
            seen["final"] = state
        return seen

    seen = anyio.run(session)
    assert TASKS_EXTENSION in seen["extensions"]
    handle = seen["handle"]
    assert handle.status == "working"
    assert handle.poll_interval_milliseconds
    assert handle.ttl_seconds is None
    run = server.log.run(handle.task_id)  # the task id is the paused run's id
    assert run.status == "awaiting_approval"
    polled = seen["polled"]
    assert (polled.task_id, polled.status) == (handle.task_id, "working")
    assert polled.result is None
    approval_id = seen["approval_id"]
    assert approval_id == run.sealed.approval_id  # type: ignore[union-attr]
    assert "send_payment" in polled.status_message
    audit = seen["audit"]
    assert isinstance(audit, types.CallToolResult)
    assert (body_of(audit)["status"], body_of(audit)["kind"]) == ("awaiting_approval", "program")
    # The requester's own "input" decided nothing.
    assert seen["after_update"].status == "working"
    assert seen["pending"] == "pending"
    # Four eyes through the tool: the requester, also under a look-alike id, is refused.
    refused(seen["self"], "SELF_APPROVAL")
    refused(seen["lookalike"], "SELF_APPROVAL")
    # Without the approver scope: carol may not even see it; the auditor sees it and may not decide.
    refused(seen["carol"], "APPROVAL_NOT_FOUND")
    assert seen["auditor_show"]["status"] == "pending"
    refused(seen["auditor"], "FORBIDDEN_SCOPE")
    assert seen["listed"] == [approval_id]
    decided = seen["decided"]
    assert decided["written"] is True
    assert (decided["approval"]["decision"], decided["approval"]["decided_by"]) == ("approved", "reviewer")
    # The task completes with the resumed run's conclusion: the payment was sent once.
    final = seen["final"]
    assert final.status == "completed"
    result = types.CallToolResult.model_validate(final.result)
    assert result.is_error is False
    body = body_of(result)
    assert (body["status"], body["answer"]) == ("done", "sent 25.00"), body["reason"]
    assert body["chain"][0] == handle.task_id
    assert len(body["chain"]) == 2
    assert len(transfers_to(NEW_IBAN)) == 1


def test_a_client_without_the_tasks_extension_gets_awaiting_approval_and_polls_run_status(server: Mcp) -> None:
    async def session(mode: str, tasks: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        async with server.client("holder", mode=mode, tasks=tasks) as holder:
            paused = await holder.call_tool("execute_program", PAY)
            assert isinstance(paused, types.CallToolResult)
            body = body_of(paused)
            status = body_of(await holder.call_tool("run_status", {"run_id": body["run_id"]}))
            return body, status

    legacy, legacy_status = anyio.run(session, "legacy", True)  # 2025-11-25: tasks are not carried
    modern, _ = anyio.run(session, "auto", False)  # 2026-07-28, extension not declared: never a task
    for body in (legacy, modern):
        assert (body["status"], body["cause"]) == ("awaiting_approval", "APPROVAL_REQUIRED")
        assert body["answer"] is None
        assert body["approval"]["operation"] == "send_payment"
        assert body["poll"] == {"tool": "run_status", "arguments": {"run_id": body["run_id"]}}
    assert legacy_status["status"] == "awaiting_approval"
    approval_id = legacy["approval"]["id"]

    async def approve_and_poll() -> dict[str, Any]:
        async with server.client("reviewer", mode="legacy") as reviewer:
            await decide(reviewer, approval_id, "approved", "checked by phone")
        async with server.client("holder", mode="legacy") as holder:
            with anyio.fail_after(90):
                while True:
                    now = body_of(await holder.call_tool("run_status", {"run_id": legacy["run_id"]}))
                    if now["status"] != "awaiting_approval":
                        return now
                    await anyio.sleep(0.1)

    final = anyio.run(approve_and_poll)
    assert (final["status"], final["answer"]) == ("done", "sent 25.00")
    assert final["chain"][0] == legacy["run_id"]


def test_a_task_resolves_transparently_for_a_client_with_the_extension(server: Mcp) -> None:
    """Client.call_tool with the extension: the claim's resolver polls, and the caller gets the
    final CallToolResult once a reviewer approved (concurrently)."""

    async def session() -> dict[str, Any]:
        result: dict[str, Any] = {}

        async def call() -> None:
            async with server.client("holder") as holder:
                result["final"] = body_of(await holder.call_tool("execute_program", PAY))

        async def approve() -> None:
            with anyio.fail_after(60):
                while not (pending := server.service.approvals.list(status="pending")):
                    await anyio.sleep(0.1)
            async with server.client("reviewer") as reviewer:
                await decide(reviewer, pending[0].approval_id, "denied", "not this account")

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(call)
                group.start_soon(approve)
        return result

    final = anyio.run(session)["final"]
    # Denied: the resumed call is refused APPROVAL_DENIED, the program did not catch it.
    assert (final["status"], final["cause"]) == ("refused", "APPROVAL_DENIED")
    assert transfers_to(NEW_IBAN) == []


def test_an_intent_that_pauses_is_a_task_completing_with_the_resumed_conclusion(server: Mcp) -> None:
    async def session() -> tuple[TaskHandle, TaskState]:
        async with server.client("holder") as holder:
            intent = {"intent": "Pay the deposit to my landlord", "inputs": {"iban": NEW_IBAN}}
            handle = await holder.session.call_tool("operate_payments", intent, allow_claimed=True)
            assert isinstance(handle, TaskHandle), handle
        (pending,) = server.service.approvals.list(status="pending")
        async with server.client("reviewer") as reviewer:
            await decide(reviewer, pending.approval_id, "approved", "the lease names this account")
        async with server.client("holder") as holder:
            get = GetTask(params=TaskParams(task_id=handle.task_id))
            with anyio.fail_after(90):
                while (state := await holder.session.send_request(get, TaskState)).status == "working":
                    await anyio.sleep(0.1)
        return handle, state

    handle, state = anyio.run(session)
    assert server.log.run(handle.task_id).status == "awaiting_approval"  # the intent run, concluded awaiting
    assert state.status == "completed"
    body = body_of(types.CallToolResult.model_validate(state.result))
    assert (body["status"], body["answer"]) == ("done", "sent 25.00")
    assert body["chain"][0] == handle.task_id  # the intent run, its paused program run, the resumed run
    assert len(body["chain"]) == 3
    assert len(transfers_to(NEW_IBAN)) == 1


def test_tasks_are_answered_only_to_their_principal(server: Mcp) -> None:
    async def session() -> tuple[Any, Any, Any]:
        async with server.client("holder") as holder:
            handle = await holder.session.call_tool("execute_program", PAY, allow_claimed=True)
        assert isinstance(handle, TaskHandle)
        get = GetTask(params=TaskParams(task_id=handle.task_id))
        errors: list[MCPError] = []
        for who, task_id in (("carol", handle.task_id), ("holder", "f" * 32), ("holder", "../etc")):
            async with server.client(who) as client:
                with pytest.raises(MCPError) as raised:
                    await client.session.send_request(GetTask(params=TaskParams(task_id=task_id)), TaskState)
                errors.append(raised.value)
        async with server.client("auditor") as auditor:
            seen = await auditor.session.send_request(get, TaskState)
        return handle, errors, seen

    handle, errors, seen = anyio.run(session)
    for error in errors:
        assert error.error.code == -32602
        assert "no task" in error.error.message
    assert (seen.task_id, seen.status) == (handle.task_id, "working")  # audit:read reads every task


def test_a_request_state_the_server_never_minted_is_refused(server: Mcp) -> None:
    """No requestState is handed to a client; one sent anyway (say, a forged "approved") is
    refused by the SDK's RequestStateBoundary before the tool runs: nothing pauses, nothing runs."""

    async def session() -> MCPError:
        async with server.client("holder") as holder:
            with pytest.raises(MCPError) as raised:
                await holder.call_tool("execute_program", PAY, request_state='{"approved": true}')
            return raised.value

    error = anyio.run(session)
    assert error.error.code == -32602
    assert error.error.message == "Invalid or expired requestState"
    assert server.service.approvals.list() == []
    assert server.log.run_ids() == []


def test_the_approval_tools_are_listed_with_hints(server: Mcp) -> None:
    async def session() -> dict[str, types.Tool]:
        async with server.client("holder") as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    tools = anyio.run(session)
    assert {"approvals_list", "approval_show", "approval_decide", "run_status"} <= set(tools)
    decide_tool = tools["approval_decide"]
    assert decide_tool.input_schema["required"] == ["approval_id", "decision", "reason"]
    assert decide_tool.annotations is not None
    assert decide_tool.annotations.read_only_hint is False
    assert tools["approvals_list"].annotations.read_only_hint is True  # type: ignore[union-attr]


def stdio(principal: str, *scopes: str, attributes: dict[str, str] | None = None) -> StdioServerParameters:
    args = ["-m", "charter", "mcp", "--principal", principal]
    for scope in scopes:
        args += ["--scope", scope]
    for name, value in (attributes or {}).items():
        args += ["--attr", f"{name}={value}"]
    return StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ), cwd=str(ROOT))


def test_over_stdio_each_operator_resumes_its_own_runs(charter_home: Path) -> None:
    """Two `charter mcp` processes on one log: the holder's pauses and gives a task; the reviewer's
    decides (and leaves the holder's run alone: it knows no token of hers); the holder's process
    resumes it as the principal its operator vouched for, and her task completes."""
    backend.seed()
    published = charter("contract", "publish", "contracts/payments.yaml")
    assert published.returncode == 0, published.stderr

    async def session() -> tuple[TaskHandle, dict[str, Any], TaskState]:
        holder_params = stdio("holder", *HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES)
        async with Client(holder_params, extensions=[Tasks()]) as holder:
            handle = await holder.session.call_tool("execute_program", PAY, allow_claimed=True)
            assert isinstance(handle, TaskHandle), handle
            async with Client(stdio("reviewer", "payments:approve")) as reviewer:
                (pending,) = body_of(await reviewer.call_tool("approvals_list", {}))["approvals"]
                decided = body_of(await decide(reviewer, pending["approval_id"], "approved", "known landlord"))
                decided["again"] = body_of(await decide(reviewer, pending["approval_id"], "approved", "other words"))
                await anyio.sleep(1.5)  # the reviewer's worker polls meanwhile, and must leave it alone
            get = GetTask(params=TaskParams(task_id=handle.task_id))
            with anyio.fail_after(90):
                while (state := await holder.session.send_request(get, TaskState)).status == "working":
                    await anyio.sleep(0.2)
        return handle, decided, state

    handle, decided, state = anyio.run(session)
    assert (decided["written"], decided["already_decided"]) == (True, False)
    again = decided["again"]  # the same decision with another reason: a retry, visibly not recorded
    assert (again["written"], again["already_decided"]) == (False, True)
    assert again["approval"]["decision_reason"] == "known landlord"
    assert "('other words') was not recorded" in again["note"]
    assert state.status == "completed"
    body = body_of(types.CallToolResult.model_validate(state.result))
    assert (body["status"], body["answer"]) == ("done", "sent 25.00")
    assert body["chain"][0] == handle.task_id
    log = AuditLog()
    (resumed,) = [log.run(run_id) for run_id in body["chain"][1:]]
    assert resumed.opened.principal == "holder"
    assert len(transfers_to(NEW_IBAN)) == 1


def test_approval_tools_refuse_malformed_arguments_as_invalid_params(server: Mcp) -> None:
    async def session() -> tuple[dict[str, MCPError], dict[str, Any], types.CallToolResult]:
        errors: dict[str, MCPError] = {}
        cases = {
            "short_id": ("approval_show", {"approval_id": "abc"}),
            "id_type": ("approval_show", {"approval_id": 7}),
            "decision": ("approval_decide", {"approval_id": "a" * 32, "decision": "APPROVED", "reason": "x"}),
            "no_reason": ("approval_decide", {"approval_id": "a" * 32, "decision": "approved"}),
            "long_reason": ("approval_decide", {"approval_id": "a" * 32, "decision": "denied", "reason": "x" * 2001}),
            "extra": ("approvals_list", {"status": "pending", "approver": "me"}),
            "status": ("approvals_list", {"status": "done"}),
            "limit": ("approvals_list", {"limit": 0}),
        }
        async with server.client("carol") as carol:
            for label, (tool, arguments) in cases.items():
                with pytest.raises(MCPError) as raised:
                    await carol.call_tool(tool, arguments)
                errors[label] = raised.value
            listed = body_of(await carol.call_tool("approvals_list", {}))
            unknown = await carol.call_tool("approval_show", {"approval_id": "a" * 32})
        return errors, listed, unknown

    errors, listed, unknown = anyio.run(session)
    fields = {label: error.error.data["field"] for label, error in errors.items()}  # type: ignore[index]
    assert fields == {
        "short_id": "approval_id",
        "id_type": "approval_id",
        "decision": "decision",
        "no_reason": "reason",
        "long_reason": "reason",
        "extra": "approver",
        "status": "status",
        "limit": "limit",
    }
    assert {error.error.code for error in errors.values()} == {-32602}
    assert listed == {"approvals": []}
    refused(unknown, "APPROVAL_NOT_FOUND")
    assert server.service.approvals.list() == []
