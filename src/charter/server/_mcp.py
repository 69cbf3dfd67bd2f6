"""Charter as an MCP server (the official `mcp` SDK, low-level server).

Tools, listed afresh from the registry on every `tools/list`, so a newly published
contract version shows up without a restart or a code change:

- `operate_<contract>`: an intent in plain words; only the conclusion and the run id
  come back. Its description is generated from the contract: summary, operations, hard
  boundaries, version.
- `execute_program`: code mode, a program the caller wrote against a contract's stubs.
- `audit_run`: a run's conclusion, receipts and verification.
- `run_status`, `approvals_list`, `approval_show`, `approval_decide`: human approvals
  (server/_mcp_tasks.py). A tool call whose run pauses for approval answers a Task
  (the `io.modelcontextprotocol/tasks` extension) to a client that declared it, otherwise
  the awaiting_approval conclusion and the run_status poll; another principal holding the
  approver scope decides with approval_decide (four eyes, as on the HTTP API).

Resources, per published contract version: its operational model as the Runtime Agent
reads it (`charter://contracts/NAME/VERSION/prompt`) and its typed stubs (`.../stubs`).

Both protocol revisions the SDK speaks are served (2025-11-25 by handshake, 2026-07-28 by
per-request envelope). Every tool has an `outputSchema` and returns `structuredContent`: the
operate tools and `execute_program` the HTTP API's conclusion (`conclusion_body`, one
builder for both faces). Tool hints come from the contract's operations. Bad arguments are
JSON-RPC invalid_params (-32602) naming the field; other failures are tool errors carrying
the HTTP API's problem (`type`, `title`, `status`, `detail`), never a class name. Over stdio a
watcher tells clients when a version is published (`notifications/tools/list_changed`, or a
`subscriptions/listen` event at 2026-07-28).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, cast

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourcesListChanged, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from charter.approvals import ApprovalError
from charter.compiler.artifact import CompiledContract
from charter.contract.cel_guards import suggest
from charter.errors import AuditError, CharterError, ContractNotFound, RunNotFound, StoreUnavailable, UsageError
from charter.inputs import MAX_INPUT_CHARS, MAX_INPUTS, check_inputs
from charter.principal import Principal
from charter.runner import Answer
from charter.server._admission import DEFAULT_MAX_RUNS, DEFAULT_QUEUE, RunSlots
from charter.server._api import _APPROVAL_PROBLEMS, PROBLEM_TYPES, problem_response, unavailable
from charter.server._body import MAX_BODY_BYTES, BodyGuard
from charter.server._mcp_tasks import ApprovalsFace, resume_own_runs
from charter.server._service import CharterService, Forbidden, IntentsUnavailable, conclusion_body
from charter.server._tokens import TokenStore
from charter.status import STATUSES

__all__ = ["build_server", "serve_http", "serve_stdio"]

_RESOURCE = re.compile(r"charter://contracts/([a-z][a-z0-9_]*)/([0-9A-Za-z.+-]+)/(prompt|stubs)\Z")
_OPERATE = "operate_"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_VERSION_SELECTOR = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?)?)?$"
_POLL_S = 1.0  # how often the registry is asked whether a version was published (one cheap query)

PrincipalOf = Callable[[ServerRequestContext[Any]], Principal]

_log = logging.getLogger("charter.server")


def operate_description(contract: CompiledContract) -> str:
    """What an upstream AI reads to decide whether to call the operate tool: from the contract."""
    gate = contract.gate
    operations = "; ".join(f"{op.name} ({op.kind}): {op.doc}" for op in gate.operations.values())
    boundaries = " ".join(f"- {b.text}" for b in gate.boundaries if not b.advisory)
    return (
        f"{contract.summary} Say what should be done in plain words (e.g. an order to cancel or refund); "
        f"Charter writes one program against contract {contract.name} {contract.version}, runs it in a sandbox, "
        "and checks every call against the contract before it reaches the system. Returns only the conclusion "
        f"(done, refused or failed) and the run id. Operations: {operations}. Hard boundaries, never crossed: "
        f"{boundaries or 'none'}"
    )


@dataclass(frozen=True)
class _Field:
    """One string argument of a tool, checked the way its input schema says."""

    description: str
    required: bool = True
    min_length: int = 1
    max_length: int | None = None
    pattern: str | None = None

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": self.min_length, "description": self.description}
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        return schema


def _input_schema(fields: dict[str, _Field]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: f.schema() for name, f in fields.items()},
        "required": [name for name, f in fields.items() if f.required],
        "additionalProperties": False,
    }


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


# The conclusion both faces return (HTTP ConclusionBody): further fields may join it later.
_CONCLUSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "run_id": {"type": "string"},
        "status": {"enum": list(STATUSES)},
        "cause": _nullable("string"),
        "decision": {
            "type": ["object", "null"],
            "description": "The gate decision that decided a refused or failed run (code, operation, boundary, "
            "clause, message, and its receipt: run_id, seq, log_seq, link); null when none did.",
        },
        "answer": _nullable("string"),
        "data": {"description": "The program's conclude(..., data=...) value, as plain JSON."},
        "reason": _nullable("string"),
        "contract": _nullable("string"),
        "version": _nullable("string"),
        "attempts": {"type": "integer", "description": "Model answers it took (intents only)."},
        "approval": {
            "type": ["object", "null"],
            "description": "awaiting_approval: the approval the run waits for (id, operation, call, reason, "
            "expires, status); another principal holding the approver scope decides it (approval_decide).",
        },
        "chain": {"type": "array", "items": {"type": "string"}, "description": "A run that paused: its run ids."},
        "poll": {
            "type": "object",
            "description": "awaiting_approval, to a client without the tasks extension: the tool to call for the "
            "run's conclusion now (run_status).",
        },
    },
    "required": ["run_id", "status", "cause", "decision", "answer", "data", "reason", "contract", "version"],
}
_RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "run_id": {"type": "string"},
        "kind": {"enum": ["intent", "program"]},
        "principal": {"type": "string"},
        "contract": {"type": "string"},
        "version": {"type": "string"},
        "intent": _nullable("string"),
        "status": {"enum": list(STATUSES)},
        "cause": _nullable("string"),
        "answer": _nullable("string"),
        "reason": _nullable("string"),
        "receipts": {"type": "integer", "description": "How many receipts; GET /v1/runs/{id} has them."},
        "verification": {"type": "object"},
    },
    "required": ["run_id", "kind", "principal", "contract", "version", "status", "receipts", "verification"],
}


def _operate_fields(contract: CompiledContract) -> dict[str, _Field]:
    return {
        "intent": _Field("What to do.", max_length=4000),
        "version": _Field(
            f"Pin a version: MAJOR, MAJOR.MINOR or MAJOR.MINOR.PATCH (default: {contract.version}, the newest of "
            "the default major).",
            required=False,
            max_length=200,
            pattern=_VERSION_SELECTOR,
        ),
    }


def _program_fields(names: list[str]) -> dict[str, _Field]:
    listed = ", ".join(names) or "none published"
    return {
        "contract": _Field(
            "NAME (the newest of its default major), NAME@MAJOR, NAME@MAJOR.MINOR or NAME@MAJOR.MINOR.PATCH; one of "
            f"{listed}.",
            max_length=200,
            pattern=rf"^[a-z][a-z0-9_]*(@{_VERSION_SELECTOR[1:-1]})?$",
        ),
        "program": _Field("Python source.", max_length=262_144),
    }


_INPUT_NAME = "^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_INPUTS_SCHEMA: dict[str, dict[str, Any]] = {
    "inputs": {
        "type": "object",
        "description": "Named text values the program reads as inputs['name']; the gate counts them as the "
        "request (provenance rules' `request` source).",
        "maxProperties": MAX_INPUTS,
        "propertyNames": {"pattern": _INPUT_NAME},
        "additionalProperties": {"type": "string", "maxLength": MAX_INPUT_CHARS},
    },
    "secret_inputs": {
        "type": "array",
        "description": "Names of inputs that are secrets: the audit log records a keyed digest of each, never its "
        "value.",
        "maxItems": MAX_INPUTS,
        "items": {"type": "string", "pattern": _INPUT_NAME},
    },
}


def _with_inputs(schema: dict[str, Any]) -> dict[str, Any]:
    schema["properties"].update(_INPUTS_SCHEMA)
    return schema


def _program_schema(names: list[str]) -> dict[str, Any]:
    return _with_inputs(_input_schema(_program_fields(names)))


def _program_inputs(arguments: dict[str, Any], tool: str = "execute_program") -> tuple[dict[str, str], tuple[str, ...]]:
    """A tool's `inputs` and `secret_inputs`, checked (invalid_params naming the argument when
    their shape is wrong)."""
    inputs, secret = arguments.get("inputs"), arguments.get("secret_inputs")
    try:
        return check_inputs(inputs, () if secret is None else secret if isinstance(secret, list) else "")
    except UsageError as error:
        field = "secret_inputs" if "secret" in str(error) else "inputs"
        raise _invalid(f"{tool}: {error}", field) from None


_AUDIT_FIELDS = {"run_id": _Field("The run's 32-character id.", max_length=32, pattern="^[0-9a-f]{32}$")}


def tool_annotations(title: str, contracts: Iterable[CompiledContract]) -> types.ToolAnnotations:
    """MCP tool hints from the contracts' operations: reads only -> readOnlyHint; any write ->
    destructiveHint, and idempotentHint only when every write is declared `idempotent`."""
    writes = [op for c in contracts for op in c.gate.operations.values() if op.kind == "write"]
    if not writes:
        return types.ToolAnnotations(title=title, read_only_hint=True)
    return types.ToolAnnotations(
        title=title,
        read_only_hint=False,
        destructive_hint=True,
        idempotent_hint=all(op.idempotent for op in writes),
    )


def _tools(service: CharterService) -> list[types.Tool]:
    contracts = service.latest_contracts()
    names = [c.name for c in contracts]
    tools = []
    for contract in contracts:
        title = f"Operate {contract.name} {contract.version}"
        tools.append(
            types.Tool(
                name=f"{_OPERATE}{contract.name}",
                title=title,
                description=operate_description(contract),
                input_schema=_with_inputs(_input_schema(_operate_fields(contract))),
                output_schema=_CONCLUSION_SCHEMA,
                annotations=tool_annotations(title, [contract]),
            )
        )
    title = "Run a program under a contract (code mode)"
    tools.append(
        types.Tool(
            name="execute_program",
            title=title,
            description=(
                "Run a Python program you wrote against a contract's typed proxies (read them in the resource "
                "charter://contracts/NAME/VERSION/stubs). It runs in a Wasm sandbox; every call is checked against "
                "the contract and receipted. End it with conclude(answer, data=...) or refuse(reason). Returns the "
                f"conclusion (with its data) and run id. Contracts: {', '.join(names) or 'none published'}."
            ),
            input_schema=_program_schema(names),
            output_schema=_CONCLUSION_SCHEMA,
            annotations=tool_annotations(title, contracts),
        )
    )
    title = "Read a run's audit summary"
    tools.append(
        types.Tool(
            name="audit_run",
            title=title,
            description="A run's conclusion, its decisions and receipts, and whether its signatures verify.",
            input_schema=_input_schema(_AUDIT_FIELDS),
            output_schema=_RUN_SCHEMA,
            annotations=types.ToolAnnotations(title=title, read_only_hint=True),
        )
    )
    for tool in ApprovalsFace.tools():  # approvals: run_status (the poll) and the approval tools
        tools.append(
            tool if tool.output_schema is not None else tool.model_copy(update={"output_schema": _CONCLUSION_SCHEMA})
        )
    return tools


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid(message: str, field: str) -> MCPError:
    """JSON-RPC invalid_params (-32602), naming the argument in `data.field`."""
    return MCPError(INVALID_PARAMS, message, {"field": field})


def _checked(
    tool: str, arguments: dict[str, Any], fields: dict[str, _Field], also: tuple[str, ...] = ()
) -> dict[str, str]:
    """The arguments as the tool's input schema allows them, or invalid_params naming the first wrong one.

    `also`: optional arguments the caller checks itself (`inputs`, `secret_inputs`), named with
    the rest when an argument is unknown, so the message lists every argument the tool takes."""
    for name in arguments:
        if name not in fields:
            required = [n for n, f in fields.items() if f.required]
            optional = [n for n, f in fields.items() if not f.required] + list(also)
            takes = ", ".join(required) + (f"; optional: {', '.join(optional)}" if optional else "")
            raise _invalid(
                f"{tool}: unknown argument {name!r}{suggest(name, [*fields, *also])}; it takes {takes}", name
            )
    values: dict[str, str] = {}
    for name, spec in fields.items():
        if name not in arguments or (arguments[name] is None and not spec.required):
            if spec.required:
                raise _invalid(f"{tool}: missing argument {name!r} ({spec.description})", name)
            continue
        value = arguments[name]
        if not isinstance(value, str):
            raise _invalid(f"{tool}: argument {name!r} must be a string, not {_json_type(value)}", name)
        if not value.isascii() and _SURROGATE.search(value):
            raise _invalid(f"{tool}: argument {name!r} is not valid Unicode (it holds a lone surrogate)", name)
        if len(value) < spec.min_length:
            raise _invalid(f"{tool}: argument {name!r} is empty", name)
        if spec.max_length is not None and len(value) > spec.max_length:
            raise _invalid(f"{tool}: argument {name!r} is longer than {spec.max_length} characters", name)
        if spec.pattern is not None and not re.search(spec.pattern, value):
            raise _invalid(f"{tool}: argument {name!r} does not match {spec.pattern}", name)
        values[name] = value
    return values


class _BackendUnavailable(Exception):
    """The server could not perform a call (a binding module missing, failing or changed)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("; ".join(answer.unavailable))
        self.answer = answer


