"""Charter as an MCP server (the official `mcp` SDK, low-level server).

Tools, listed afresh from the registry on every `tools/list`, so a newly published
contract version shows up without a restart or a code change:

- `operate_<contract>`: an intent in plain words; only the conclusion and the run id
  come back. Its description is generated from the contract: summary, operations, hard
  boundaries, version.
- `execute_program`: code mode, a program the caller wrote against a contract's stubs.
- `audit_run`: a run's conclusion, receipts and verification.

Resources, per published contract version: its operational model as the Runtime Agent
reads it (`charter://contracts/NAME/VERSION/prompt`) and its typed stubs (`.../stubs`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
import msgspec
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

from charter.compiler.artifact import CompiledContract
from charter.errors import CharterError
from charter.principal import Principal
from charter.runner import Answer
from charter.server._service import CharterService, Forbidden, IntentsUnavailable
from charter.server._tokens import TokenStore

__all__ = ["build_server", "serve_http", "serve_stdio"]

_RESOURCE = re.compile(r"charter://contracts/([a-z][a-z0-9_]*)/([0-9A-Za-z.+-]+)/(prompt|stubs)\Z")
_OPERATE = "operate_"
_VERSION_SELECTOR = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?)?)?$"

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


def _tools(service: CharterService) -> list[types.Tool]:
    contracts = service.latest_contracts()
    names = [c.name for c in contracts]
    tools = [
        types.Tool(
            name=f"{_OPERATE}{contract.name}",
            title=f"Operate {contract.name} {contract.version}",
            description=operate_description(contract),
            input_schema={
                "type": "object",
                "properties": {
                    "intent": {"type": "string", "minLength": 1, "maxLength": 4000, "description": "What to do."},
                    "version": {
                        "type": "string",
                        "pattern": _VERSION_SELECTOR,
                        "description": f"Pin a version: MAJOR, MAJOR.MINOR or MAJOR.MINOR.PATCH (default: "
                        f"{contract.version}, the newest of the default major).",
                    },
                },
                "required": ["intent"],
                "additionalProperties": False,
            },
        )
        for contract in contracts
    ]
    tools.append(
        types.Tool(
            name="execute_program",
            title="Run a program under a contract (code mode)",
            description=(
                "Run a Python program you wrote against a contract's typed proxies (read them in the resource "
                "charter://contracts/NAME/VERSION/stubs). It runs in a Wasm sandbox; every call is checked against "
                "the contract and receipted. End it with conclude(answer) or refuse(reason). Returns the "
                f"conclusion and run id. Contracts: {', '.join(names) or 'none published'}."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "contract": {
                        "type": "string",
                        "description": "NAME (the newest of its default major), NAME@MAJOR, NAME@MAJOR.MINOR or "
                        f"NAME@MAJOR.MINOR.PATCH; one of {', '.join(names) or 'none published'}.",
                        "pattern": rf"^[a-z][a-z0-9_]*(@{_VERSION_SELECTOR[1:-1]})?$",
                    },
                    "program": {"type": "string", "minLength": 1, "description": "Python source."},
                },
                "required": ["contract", "program"],
                "additionalProperties": False,
            },
        )
    )
    tools.append(
        types.Tool(
            name="audit_run",
            title="Read a run's audit summary",
            description="A run's conclusion, its decisions and receipts, and whether its signatures verify.",
            input_schema={
                "type": "object",
                "properties": {"run_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
                "required": ["run_id"],
                "additionalProperties": False,
            },
        )
    )
    return tools


class _BackendUnavailable(Exception):
    """The server could not perform a call (a binding module missing, failing or changed)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("; ".join(answer.unavailable))
        self.answer = answer


def _conclusion(answer: Answer, **extra: Any) -> dict[str, Any]:
    if answer.unavailable:
        raise _BackendUnavailable(answer)
    return {
        "run_id": answer.run_id,
        "status": answer.status,
        "cause": answer.cause,
        "decision": msgspec.to_builtins(answer.decision),  # null unless a gate decision decided it
        "answer": answer.answer,
        "reason": answer.reason,
        "contract": answer.contract,
        "version": answer.version,
        **extra,
    }


