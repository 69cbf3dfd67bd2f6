"""The HTTP API (`charter serve HOST:PORT`), on FastAPI.

    POST /v1/intents                         an intent in, the conclusion and run id out
    POST /v1/programs                        a caller-written program, run governed
    GET  /v1/runs/{run_id}                   conclusion, receipts, verification
    GET  /v1/contracts                       published contracts and their versions
    GET  /v1/contracts/{name}/{version}      one version: X.Y.Z, MAJOR, MAJOR.MINOR, or 'latest'
                                             (the newest of the default major)
    GET  /openapi.json                       this API, described (also kept in the repo: openapi.json)

Every /v1 request needs `Authorization: Bearer <token>`; the token's principal and scopes
are what the gate checks. Errors are application/problem+json with a stable `type`.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from charter.errors import AuditError, ContractNotFound, RunNotFound, UsageError
from charter.principal import Principal
from charter.runner import Answer
from charter.server._idempotency import IdempotencyStore, KeyInProgress, KeyReused, StoredResponse, request_digest
from charter.server._service import CharterService, Forbidden, IntentsUnavailable, conclusion_body
from charter.server._tokens import TokenStore
from charter.status import Status

__all__ = ["PROBLEM_TYPES", "create_app"]

_log = logging.getLogger("charter.server")

API_VERSION = "1.0.0"
_MAX_BODY_BYTES = 1_048_576

# Stable problem types: clients branch on these, never on the wording of `detail`.
PROBLEM_TYPES = {
    "unauthenticated": (401, "No valid bearer token"),
    "forbidden": (403, "Not allowed for this principal"),
    "not-found": (404, "No such resource"),
    "contract-not-found": (404, "No such contract or version"),
    "run-not-found": (404, "No such run"),
    "method-not-allowed": (405, "Method not allowed"),
    "idempotency-in-progress": (409, "A request with this Idempotency-Key is still running"),
    "payload-too-large": (413, "The request body is too large"),
    "invalid-request": (422, "The request is not valid"),
    "idempotency-key-reused": (422, "This Idempotency-Key was used for another request"),
    "intents-unavailable": (503, "This server answers no intents"),
    "audit-unavailable": (503, "The audit log could not be written"),
    "backend-unavailable": (503, "The server's backend for this operation is unavailable"),
    "internal": (500, "Internal error"),
}


class ApiProblem(Exception):
    def __init__(self, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.extra = kind, detail, extra


def problem_response(kind: str, detail: str, instance: str | None = None, **extra: Any) -> JSONResponse:
    status, title = PROBLEM_TYPES[kind]
    body = {"type": f"urn:charter:problem:{kind}", "title": title, "status": status, "detail": detail, **extra}
    if instance:
        body["instance"] = instance
    headers = {"WWW-Authenticate": 'Bearer realm="charter"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


# -- request and response models (they are the OpenAPI document) ------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


_CONTRACT_REF = (
    "NAME (the newest version of its default major), NAME@MAJOR, NAME@MAJOR.MINOR (the newest of that line) "
    "or NAME@MAJOR.MINOR.PATCH."
)


class IntentRequest(_Request):
    contract: str = Field(min_length=1, max_length=200, description=_CONTRACT_REF)
    intent: str = Field(min_length=1, max_length=4000, description="What should be done, in plain words.")


class ProgramRequest(_Request):
    contract: str = Field(min_length=1, max_length=200, description=_CONTRACT_REF)
    program: str = Field(min_length=1, max_length=262_144, description="Python source using the typed proxies.")


class ConclusionBody(BaseModel):
    run_id: str
    status: Status = Field(description="How the run ended; the vocabulary is the README's 'Run status'.")
    cause: str | None = Field(
        default=None, description="Why, as a machine word: the sandbox outcome (timeout...) or a gate code."
    )
    answer: str | None = None
    data: Any = None
    reason: str | None = None
    contract: str | None = Field(default=None, description="The contract the run used.")
    version: str | None = Field(default=None, description="The exact version the contract reference resolved to.")
    attempts: int | None = Field(default=None, description="Model answers it took (intents only).")


class RunBody(BaseModel):
    run_id: str
    kind: Literal["intent", "program"]
    principal: str
    contract: str
    version: str
    intent: str | None
    status: Status
    cause: str | None
    answer: str | None
    reason: str | None
    receipts: list[dict[str, Any]]
    verification: dict[str, Any]
    # Only for a principal with audit:read: exception texts withheld from the program and receipts.
    backend_errors: list[dict[str, Any]] | None = None


class ContractVersionBody(BaseModel):
    version: str
    sha256: str
    published_at: str


class ContractListing(BaseModel):
    name: str
    latest: str = Field(description="The newest published version, of any major.")
    default: str = Field(description="What an unpinned caller gets: the newest version of the default major.")
    summary: str
    versions: list[ContractVersionBody]


class ContractBody(BaseModel):
    name: str
    version: str
    sha256: str
    summary: str
    operations: list[dict[str, Any]]
    prompt_context: str
    stubs: str


class ProblemBody(BaseModel):
    type: str
    title: str
    status: int
    detail: str


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {"model": ProblemBody, "content": {"application/problem+json": {}}, "description": "A problem."}
        for s in statuses
    }


def _conclusion(answer: Answer, attempts: int | None = None) -> dict[str, Any]:
    if answer.unavailable:  # the server's fault, reported as such and never as the caller's
        raise ApiProblem(
            "backend-unavailable",
            "; ".join(answer.unavailable),
            run_id=answer.run_id,
            contract=answer.contract,
            version=answer.version,
        )
    return conclusion_body(answer, attempts)


_bearer = HTTPBearer(auto_error=False, description="A token from `charter token add`.")


def _authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    tokens: TokenStore = request.app.state.tokens
    principal = tokens.authenticate(credentials.credentials if credentials else None)
    if principal is None:
        detail = "send Authorization: Bearer <token>" if credentials is None else "the bearer token is not known"
        raise ApiProblem("unauthenticated", f"{detail} (tokens come from `charter token add`)")
    return principal


Caller = Annotated[Principal, Depends(_authenticated)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="Send the same key to retry safely: the first result comes back and nothing runs again.",
    ),
]


def create_app(service: CharterService, tokens: TokenStore, idempotency: IdempotencyStore) -> FastAPI:
    app = FastAPI(
        title="Charter",
        version=API_VERSION,
        summary="A governed execution layer for AI agents.",
        description=(
            "Intents and programs run against versioned domain contracts: in a Wasm sandbox, behind a gate "
            "that checks every call against the contract, with a signed receipt for each decision. "
            "Errors are application/problem+json; branch on `type`."
        ),
    )
    app.state.tokens = tokens

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, problem: ApiProblem) -> JSONResponse:
        return problem_response(problem.kind, problem.detail, request.url.path, **problem.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [{"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in error.errors()]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        return problem_response("invalid-request", detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed", 401: "unauthenticated"}.get(error.status_code, "internal")
        return problem_response(kind, str(error.detail), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # The text of an unexpected exception may hold anything a backend or the server held
        # (a connection string, a password): the caller gets its type; the server's log, the rest.
        _log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        detail = f"the server failed ({type(error).__name__}); its log has the detail"
        return problem_response("internal", detail, request.url.path)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > _MAX_BODY_BYTES):
            return problem_response("payload-too-large", f"send at most {_MAX_BODY_BYTES} bytes", request.url.path)
        response: Response = await call_next(request)
        return response

    def once(principal: Principal, key: str | None, path: str, body: BaseModel, run: Any) -> Response:
        """Run `run()` once per Idempotency-Key; its JSON result is what a repeat gets."""
        if key is None:
            return JSONResponse(run())
        digest = request_digest("POST", path, body.model_dump_json().encode())
        try:
            stored = idempotency.claim(principal.id, key, digest)
        except KeyReused:
            raise ApiProblem(
                "idempotency-key-reused", f"Idempotency-Key {key!r} was first used with another request body"
            ) from None
        except KeyInProgress:
            raise ApiProblem(
                "idempotency-in-progress", f"the first request with Idempotency-Key {key!r} is still running"
            ) from None
        if stored is not None:
            return Response(
                stored.body,
                status_code=stored.status,
                media_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        try:
            body_bytes = json.dumps(run()).encode()
        except BaseException:
            idempotency.release(principal.id, key)
            raise
        idempotency.complete(principal.id, key, StoredResponse(200, body_bytes))
        return Response(body_bytes, media_type="application/json")

    def guarded(action: Any) -> Any:
        """Charter's exceptions as problems; everything else is a 500 problem."""
        try:
            return action()
        except ContractNotFound as error:
            raise ApiProblem("contract-not-found", str(error)) from None
        except RunNotFound as error:
            raise ApiProblem("run-not-found", str(error)) from None
        except Forbidden as error:
            raise ApiProblem("forbidden", str(error)) from None
        except IntentsUnavailable as error:
            raise ApiProblem("intents-unavailable", str(error)) from None
        except AuditError as error:
            raise ApiProblem("audit-unavailable", str(error)) from None
        except UsageError as error:
            raise ApiProblem("invalid-request", str(error)) from None

    @app.post(
        "/v1/intents",
        response_model=ConclusionBody,
        summary="Ask for something in plain words",
        description="The Runtime Agent writes one program against the contract, which runs governed. "
        "Only the conclusion comes back, with the run id to audit it by.",
        responses=_problems(401, 404, 409, 413, 422, 503),
    )
    def post_intent(request: IntentRequest, principal: Caller, idempotency_key: IdempotencyKey = None) -> Response:
        def run() -> dict[str, Any]:
            conclusion = guarded(lambda: service.operate(principal, request.contract, request.intent))
            return _conclusion(conclusion, conclusion.attempts)

        return once(principal, idempotency_key, "/v1/intents", request, run)

    @app.post(
        "/v1/programs",
        response_model=ConclusionBody,
        summary="Run a program you wrote (code mode)",
        description="The program runs in the sandbox; every proxy call is checked against the contract.",
        responses=_problems(401, 404, 409, 413, 422, 503),
    )
    def post_program(request: ProgramRequest, principal: Caller, idempotency_key: IdempotencyKey = None) -> Response:
        def run() -> dict[str, Any]:
            return _conclusion(guarded(lambda: service.execute(principal, request.contract, request.program)))

        return once(principal, idempotency_key, "/v1/programs", request, run)

    @app.get(
        "/v1/runs/{run_id}",
        response_model=RunBody,
        summary="A run's conclusion, receipts and verification",
        responses=_problems(401, 403, 404),
    )
    def get_run(run_id: str, principal: Caller) -> dict[str, Any]:
        return guarded(lambda: service.run_view(principal, run_id))  # type: ignore[no-any-return]

    @app.get("/v1/contracts", response_model=list[ContractListing], summary="Published contracts")
    def get_contracts(principal: Caller) -> list[dict[str, Any]]:
        return service.contract_list()

    @app.get(
        "/v1/contracts/{name}/{version}",
        response_model=ContractBody,
        summary="One contract version: its operations, prompt context and typed stubs",
        responses=_problems(401, 404),
    )
    def get_contract(name: str, version: str, principal: Caller) -> dict[str, Any]:
        return guarded(lambda: service.contract_view(name, version))  # type: ignore[no-any-return]

    return app