def _conclusion(service: CharterService, answer: Answer, attempts: int | None = None) -> dict[str, Any]:
    if answer.unavailable:
        raise _BackendUnavailable(answer)
    body = conclusion_body(answer, attempts)
    if answer.status == "awaiting_approval":  # as the HTTP API's 202 says it
        body["approval"] = service.approval_summary(answer.approval_id)
    return body


def _result(body: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(body, ensure_ascii=False, default=str))],
        structured_content=body,
        is_error=error,
    )


# The HTTP API's title names its Retry-After header, which a tool result does not have.
_MCP_OVERLOADED = "The server is running as many requests as it takes; call again after retry_after seconds"
_MCP_UNAVAILABLE = {
    "audit-unavailable": "The audit log could not be written; call again after retry_after seconds",
    "store-unavailable": "A store's database cannot be reached now; call again after retry_after seconds",
}


def _problem(kind: str, detail: str, *, title: str | None = None, **extra: Any) -> types.CallToolResult:
    """A tool error in the HTTP API's problem shape: branch on `type`, never on the wording.
    `title`: instead of the HTTP API's, where that names what MCP lacks."""
    status, title = PROBLEM_TYPES[kind][0], title or PROBLEM_TYPES[kind][1]
    body = {"type": f"urn:charter:problem:{kind}", "title": title, "status": status, "detail": detail, **extra}
    return _result(body, error=True)


