"""MCP face of human approvals (issue 16): a paused tool call becomes a Task, and the
approval tools decide through the same service (and ApprovalStore) as the HTTP API.

Tasks. The installed SDK (mcp 2.3.0) carries the 2025-11-25 in-core tasks as types only
(never dispatched: a 2025-11-25 `tools/call` result is sieved to CallToolResult), and the
2026-07-28 tasks extension (SEP-2663, `io.modelcontextprotocol/tasks`) is not built in; what
the SDK gives is the extension machinery it is meant to be built on: a server answers a
`tools/call` with an extension `resultType` (passed through at 2026-07-28), serves new
request methods (`Server.add_request_handler`), advertises the extension under
`capabilities.extensions`; a client claims the shape (`ResultClaim`) and polls with
`session.send_request`. So this module is the server half of SEP-2663 on those hooks:

- a `tools/call` whose run paused for approval answers `CreateTaskResult` (`resultType:
  "task"`, status `working`) when the request declared the extension at 2026-07-28; the
  task id is the run id the call started (durable: every answer comes from the audit log,
  so a task survives a restart and a stateless HTTP server needs no task table);
- `tasks/get` follows the run's approval chain (`CharterService.current_answer`, i.e.
  `charter.approvals.chain`): `working` while the approval is pending or the resumed run
  is under way (never `input_required`: there is no input this client could give), then
  `completed` with the resumed run's conclusion as the CallToolResult;
- `tasks/update` is acknowledged (the spec requires it) and its input responses are
  ignored: an approval is never accepted as the requesting client's reply to an input
  request, that would be self-approval; `tasks/cancel` is acknowledged and not honoured
  (the approval request stays until decided or expired);
- no `requestState` is handed out (the task's state is the audit log), and a `tools/call`
  echoing one is refused by the SDK's RequestStateBoundary (AES-GCM) since none was minted.

Any other client (2025-11-25, or without the extension) gets the conclusion as it is, status
`awaiting_approval` with the approval (id, operation, call, reason, expires) and `poll`:
the `run_status` tool, which answers the chain's current conclusion; never a fake success.

Approval tools: `approvals_list`, `approval_show`, `approval_decide`, acting as the
caller's principal; four eyes (SELF_APPROVAL), the approver scope (FORBIDDEN_SCOPE),
expiry and the one decision are ApprovalStore's, exactly as on the HTTP API."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any, Literal

import anyio.to_thread
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from charter.approvals._retry import retryable_resume
from charter.principal import Principal
from charter.runner import Answer, Execution
from charter.server._service import AUDIT_SCOPE, CharterService, conclusion_body

__all__ = [
    "APPROVAL_TOOLS",
    "TASKS_EXTENSION",
    "ApprovalsFace",
    "CancelTaskParams",
    "GetTaskParams",
    "UpdateTaskParams",
    "resume_own_runs",
]

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
POLL_MS = 2000  # suggested tasks/get interval: a human decides, no need to hurry
_HEX_ID = re.compile(r"[0-9a-f]{32}\Z")
_STATUSES = ("pending", "approved", "denied", "expired", "tampered")
_MAX_REASON = 2000

_log = logging.getLogger("charter.server")


# -- the tasks extension's request params (SEP-2663) -------------------------------------------


class GetTaskParams(types.RequestParams):
    task_id: str = Field(min_length=1, max_length=200)
    request_state: str | None = None


class CancelTaskParams(GetTaskParams):
    pass


class UpdateTaskParams(GetTaskParams):
    input_responses: dict[str, Any] | None = None


# -- approval tools ----------------------------------------------------------------------------

_ID_SCHEMA = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "The approval's 32-character id."}
_VIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One approval request (charter.approvals.ApprovalView, as GET /v1/approvals/{id} answers it).",
    "properties": {
        "approval_id": {"type": "string"},
        "status": {"enum": list(_STATUSES)},
        "run_id": {"type": "string"},
        "operation": {"type": ["string", "null"]},
        "principal": {"type": ["string", "null"]},
        "approver_scope": {"type": ["string", "null"]},
        "verified": {"type": "boolean", "description": "False: the signed receipts do not vouch for this view."},
        "findings": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["approval_id", "status", "run_id"],
}


def _tool(name: str, title: str, description: str, schema: dict[str, Any], output: dict[str, Any]) -> types.Tool:
    read_only = name != "approval_decide"
    return types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=schema,
        output_schema=output,
        annotations=types.ToolAnnotations(
            title=title,
            read_only_hint=read_only,
            destructive_hint=None if read_only else False,
            idempotent_hint=None if read_only else True,
        ),
    )


APPROVAL_TOOLS: tuple[types.Tool, ...] = (
    _tool(
        "approvals_list",
        "List approval requests",
        "Approval requests you may see, newest first: your own, those your scopes may decide (the request's "
        "approver scope), or all with audit:read. Filter by contract and status.",
        {
            "type": "object",
            "properties": {
                "contract": {"type": "string", "minLength": 1, "maxLength": 200},
                "status": {"enum": list(_STATUSES)},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500},
            },
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"approvals": {"type": "array", "items": _VIEW_SCHEMA}},
            "required": ["approvals"],
        },
    ),
    _tool(
        "approval_show",
        "Show one approval request",
        "One approval request: the paused program and its line, the call's arguments, the rule and its reason, "
        "what the gate read, the decision and the resumed run.",
        {
            "type": "object",
            "properties": {"approval_id": _ID_SCHEMA},
            "required": ["approval_id"],
            "additionalProperties": False,
        },
        _VIEW_SCHEMA,
    ),
    _tool(
        "approval_decide",
        "Approve or deny an approval request",
        "Approve or deny a paused call, with a reason (signed into the decision's receipt). Four eyes: never the "
        "requesting principal, and only a principal holding the request's approver scope. An expired request can "
        "only be denied. The paused run then resumes in the background; its caller's task completes with the "
        "conclusion.",
        {
            "type": "object",
            "properties": {
                "approval_id": _ID_SCHEMA,
                "decision": {"enum": ["approved", "denied"]},
                "reason": {"type": "string", "minLength": 1, "maxLength": _MAX_REASON},
            },
            "required": ["approval_id", "decision", "reason"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "approval": _VIEW_SCHEMA,
                "written": {"type": "boolean"},
                "already_decided": {
                    "type": "boolean",
                    "description": "True: this decision was already recorded; nothing new was written.",
                },
                "note": {"type": "string", "description": "When already decided: the recorded reason is kept."},
            },
            "required": ["approval", "written", "already_decided"],
        },
    ),
)
_APPROVAL_TOOL_NAMES = frozenset(t.name for t in APPROVAL_TOOLS)


def _invalid(message: str, field: str) -> MCPError:
    return MCPError(INVALID_PARAMS, message, {"field": field})


def _only(tool: str, arguments: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name in arguments:
        if name not in allowed:
            raise _invalid(f"{tool}: unknown argument {name!r}; it takes {', '.join(allowed)}", name)


def _string(tool: str, arguments: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = arguments.get(name)
    if value is None:
        if required:
            raise _invalid(f"{tool}: missing argument {name!r}", name)
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(f"{tool}: argument {name!r} must be a non-empty string", name)
    return value


def _approval_id(tool: str, arguments: dict[str, Any]) -> str:
    value = _string(tool, arguments, "approval_id")
    assert value is not None
    if not _HEX_ID.match(value):
        raise _invalid(f"{tool}: argument 'approval_id' must be the whole 32-character approval id", "approval_id")
    return value


def _view(view: Any) -> dict[str, Any]:
    import msgspec

    body: dict[str, Any] = msgspec.to_builtins(view)
    return body


class ApprovalsFace:
    """Tasks for paused tool calls, the `run_status` poll tool and the approval tools, on one
    CharterService."""

    def __init__(self, service: CharterService, principal_of: Callable[[ServerRequestContext[Any]], Principal]):
        self.service = service
        self.principal_of = principal_of

    # -- set-up ---------------------------------------------------------------------------------

    def install(self, server: Server[Any]) -> None:
        """Advertise the tasks extension and serve tasks/get, tasks/update and tasks/cancel.

        And the SDK's RequestStateBoundary (AES-GCM, a key of this process): this server hands
        no requestState to any client, so one echoed on a tools/call is refused (-32602)
        before any handler runs, never taken for state (or an approval) it minted."""
        server.middleware.append(RequestStateBoundary(RequestStateSecurity.ephemeral(), default_audience="charter"))
        server.extensions[TASKS_EXTENSION] = {}
        server.add_request_handler("tasks/get", GetTaskParams, self._tasks_get)
        server.add_request_handler("tasks/update", UpdateTaskParams, self._tasks_update)
        server.add_request_handler("tasks/cancel", CancelTaskParams, self._tasks_cancel)

    @staticmethod
    def tools() -> list[types.Tool]:
        return [*APPROVAL_TOOLS, RUN_STATUS_TOOL]

    @staticmethod
    def serves(name: str) -> bool:
        return name in _APPROVAL_TOOL_NAMES or name == RUN_STATUS_TOOL.name

    # -- a tool call whose run paused -------------------------------------------------------------

    def answer_paused(self, ctx: ServerRequestContext[Any], body: dict[str, Any]) -> dict[str, Any]:
        """What a tool call whose run paused for approval answers (`body`: its conclusion,
        status awaiting_approval, with `approval`): a CreateTaskResult for a client that
        declared the tasks extension on this 2026-07-28 request; for any other, the
        conclusion as it is with `poll`, the run_status tool that follows the chain. Runs on
        a worker thread (it reads the audit log)."""
        run_id = body["run_id"]
        if _tasks_declared(ctx):
            task = self._task(run_id, self.service.current_answer(run_id))
            task.pop("result", None)  # a CreateTaskResult never carries the result (SEP-2663)
            return {"resultType": "task", **task}
        return body | {"poll": {"tool": RUN_STATUS_TOOL.name, "arguments": {"run_id": run_id}}}

    # -- tasks/get, tasks/update, tasks/cancel ----------------------------------------------------

    async def _tasks_get(self, ctx: ServerRequestContext[Any], params: GetTaskParams) -> dict[str, Any]:
        principal = self.principal_of(ctx)
        return await anyio.to_thread.run_sync(self.task_for, principal, params.task_id)

    async def _tasks_update(self, ctx: ServerRequestContext[Any], params: UpdateTaskParams) -> dict[str, Any]:
        # Acknowledged, as the spec requires even for an unknown task, and nothing else: this
        # server never asks a client for input, and an approval is never accepted as the
        # requesting client's reply (that would be the requester approving its own call).
        if params.input_responses:
            _log.warning(
                "tasks/update for %s: input responses ignored (approvals are decided by another "
                "principal through approval_decide or the HTTP API)",
                params.task_id[:64],
            )
        return {}

    async def _tasks_cancel(self, ctx: ServerRequestContext[Any], params: CancelTaskParams) -> dict[str, Any]:
        # Cooperative cancellation, not honoured: the approval request stays until it is
        # decided or expires (then the run resumes, a denial concluding it).
        return {}

    def task_for(self, principal: Principal, task_id: str) -> dict[str, Any]:
        """tasks/get: the task of run `task_id` now, for its principal (or audit:read); one
        that is not visible is answered as missing."""
        missing = _invalid(f"no task {task_id[:64]!r} among those you may read", "taskId")
        if not _HEX_ID.match(task_id):
            raise missing
        current = self.service.current_answer(task_id)
        if current is None:
            raise missing
        owner = self.service.audit.run(task_id).opened.principal
        if owner != principal.id and not principal.has(AUDIT_SCOPE):
            raise missing
        return {"resultType": "complete", **self._task(task_id, current)}

    def _task(self, task_id: str, current: tuple[Answer, int | None, list[str]] | None) -> dict[str, Any]:
        if current is None:
            raise _invalid(f"no task {task_id[:64]!r}", "taskId")
        answer, attempts, chain = current
        audit = self.service.audit
        created = audit.run(task_id).opened.at
        latest = audit.run(chain[-1])
        updated = (latest.sealed or latest.opened).at
        task: dict[str, Any] = {
            "taskId": task_id,
            "createdAt": created,
            "lastUpdatedAt": updated,
            "ttlSeconds": None,  # kept as long as the audit log is
            "pollIntervalMilliseconds": POLL_MS,
        }
        # A resume the backend's absence stopped before the approved call acted is retried by the
        # worker (charter.approvals.resume.retryable): the task is still working, not completed failed.
        retried = retryable_resume(latest)
        if answer.status == "awaiting_approval" or latest.sealed is None or retried:
            approval = self.service.approval_summary(answer.approval_id)
            task |= {
                "status": "working",
                "statusMessage": _waiting(approval, resuming=latest.sealed is None or retried),
            }
            return task
        body = conclusion_body(answer, attempts)
        if len(chain) > 1:
            body["chain"] = chain
        result = types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(body, ensure_ascii=False, default=str))],
            structured_content=body,
            is_error=False,
        )
        summary = f"{answer.status}: {answer.text}" if answer.status != "done" else f"done: {answer.answer}"
        task |= {
            "status": "completed",
            "statusMessage": summary[:500],
            "result": result.model_dump(by_alias=True, mode="json", exclude_none=True),
        }
        return task

    # -- tools ----------------------------------------------------------------------------------

    def call(self, principal: Principal, name: str, arguments: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        """The work of tool `name` (checked arguments; invalid_params raised now), to run on a
        worker thread. Approval errors propagate (ApprovalError: the caller maps its code)."""
        service = self.service
        if name == RUN_STATUS_TOOL.name:
            _only(name, arguments, ("run_id",))
            run_id = _string(name, arguments, "run_id")
            assert run_id is not None
            return lambda: self.run_status(principal, run_id)
        if name == "approvals_list":
            _only(name, arguments, ("contract", "status", "limit"))
            contract = _string(name, arguments, "contract", required=False)
            status = _string(name, arguments, "status", required=False)
            if status is not None and status not in _STATUSES:
                raise _invalid(f"{name}: argument 'status' must be one of {', '.join(_STATUSES)}", "status")
            limit = arguments.get("limit", 100)
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 500:
                raise _invalid(f"{name}: argument 'limit' must be an integer from 1 to 500", "limit")

            def listing() -> dict[str, Any]:
                views = service.list_approvals(principal, contract=contract, status=status, limit=limit)
                return {"approvals": [_view(v) for v in views]}

            return listing
        if name == "approval_show":
            _only(name, arguments, ("approval_id",))
            approval_id = _approval_id(name, arguments)
            return lambda: _view(service.approval(principal, approval_id))
        if name == "approval_decide":
            _only(name, arguments, ("approval_id", "decision", "reason"))
            approval_id = _approval_id(name, arguments)
            decision = arguments.get("decision")
            if decision not in ("approved", "denied"):
                raise _invalid(f"{name}: argument 'decision' must be 'approved' or 'denied'", "decision")
            reason = _string(name, arguments, "reason")
            assert reason is not None
            if len(reason) > _MAX_REASON:
                raise _invalid(f"{name}: argument 'reason' is longer than {_MAX_REASON} characters", "reason")
            chosen: Literal["approved", "denied"] = decision

            def decide() -> dict[str, Any]:
                view, written = service.decide(principal, approval_id, chosen, reason)
                answer = service.decision_answer(view, written, reason)
                note = answer.pop("note", None)
                return {
                    "approval": answer,
                    "written": written,
                    "already_decided": not written,
                    **({"note": note} if note else {}),
                }

            return decide
        raise _invalid(f"no tool {name!r}: tools/list names the tools", "name")

    def run_status(self, principal: Principal, run_id: str) -> dict[str, Any]:
        """The run's conclusion now, following its approval chain (the poll for a client that
        cannot take a task): awaiting_approval until the resumed run is sealed."""
        from charter.errors import RunNotFound

        missing = RunNotFound(
            f"no run {run_id[:64]!r} among the runs you may read (yours, or any with {AUDIT_SCOPE!r})"
        )
        if not _HEX_ID.match(run_id):
            raise missing
        current = self.service.current_answer(run_id)
        if current is None:
            raise missing
        if self.service.audit.run(run_id).opened.principal != principal.id and not principal.has(AUDIT_SCOPE):
            raise missing
        answer, attempts, chain = current
        body = conclusion_body(answer, attempts)
        if len(chain) > 1:
            body["chain"] = chain
        if answer.status == "awaiting_approval":
            body["approval"] = self.service.approval_summary(answer.approval_id)
            body["poll"] = {"tool": RUN_STATUS_TOOL.name, "arguments": {"run_id": run_id}}
        return body


RUN_STATUS_TOOL = types.Tool(
    name="run_status",
    title="A run's conclusion now (follows approvals)",
    description="A run's conclusion as it stands now: a run that paused for a human's approval answers "
    "awaiting_approval (with the approval) until its resumed run concludes, then that conclusion. Poll it after a "
    "tool call answered awaiting_approval.",
    input_schema={
        "type": "object",
        "properties": {"run_id": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "The run's id."}},
        "required": ["run_id"],
        "additionalProperties": False,
    },
    output_schema=None,  # set by _mcp (the conclusion schema)
    annotations=types.ToolAnnotations(title="A run's conclusion now (follows approvals)", read_only_hint=True),
)


def _tasks_declared(ctx: ServerRequestContext[Any]) -> bool:
    """Whether this request may be answered with a task: a 2026-07-28 request whose client
    declared the tasks extension (a server MUST NOT send a task to any other)."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    capabilities = ctx.session.client_capabilities
    declared = capabilities.extensions if capabilities is not None else None
    return bool(declared) and TASKS_EXTENSION in (declared or {})