def _result(body: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(body, ensure_ascii=False, default=str))],
        structured_content=body,
        is_error=error,
    )


def build_server(service: CharterService, principal_of: PrincipalOf) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await anyio.to_thread.run_sync(_tools, service))

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        principal = principal_of(ctx)
        arguments = params.arguments or {}

        def call() -> dict[str, Any]:
            name = params.name
            if name.startswith(_OPERATE):
                contract = name[len(_OPERATE) :]
                if arguments.get("version") is not None:
                    contract += "@" + _text(arguments, "version")
                conclusion = service.operate(principal, contract, _text(arguments, "intent"))
                return _conclusion(conclusion, attempts=conclusion.attempts)
            if name == "execute_program":
                contract, program = _text(arguments, "contract"), _text(arguments, "program")
                return _conclusion(service.execute(principal, contract, program))
            if name == "audit_run":
                view = service.run_view(principal, _text(arguments, "run_id"))
                view["receipts"] = len(view["receipts"])  # the count; the receipts are on GET /v1/runs/{id}
                return view
            raise _ToolError(f"no tool {name!r}: call tools/list")

        try:
            return _result(await anyio.to_thread.run_sync(call))
        except _BackendUnavailable as error:  # an internal error: the server's, not the caller's
            answer = error.answer
            body = {
                "error": "BackendUnavailable",
                "type": "urn:charter:problem:backend-unavailable",
                "internal": True,
                "message": str(error),
                "run_id": answer.run_id,
                "contract": answer.contract,
                "version": answer.version,
            }
            return _result(body, error=True)
        except (CharterError, Forbidden, IntentsUnavailable, _ToolError) as error:
            return _result({"error": type(error).__name__, "message": str(error)}, error=True)
        except Exception as error:  # its text may hold secrets: the caller gets the type, the log the rest
            _log.error("MCP tool %s failed", params.name, exc_info=error)
            message = f"the server failed ({type(error).__name__}); its log has the detail"
            return _result({"error": "internal", "message": message}, error=True)

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
            raise ValueError(f"no resource {params.uri}: URIs look like charter://contracts/NAME/VERSION/prompt")
        name, version, part = match.groups()
        compiled = await anyio.to_thread.run_sync(service.registry.get, name, version)
        text = compiled.prompt_context if part == "prompt" else compiled.stub_source
        mime = "text/markdown" if part == "prompt" else "text/x-python"
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=str(params.uri), mime_type=mime, text=text)]
        )

    return Server(
        "charter",
        instructions=(
            "Charter runs actions on real systems under versioned domain contracts. Prefer the operate_<contract> "
            "tools; read a contract's resources to know what it allows."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


class _ToolError(Exception):
    pass


def _text(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str):
        raise _ToolError(f"argument {name!r} must be a string")
    return value


def serve_stdio(service: CharterService, principal: Principal) -> None:
    server = build_server(service, lambda ctx: principal)

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(main)


def serve_http(service: CharterService, tokens: TokenStore, host: str, port: int) -> None:
    import uvicorn

    app = http_app(service, tokens, host)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def http_app(service: CharterService, tokens: TokenStore, host: str) -> Any:
    """Streamable HTTP, each request authenticated by its bearer token."""

    def principal_of(ctx: ServerRequestContext[Any]) -> Principal:
        headers = getattr(ctx.request, "headers", None) or {}
        principal = tokens.authenticate(_bearer(headers.get("authorization")))
        if principal is None:  # the middleware below already refused it; never act for nobody
            raise Forbidden("no valid bearer token")
        return principal

    inner = build_server(service, principal_of).streamable_http_app(host=host, stateless_http=True, json_response=True)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if tokens.authenticate(_bearer(headers.get("authorization"))) is None:
                body = b'{"error": "send Authorization: Bearer <token> (charter token add)"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await inner(scope, receive, send)

    return app


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None