# The same problem types the HTTP API answers with, for the same exceptions.
_PROBLEM_OF: tuple[tuple[type[Exception], str], ...] = (
    (ContractNotFound, "contract-not-found"),
    (RunNotFound, "run-not-found"),
    (Forbidden, "forbidden"),
    (IntentsUnavailable, "intents-unavailable"),
    (AuditError, "audit-unavailable"),
    (StoreUnavailable, "store-unavailable"),
    (UsageError, "invalid-request"),
    (CharterError, "invalid-request"),
)


@dataclass
class _Changes:
    """Tells clients when the registry's tools and resources change (a version published or
    promoted): `subscriptions/listen` streams at 2026-07-28, `notifications/tools/list_changed`
    on handshake-era (2025-11-25) sessions."""

    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    sessions: list[ServerSession] = field(default_factory=list)

    async def watch(self, service: CharterService, interval: float = _POLL_S) -> None:
        seen = await anyio.to_thread.run_sync(service.registry.revision)
        while True:
            await anyio.sleep(interval)
            now = await anyio.to_thread.run_sync(service.registry.revision)
            if now != seen:
                seen = now
                await self.announce()

    async def announce(self) -> None:
        await self.bus.publish(ToolsListChanged())
        await self.bus.publish(ResourcesListChanged())
        for session in list(self.sessions):
            try:
                await session.send_tool_list_changed()
                await session.send_resource_list_changed()
            except Exception:  # that client has gone: stop telling it
                self.sessions.remove(session)