def _waiting(approval: dict[str, Any] | None, *, resuming: bool) -> str:
    if approval is None:
        return "the run is being resumed" if resuming else "the run awaits a human's approval"
    ident = approval.get("id")
    if resuming or approval.get("status") in ("approved", "denied"):
        return f"approval {ident} was {approval.get('status')}; the run is being resumed"
    return (
        f"awaiting approval {ident}: {approval.get('operation')} (call {approval.get('call')}) needs a human's "
        f"approval ({approval.get('reason')}); it expires {approval.get('expires')}. Another principal holding "
        "the approver scope decides it (approval_decide, or POST /v1/approvals/ID/approve|deny); this task then "
        "completes with the run's conclusion."
    )


def resume_own_runs(service: CharterService, principal: Principal, *, poll_seconds: float = 1.0) -> None:
    """Over stdio, resume the decided approvals of this operator's own runs in the background.

    The operator who starts `charter mcp` vouches for one principal (`-p`, `-s`, `--attr`) and
    knows no other: a run another principal requested is left to a face that knows that
    principal (`charter serve` with its token, that principal's own `charter mcp`), never
    resumed here as a principal without tokens (which would seal it PRINCIPAL_REVOKED). The
    worker is the service's (`stop_approvals` stops it; a decision made here notifies it)."""
    from charter.approvals import ResumeInProgress, Resumer, ResumeWorker

    class OwnRuns(Resumer):
        def resume(self, approval_id: str) -> Execution:
            if self.store.get(approval_id).principal != principal.id:
                raise ResumeInProgress(f"approval {approval_id}: another principal's run, resumed by its own face")
            return super().resume(approval_id)

    resumer = OwnRuns(
        service.runner,
        service.registry,
        principal_of=lambda pid: principal if pid == principal.id else None,
        store=service.approvals,
    )
    worker = ResumeWorker(resumer, service.approvals, poll_seconds=poll_seconds)
    worker.start()
    service.resumes = worker