def build_server(
    service: CharterService,
    principal_of: PrincipalOf,
    changes: _Changes | None = None,
    *,
    slots: RunSlots | None = None,
) -> Server[Any]:
    """The MCP server; with `changes`, it declares listChanged and serves `subscriptions/listen`.
    With `slots`, a tool that runs a program (operate_*, execute_program) takes a run slot first,
    as the HTTP API's routes do; beyond the queue it answers the problem `overloaded` at once
    (with `retry_after`, seconds) and runs nothing."""
    approvals = ApprovalsFace(service, principal_of)

    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await anyio.to_thread.run_sync(_tools, service))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | dict[str, Any]:
        principal = principal_of(ctx)
        arguments = params.arguments or {}
        name = params.name
        if name.startswith(_OPERATE):
            contract = name[len(_OPERATE) :]
            try:
                if not _NAME.fullmatch(contract):  # a tool name, never a version reference
                    raise ContractNotFound(contract)
                compiled = await anyio.to_thread.run_sync(service.contract, contract)
            except (ContractNotFound, UsageError):
                raise _invalid(f"no tool {name!r}: tools/list names the tools", "name") from None
            inputs, secret = _program_inputs(arguments, name)
            rest = {k: v for k, v in arguments.items() if k not in _INPUTS_SCHEMA}
            given = _checked(name, rest, _operate_fields(compiled), tuple(_INPUTS_SCHEMA))
            if "version" in given:
                contract += "@" + given["version"]

            def call() -> dict[str, Any]:
                conclusion = service.operate(principal, contract, given["intent"], inputs=inputs, secret_inputs=secret)
                return _conclusion(service, conclusion, conclusion.attempts)

        elif name == "execute_program":
            inputs, secret = _program_inputs(arguments)
            rest = {k: v for k, v in arguments.items() if k not in _INPUTS_SCHEMA}
            given = _checked(name, rest, _program_fields([]), tuple(_INPUTS_SCHEMA))

            def call() -> dict[str, Any]:
                return _conclusion(
                    service,
                    service.execute(
                        principal, given["contract"], given["program"], inputs=inputs, secret_inputs=secret
                    ),
                )

        elif name == "audit_run":
            given = _checked(name, arguments, _AUDIT_FIELDS)

            def call() -> dict[str, Any]:
                view = service.run_view(principal, given["run_id"])
                view["receipts"] = len(view["receipts"])  # the count; the receipts are on GET /v1/runs/{id}
                return view

        elif approvals.serves(name):
            call = approvals.call(principal, name, arguments)
        else:
            raise _invalid(f"no tool {name!r}: tools/list names the tools", "name")

        starts_run = name == "execute_program" or name.startswith(_OPERATE)
        if not starts_run or slots is None:
            return await answer(ctx, name, call, starts_run)
        if not slots.take():
            if slots.waiting >= slots.queue:
                seconds = slots.retry_after()
                # MCP has no Retry-After header and no Idempotency-Key: the seconds ride in the problem
                again = f"call the tool again after retry_after ({seconds}) seconds"
                return _problem("overloaded", slots.refusal(again), title=_MCP_OVERLOADED, retry_after=seconds)
            await slots.wait()
        started = time.monotonic()
        try:
            return await answer(ctx, name, call, starts_run)
        finally:
            slots.release(time.monotonic() - started)

    async def answer(
        ctx: ServerRequestContext[Any], name: str, call: Callable[[], dict[str, Any]], starts_run: bool
    ) -> types.CallToolResult | dict[str, Any]:
        """Run the tool's `call` on a thread and answer its result, or its failure as a problem."""
        try:
            body = await anyio.to_thread.run_sync(call)
            if starts_run and body.get("status") == "awaiting_approval":  # a Task, or how to poll
                paused = await anyio.to_thread.run_sync(approvals.answer_paused, ctx, body)
                return paused if paused.get("resultType") == "task" else _result(paused)
            return _result(body)
        except _BackendUnavailable as error:  # an internal error: the server's, not the caller's
            answer = error.answer
            return _problem(
                "backend-unavailable",
                str(error),
                internal=True,
                run_id=answer.run_id,
                contract=answer.contract,
                version=answer.version,
            )
        except ApprovalError as error:  # the reason code beside the HTTP API's problem type
            return _problem(_APPROVAL_PROBLEMS.get(error.code, "invalid-request"), str(error), code=error.code)
        except (AuditError, StoreUnavailable) as error:  # the database is down: the seconds ride in the problem
            kind, detail, headers = unavailable(error)
            return _problem(kind, detail, title=_MCP_UNAVAILABLE[kind], retry_after=int(headers["Retry-After"]))
        except (CharterError, Forbidden, IntentsUnavailable) as error:
            kind = next(kind for cls, kind in _PROBLEM_OF if isinstance(error, cls))
            return _problem(kind, str(error))
        except Exception as error:  # its text may hold secrets: the caller gets a reference, the log the rest
            _log.error("MCP tool %s failed", name, exc_info=error)
            return _problem("internal", "the server failed; its log has the detail")

    async def list_resources(ctx: ServerRequestContext[Any], params: Any) -> types.ListResourcesResult:
        def listing() -> list[types.Resource]:
            resources = []
            for info in service.registry.list():
                base = f"charter://contracts/{info.name}/{info.version}"
                resources += [
                    types.Resource(
                        uri=f"{base}/prompt",
                        name=f"{info.name} {info.version}: operational model",
                        description="The contract as the Runtime Agent reads it: entities, lifecycles, operations, "
                        "boundaries.",
                        mime_type="text/markdown",
                    ),
                    types.Resource(
                        uri=f"{base}/stubs",
                        name=f"{info.name} {info.version}: typed stubs",
                        description="The typed proxies a program calls (code mode).",
                        mime_type="text/x-python",
                    ),
                ]
            return resources

        return types.ListResourcesResult(resources=await anyio.to_thread.run_sync(listing))

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        match = _RESOURCE.match(str(params.uri))
        if match is None:
            raise _invalid(f"no resource {params.uri}: URIs look like charter://contracts/NAME/VERSION/prompt", "uri")
        name, version, part = match.groups()
        try:
            compiled = await anyio.to_thread.run_sync(service.registry.get, name, version)
        except CharterError as error:
            raise _invalid(str(error), "uri") from None
        text = compiled.prompt_context if part == "prompt" else compiled.stub_source
        mime = "text/markdown" if part == "prompt" else "text/x-python"
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=str(params.uri), mime_type=mime, text=text)]
        )

    server: Server[Any] = Server(
        "charter",
        version=_VERSION,
        title="Charter",
        instructions=(
            "Charter runs actions on real systems under versioned domain contracts. Prefer the operate_<contract> "
            "tools; read a contract's resources to know what it allows."
        ),
        on_list_tools=list_tools,
        # A task (resultType "task") is a dict: the runner serializes any handler result, which
        # is how an extension's result shape reaches the wire; the parameter's annotation names
        # the core shapes only.
        on_call_tool=cast(Any, call_tool),
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_subscriptions_listen=ListenHandler(changes.bus) if changes is not None else None,
    )
    approvals.install(server)  # the tasks extension: tasks/get, tasks/update, tasks/cancel
    if changes is not None:

        async def initialized(ctx: ServerRequestContext[Any], params: Any) -> None:
            changes.sessions.append(ctx.session)  # a 2025-11-25 session: told by notification

        server.add_notification_handler("notifications/initialized", types.NotificationParams, initialized)
    return server


_VERSION = metadata.version("charter")


def serve_stdio(service: CharterService, principal: Principal) -> None:
    changes = _Changes()
    server = build_server(service, lambda ctx: principal, changes)
    options = server.create_initialization_options(NotificationOptions(tools_changed=True, resources_changed=True))

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream), anyio.create_task_group() as tasks:
            tasks.start_soon(changes.watch, service)
            await server.run(read_stream, write_stream, options)
            tasks.cancel_scope.cancel()

    resume_own_runs(service, principal)  # decided approvals of this operator's runs, in the background
    try:
        anyio.run(main)
    finally:
        service.stop_approvals()


def serve_http(
    service: CharterService,
    tokens: TokenStore,
    host: str,
    port: int,
    *,
    max_runs: int = DEFAULT_MAX_RUNS,
    queue: int = DEFAULT_QUEUE,
    sock: socket.socket | None = None,
) -> None:
    from charter._profile import install_signal
    from charter.server._uvicorn import run

    app = http_app(service, tokens, host, max_runs=max_runs, queue=queue)
    service.start_approvals(tokens.principal)  # resumes decided approvals, as `charter serve` does
    install_signal()  # CHARTER_PROFILE=FILE: SIGUSR1 writes where the CPU went
    try:
        run(app, host=host, port=port, sock=sock)
    finally:
        service.stop_approvals()


_REALM = "charter-mcp"


def http_app(
    service: CharterService,
    tokens: TokenStore,
    host: str,
    *,
    max_runs: int = DEFAULT_MAX_RUNS,
    queue: int = DEFAULT_QUEUE,
) -> Any:
    """Streamable HTTP, each request authenticated by its bearer token (a static token from
    `charter token add`: no OAuth authorization server, so no protected-resource metadata)."""

    def principal_of(ctx: ServerRequestContext[Any]) -> Principal:
        headers = getattr(ctx.request, "headers", None) or {}
        principal = tokens.authenticate(_bearer(headers.get("authorization")))
        if principal is None:  # the middleware below already refused it; never act for nobody
            raise Forbidden("no valid bearer token")
        return principal

    slots = RunSlots(max_runs, queue)  # tools that run programs, as `charter serve --max-runs/--queue`
    inner = build_server(service, principal_of, slots=slots).streamable_http_app(
        host=host, stateless_http=True, json_response=True
    )

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            if path.startswith("/.well-known/"):  # OAuth discovery: not offered, and saying so is not secret
                detail = "this server offers no OAuth: send a static bearer token from `charter token add`"
                await problem_response("not-found", detail, path)(scope, receive, send)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            given = _bearer(headers.get("authorization"))
            if tokens.authenticate(given) is None:
                if given is None:  # RFC 6750 3.1: no credentials, no error code
                    detail, challenge = "send Authorization: Bearer <token>", f'Bearer realm="{_REALM}"'
                else:
                    detail = "the bearer token is not known"
                    challenge = f'Bearer realm="{_REALM}", error="invalid_token", error_description="{detail}"'
                response = problem_response("unauthenticated", f"{detail} (tokens come from `charter token add`)", path)
                response.headers["WWW-Authenticate"] = challenge
                await response(scope, receive, send)
                return
        await inner(scope, receive, send)

    # Outermost, as in the HTTP API: the body limit holds before the token is checked or the
    # JSON-RPC message parsed (413 problem+json, the connection closed). Its JSON stays the
    # MCP SDK's to judge: a malformed message gets a JSON-RPC parse error, as MCP clients expect.
    return BodyGuard(app, max_bytes=MAX_BODY_BYTES, json_routes=(), refuse=problem_response)


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None
