"""The HTTP API (`charter serve HOST:PORT`), on FastAPI.

    POST /v1/intents                         an intent in, the conclusion and run id out
    POST /v1/programs                        a caller-written program, run governed
    GET  /v1/runs                            runs newest first, cursor-paginated (?contract=NAME[@X.Y.Z]
                                             &status=&principal=&code=&since=&until=&run=&limit=&cursor=)
    GET  /v1/runs/{run_id}                   conclusion, receipts, verification; a run paused for
                                             approval reports the latest run of its chain
    GET  /v1/approvals                       approval requests the caller may see (?contract=&status=)
    GET  /v1/approvals/{approval_id}         one request: the call, the rule, what the gate read
    POST /v1/approvals/{approval_id}/approve a decision, with {"reason": ...} (four eyes: never the
    POST /v1/approvals/{approval_id}/deny    requester; the approver scope); the run then resumes
    GET  /v1/contracts                       published contracts and their versions
    GET  /v1/contracts/{name}/{version}      one version: X.Y.Z, MAJOR, MAJOR.MINOR, or 'latest'
                                             (the newest of the default major)
    GET  /openapi.json                       this API, described (also kept in the repo: openapi.json)

GET /v1/runs lists from the runs index (never decoding receipts), newest first: `limit` runs
(1..200, default 50) and `next_cursor`, an opaque string to pass as `cursor` for the next page
(null on the last). Runs an intent started are not rows of their own: an intent run's row
carries them as `attempts`. `code` matches a run's first denial; `since` <= opened_at < `until`
(ISO-8601; UTC unless a zone is given). Without audit:read a caller sees its own runs only: a
`principal` naming anyone else, or any `run` (run-id prefix) search, is 403 forbidden (a prefix
search would reveal others' ids). A bad value is 422 invalid-request naming the parameter.

The /v1/approvals routes and their bodies are in `_approvals_api`; `create_app` adds them.

Every /v1 request needs `Authorization: Bearer <token>`; the token's principal and scopes
are what the gate checks. A request whose run pauses for a human's approval answers 202 with
`Location: /v1/runs/{run_id}`. Errors are application/problem+json with a stable `type` (and,
for approvals, the reason `code`: APPROVAL_NOT_FOUND, SELF_APPROVAL...). Before
any of that, `BodyGuard` (`_body`) holds every body to 1 MiB while it streams and refuses a
POST body that is not plain JSON sent as application/json (400 invalid-json, 415).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from charter._profile import component
from charter.approvals import ApprovalError
from charter.errors import AuditError, ContractNotFound, RunNotFound, StoreUnavailable, UsageError
from charter.inputs import MAX_INPUT_CHARS, MAX_INPUTS
from charter.principal import Principal
from charter.runner import Answer
from charter.server._admission import DEFAULT_MAX_RUNS, DEFAULT_QUEUE, RunSlots
from charter.server._body import MAX_BODY_BYTES, BodyGuard
from charter.server._idempotency import (
    Claimed,
    IdempotencyStore,
    KeyInProgress,
    KeyReused,
    Orphaned,
    ScopeMismatch,
    StoredResponse,
    request_digest,
    request_fingerprint,
)
from charter.server._runs_query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    RunQueryError,
    page_body,
    parse_run_query,
)
from charter.server._service import AUDIT_SCOPE, CharterService, Forbidden, IntentsUnavailable, conclusion_body
from charter.server._tokens import TokenStore
from charter.status import Status

__all__ = ["PROBLEM_TYPES", "create_app"]

_log = logging.getLogger("charter.server")

API_VERSION = "1.0.0"
_MAX_ERRORS = 20  # validation errors named in one problem
_MAX_SHOWN = 200  # characters of a location or message quoted back

# Stable problem types: clients branch on these, never on the wording of `detail`.
PROBLEM_TYPES = {
    "unauthenticated": (401, "No valid bearer token"),
    "forbidden": (403, "Not allowed for this principal"),
    "idempotency-scope-mismatch": (403, "This token lacks a scope the Idempotency-Key's first request held"),
    "not-found": (404, "No such resource"),
    "contract-not-found": (404, "No such contract or version"),
    "run-not-found": (404, "No such run"),
    "approval-not-found": (404, "No such approval request among those this principal may see"),
    "self-approval": (403, "The requesting principal may not decide its own request (four eyes)"),
    "forbidden-scope": (403, "This principal lacks the approver scope the request names"),
    "already-decided": (409, "The approval request holds another decision"),
    "approval-expired": (409, "The approval request expired: it can only be denied"),
    "resume-in-progress": (409, "The approved run is being resumed"),
    "approval-tampered": (409, "The approval request's signed record does not verify; nothing was decided"),
    "method-not-allowed": (405, "Method not allowed"),
    "idempotency-in-progress": (409, "A request with this Idempotency-Key is still running"),
    "invalid-json": (400, "The request body is not JSON this API accepts"),
    "payload-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "The request body must be sent as application/json"),
    "invalid-request": (422, "The request is not valid"),
    "idempotency-key-reused": (422, "This Idempotency-Key was used for another request"),
    "intents-unavailable": (503, "This server answers no intents"),
    "overloaded": (503, "The server is running as many requests as it takes; retry after Retry-After seconds"),
    "audit-unavailable": (503, "The audit log could not be written; retry after Retry-After seconds"),
    "store-unavailable": (503, "A store's database cannot be reached now; retry after Retry-After seconds"),
    "backend-unavailable": (503, "The server's backend for this operation is unavailable"),
    "internal": (500, "Internal error"),
}


# The approvals' reason codes (charter.approvals.ApprovalError.code) as problem types; the
# problem carries the code too, as `code`.
_APPROVAL_PROBLEMS = {
    "APPROVAL_NOT_FOUND": "approval-not-found",
    "SELF_APPROVAL": "self-approval",
    "FORBIDDEN_SCOPE": "forbidden-scope",
    "ALREADY_DECIDED": "already-decided",
    "APPROVAL_EXPIRED": "approval-expired",
    "RESUME_IN_PROGRESS": "resume-in-progress",
    "TAMPERED": "approval-tampered",
}


# Starlette's own HTTP errors (routing, FastAPI's body parsing) as problem types.
_HTTP_ERRORS = {
    400: "invalid-json",
    401: "unauthenticated",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A JSON answer before it is sent: what an Idempotency-Key stores and a repeat gets."""

    status: int
    body: dict[str, Any]


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def unavailable(error: AuditError | StoreUnavailable) -> tuple[str, str, dict[str, str]]:
    """(problem type, detail, headers) for a store or the audit log that cannot be reached now:
    503 with Retry-After (the StoreUnavailable's, or one behind the AuditError, else 2 s). The
    same request may succeed then; nothing was changed (the gate refuses a call whose decision
    could not be written)."""
    cause: BaseException | None = error
    seconds = 2
    while cause is not None:
        if isinstance(cause, StoreUnavailable):
            seconds = cause.retry_after
            break
        cause = cause.__cause__
    kind = "store-unavailable" if isinstance(error, StoreUnavailable) else "audit-unavailable"
    return kind, str(error), {"Retry-After": str(seconds)}


_BUSY = re.compile(r"database is locked|database table is locked|database is busy")


class ApiProblem(Exception):
    def __init__(self, kind: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.extra, self.headers = kind, detail, extra, headers


def problem_response(
    kind: str, detail: str, instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    status, title = PROBLEM_TYPES[kind]
    body = {"type": f"urn:charter:problem:{kind}", "title": title, "status": status, "detail": detail, **extra}
    if instance:
        body["instance"] = instance
    headers = dict(headers or {})
    if status == 401:  # RFC 6750 section 3: a token was sent and is not known -> error="invalid_token"
        headers.setdefault("WWW-Authenticate", 'Bearer realm="charter"')
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


# -- request and response models (they are the OpenAPI document) ------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


_CONTRACT_REF = (
    "NAME (the newest version of its default major), NAME@MAJOR, NAME@MAJOR.MINOR (the newest of that line) "
    "or NAME@MAJOR.MINOR.PATCH."
)


_InputName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
_InputValue = Annotated[str, StringConstraints(max_length=MAX_INPUT_CHARS)]


class _WithInputs(_Request):
    inputs: dict[_InputName, _InputValue] | None = Field(
        default=None,
        max_length=MAX_INPUTS,
        description="Named text values the program reads as inputs['name']; the gate counts them as the request "
        "(provenance rules' `request` source). Recorded in the run's Opened receipt.",
    )
    secret_inputs: list[_InputName] | None = Field(
        default=None,
        max_length=MAX_INPUTS,
        description="Names of inputs that are secrets (a password): the audit log records a keyed digest of "
        "each, never its value.",
    )


class IntentRequest(_WithInputs):
    contract: str = Field(min_length=1, max_length=200, description=_CONTRACT_REF)
    intent: str = Field(min_length=1, max_length=4000, description="What should be done, in plain words.")


class ProgramRequest(_WithInputs):
    contract: str = Field(min_length=1, max_length=200, description=_CONTRACT_REF)
    program: str = Field(min_length=1, max_length=262_144, description="Python source using the typed proxies.")


# The requests that run a program: they take a run slot (`admitted`). An approval decision
# does not (the resume worker runs the resume, one at a time).
RunRequest = IntentRequest | ProgramRequest


class DecisionBody(BaseModel):
    """charter.status.GateDecision: the deciding Decision receipt's fields and where it is."""

    code: str = Field(description="The reason code: STATE_VIOLATION, FORBIDDEN_SCOPE, GUARD_VIOLATION...")
    operation: str
    boundary: str | None = Field(description="The hard boundary the clause enforces, if any.")
    clause: str | None = Field(description="The contract clause decisive for it, e.g. transition:Order.cancel.")
    message: str
    run_id: str = Field(description="The run whose receipt it is (for an intent run: one of its program runs).")
    seq: int = Field(description="The receipt's place in that run.")
    log_seq: int = Field(description="The receipt's place in the audit log.")
    link: str = Field(description="sha256(body || signature) of the receipt.")


class ApprovalSummaryBody(BaseModel):
    """The approval a paused run waits for."""

    id: str = Field(description="The approval id (32 hex digits): GET /v1/approvals/{id}.")
    operation: str
    call: int = Field(description="The program's call number that paused.")
    reason: str = Field(description="The approval rule's reason.")
    expires: str = Field(description="ISO-8601 UTC; after it the request can only be denied.")
    status: str = Field(description="pending, approved, denied or expired.")


class ConclusionBody(BaseModel):
    run_id: str | None = Field(
        description="The run to audit. Null only in an in_doubt answer to an Idempotency-Key claimed by "
        "release 0.1, which did not record its run."
    )
    status: Status = Field(description="How the run ended; the vocabulary is the README's 'Run status'.")
    cause: str | None = Field(
        default=None, description="Why, as a machine word: the sandbox outcome (timeout...) or a gate code."
    )
    decision: DecisionBody | None = Field(
        default=None,
        description="The gate decision that decided a refused or failed run, from its receipt; null when none did "
        "(the program refused, a timeout...: `cause` names the outcome).",
    )
    answer: str | None = None
    data: Any = None
    reason: str | None = None
    contract: str | None = Field(default=None, description="The contract the run used.")
    version: str | None = Field(default=None, description="The exact version the contract reference resolved to.")
    attempts: int | None = Field(default=None, description="Model answers it took (intents only).")
    approval: ApprovalSummaryBody | None = Field(
        default=None, description="awaiting_approval: the approval the run waits for (answered 202)."
    )
    chain: list[str] | None = Field(
        default=None,
        description="A run that paused for approval: its chain's run ids in order (the run, the program run "
        "that paused, each resumed run); the status and answer are the latest sealed run's.",
    )


class CallBody(BaseModel):
    call: int = Field(description="The program's call number, from 1.")
    operation: str
    decision: Literal["ALLOW", "DENY"]
    code: str = Field(description="OK when allowed; otherwise the gate's reason code.")
    run_id: str | None = Field(default=None, description="The program run that made the call (along a chain).")


class OutcomeBody(BaseModel):
    call: int = Field(description="The program's call number, from 1.")
    status: str = Field(description="ok, failed, replayed or unknown (the backend's answer was never learned).")
    run_id: str | None = Field(default=None, description="The program run that made the call (along a chain).")


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
    parent: str | None = Field(default=None, description="A program run's intent run, if an intent started it.")
    program_runs: list[str] | None = Field(default=None, description="An intent run's program runs, in order.")
    calls: list[CallBody] | None = Field(
        default=None,
        description="A program run's gate decisions, in order; along an approval chain, every program run's "
        "(the paused run's, then each resumed run's), each naming its run.",
    )
    outcomes: list[OutcomeBody] | None = Field(
        default=None, description="What each executed call came to, in order (along the chain, as `calls`)."
    )
    in_doubt: list[int] | None = Field(
        default=None, description="Allowed calls whose outcome was never learned (along the chain, as `calls`)."
    )
    verification: dict[str, Any]
    # Only for a principal with audit:read: the signed record (programs, model responses, prompt
    # hashes, host, pid, arguments and results) and exception texts withheld from everyone else.
    receipts: list[dict[str, Any]] | None = Field(
        default=None,
        description="The run's signed receipts, each with `verified`: false where its own signature or links "
        "failed the check; only for a principal with the scope audit:read.",
    )
    programs: list[dict[str, Any]] | None = Field(
        default=None,
        description="An intent run's program runs, each with its receipts and verification; only for a principal "
        "with the scope audit:read.",
    )
    backend_errors: list[dict[str, Any]] | None = None
    chain: list[str] = Field(
        default_factory=list,
        description="The run's approval chain in order: the run, the program run that paused, each resumed run "
        "([run_id] for a run that never paused). `status`, `cause`, `answer` and `reason` are those of "
        "`latest_run`, the chain's latest sealed run.",
    )
    latest_run: str | None = Field(default=None, description="The chain's latest sealed run.")
    approval: ApprovalSummaryBody | None = Field(
        default=None, description="While the chain awaits approval: the approval it waits for."
    )
    resuming: str | None = Field(
        default=None, description="A resumed run under way (or to be retried), not yet sealed."
    )


class RunSummaryBody(BaseModel):
    """One row of the runs index (charter.audit.index.RunSummary)."""

    run_id: str
    kind: Literal["intent", "program"]
    contract: str
    version: str
    contract_sha256: str
    principal: str
    intent: str | None
    status: Status
    cause: str | None
    denial_code: str | None = Field(description="The run's first denial's reason code (an intent run: its attempts').")
    denial_operation: str | None = Field(description="The operation of that denial.")
    opened_at: str = Field(description="ISO-8601 UTC.")
    sealed_at: str | None = Field(description="ISO-8601 UTC; null: never sealed (interrupted, or still running).")
    parent: str | None = Field(description="The intent run a program run is an attempt of.")


class ResumedBody(BaseModel):
    run_id: str = Field(description="The latest run that resumed this run's chain after an approval's decision.")
    status: Status = Field(description="That run's own status (it may have paused again).")


class RunListItem(RunSummaryBody):
    attempts: list[RunSummaryBody] | None = Field(
        default=None, description="An intent run's program runs (its attempts'), in the order opened."
    )
    resumed: ResumedBody | None = Field(
        default=None,
        description="A run that paused for approval (status awaiting_approval, as it was sealed) and was resumed "
        "since: where its chain went. GET /v1/runs/{run_id} reports the chain's current state.",
    )


class RunListBody(BaseModel):
    runs: list[RunListItem] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


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


# A run that paused for a human's approval: its conclusion so far, and where to follow it.
_PAUSED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ConclusionBody,
        "description": "The run paused for a human's approval (status awaiting_approval, `approval`); "
        "Location names the run: GET it to follow the approval chain to its conclusion.",
        "headers": {"Location": {"description": "/v1/runs/{run_id}", "schema": {"type": "string"}}},
    }
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


async def _authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    # async: a dictionary lookup by hash (and a stat of the token file) needs no thread hop
    tokens: TokenStore = request.app.state.tokens
    with component("auth"):
        principal = tokens.authenticate(credentials.credentials if credentials else None)
    if principal is None:
        detail = "send Authorization: Bearer <token>" if credentials is None else "the bearer token is not known"
        challenge = None if credentials is None else 'Bearer realm="charter", error="invalid_token"'
        raise ApiProblem(
            "unauthenticated",
            f"{detail} (tokens come from `charter token add`)",
            headers={"WWW-Authenticate": challenge} if challenge else None,
        )
    return principal


Caller = Annotated[Principal, Depends(_authenticated)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",  # visible ASCII: a key is compared byte for byte, so nothing invisible
        description="Send the same key to retry safely: the first result comes back and nothing runs again.",
    ),
]


def create_app(
    service: CharterService,
    tokens: TokenStore,
    idempotency: IdempotencyStore,
    *,
    max_runs: int = DEFAULT_MAX_RUNS,
    queue: int = DEFAULT_QUEUE,
) -> FastAPI:
    """The API. `max_runs`: requests that run a program (POST /v1/programs, /v1/intents) in
    flight at once; `queue`: how many more wait for a slot; beyond, 503 `overloaded` with
    Retry-After (`_admission`). `app.state.slots` is the `RunSlots`."""
    # Imported here: the approval routes build on this module's Caller, Reply and problems.
    from charter.server._approvals_api import add_approval_routes

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
    app.state.slots = RunSlots(max_runs, queue)

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, problem: ApiProblem) -> JSONResponse:
        return problem_response(problem.kind, problem.detail, request.url.path, problem.headers, **problem.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        found = error.errors()
        # A hostile body can have thousands of wrong keys, each of any length: name the first few.
        errors = [
            {"location": _shown(".".join(str(p) for p in e["loc"])), "message": _shown(str(e["msg"]))}
            for e in found[:_MAX_ERRORS]
        ]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        if len(found) > _MAX_ERRORS:
            detail += f"; and {len(found) - _MAX_ERRORS} more"
        return problem_response("invalid-request", detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = _HTTP_ERRORS.get(error.status_code, "internal")
        # 405 keeps Starlette's Allow header (RFC 9110 15.5.6): the methods the resource has.
        return problem_response(kind, str(error.detail), request.url.path, headers=dict(error.headers or {}))

    # A database down (a store's StoreUnavailable, an audit log that cannot be written) raised
    # anywhere a route or dependency did not turn it into a problem: 503 with Retry-After, never 500.
    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(AuditError)
    async def _unavailable(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, AuditError | StoreUnavailable)
        kind, detail, headers = unavailable(error)
        return problem_response(kind, detail, request.url.path, headers)

    @app.exception_handler(sqlite3.OperationalError)
    async def _sqlite_busy(request: Request, error: Exception) -> JSONResponse:
        # A SQLite store another process held the write lock of past the busy timeout (many
        # workers on one file): the same request may succeed in a moment, so 503, not 500.
        if not _BUSY.search(str(error)):
            return await _unexpected(request, error)
        detail = f"a store was busy with another process's write ({error}); nothing was changed"
        return problem_response("store-unavailable", detail, request.url.path, {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # The text of an unexpected exception may hold anything a backend or the server held
        # (a connection string, a password): the caller gets its type; the server's log, the rest.
        _log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        detail = f"the server failed ({type(error).__name__}); its log has the detail"
        return problem_response("internal", detail, request.url.path)

    def conclusion(answer: Answer, attempts: int | None = None, chain: list[str] | None = None) -> Reply:
        """A run's conclusion as answered: 202 with its Location while it awaits approval."""
        body = _conclusion(answer, attempts)
        if answer.status != "awaiting_approval":
            return Reply(200, body | ({"chain": chain} if chain and len(chain) > 1 else {}))
        approval = guarded(lambda: service.approval_summary(answer.approval_id))
        return Reply(202, conclusion_body(answer, attempts, approval=approval, chain=chain))

    def current(run_id: str | None) -> Reply | None:
        """The run's conclusion now, following its approval chain; None if it never opened."""
        if run_id is None:
            return None
        found = guarded(lambda: service.current_answer(run_id))
        return None if found is None else conclusion(*found)

    def respond(reply: Reply, **headers: str) -> Response:
        if reply.status == 202 and isinstance(reply.body.get("run_id"), str):
            headers["Location"] = f"/v1/runs/{reply.body['run_id']}"
        return Response(json.dumps(reply.body).encode(), reply.status, headers, media_type="application/json")

    def once(
        principal: Principal, key: str | None, path: str, body: BaseModel, run: Callable[[str | None], Reply]
    ) -> Response:
        """Run `run(run_id)` once per Idempotency-Key; its JSON result is what a repeat gets.
        The run id is allocated before the claim, so the key's row names the run it started.
        A stored 202 (the run paused for approval) is answered with the run's current state."""
        if key is None:
            return respond(run(None))
        raw = body.model_dump_json().encode()
        digest = request_fingerprint("POST", path, raw, service.audit.secret_key)
        try:
            try:
                claim = idempotency.claim(
                    principal.id, key, digest, run_id=secrets.token_hex(16), scopes=principal.scopes
                )
            except KeyReused:
                # A key stored before secret inputs were fingerprinted keyed holds the body's
                # plain sha256: the same request still matches it (the row ages out with its TTL).
                legacy = request_digest("POST", path, raw)
                if legacy == digest:
                    raise
                claim = idempotency.claim(
                    principal.id, key, legacy, run_id=secrets.token_hex(16), scopes=principal.scopes
                )
            if isinstance(claim, Orphaned):
                claim = resolved(principal, key, claim)
        except KeyReused:
            raise ApiProblem(
                "idempotency-key-reused", f"Idempotency-Key {key!r} was first used with another request body"
            ) from None
        except ScopeMismatch as error:
            raise ApiProblem(
                "idempotency-scope-mismatch",
                f"Idempotency-Key {key!r} was first used by a token holding {', '.join(error.missing)}, which this "
                "token lacks: its answer goes only to a token with every scope the first one held",
            ) from None
        except KeyInProgress:
            raise ApiProblem(
                "idempotency-in-progress",
                f"the first request with Idempotency-Key {key!r} is still running",
                headers={"Retry-After": "1"},  # a retry after it finished gets its answer
            ) from None
        if isinstance(claim, StoredResponse):
            return replayed(claim)
        try:
            reply = run(claim.run_id)
            body_bytes = json.dumps(reply.body).encode()
        except ApiProblem as problem:
            if problem.extra.get("run_id") is None:
                idempotency.release(principal.id, key, claim.run_id)  # nothing ran: the key may be used again
            else:
                # The run started and may have acted (the audit log's database went away): the key
                # stays claimed; once its lease runs out a retry is answered from the log, never run.
                idempotency.abandon(principal.id, key)
            raise
        except BaseException:
            idempotency.release(principal.id, key, claim.run_id)
            raise
        idempotency.complete(principal.id, key, claim.run_id, StoredResponse(reply.status, body_bytes))
        return respond(reply)

    def replayed(stored: StoredResponse) -> Response:
        """A finished key's stored answer, sent again."""
        if stored.status == 202:  # paused then: what the caller needs is where its run stands now
            refreshed = current(json.loads(stored.body).get("run_id"))
            if refreshed is not None:
                return respond(refreshed, **{"Idempotent-Replayed": "true"})
        return Response(
            stored.body,
            status_code=stored.status,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )

    def finished_answer(principal: Principal, key: str, path: str, body: RunRequest) -> Response | None:
        """A finished Idempotency-Key's stored answer (read, nothing claimed); None if the
        request needs a run."""
        raw = body.model_dump_json().encode()
        digests = (request_fingerprint("POST", path, raw, service.audit.secret_key), request_digest("POST", path, raw))
        stored = idempotency.finished(principal.id, key, digests, scopes=principal.scopes)
        return None if stored is None else replayed(stored)

    async def admitted(
        http: Request, principal: Principal, key: str | None, path: str, body: RunRequest, work: Callable[[], Response]
    ) -> Response:
        """`work()` (a run) in the thread pool, holding a run slot taken on the event loop. Called
        once FastAPI has authenticated the request and validated its body; with no slot free, a
        request that can be answered without a run (unknown contract, finished key) is answered
        first, then it queues or, beyond the queue, is refused 503 `overloaded` having claimed
        nothing."""
        slots: RunSlots = app.state.slots
        if not slots.take():
            # Answered without a slot, on the loop (a refused request must not wait for a pool
            # thread busy with runs): an unknown contract (the registry's cache), a finished
            # key's replay (one indexed read on the store's read connection).
            guarded(lambda: service.contract(body.contract))
            early = None if key is None else finished_answer(principal, key, path, body)
            if early is not None:
                return early
            if not slots.take():
                if slots.waiting >= slots.queue:
                    seconds = slots.retry_after()
                    again = f"send the request again in {seconds} s (with the same Idempotency-Key, if it had one)"
                    raise ApiProblem("overloaded", slots.refusal(again), headers={"Retry-After": str(seconds)})
                if not await slots.wait_or_leave(http.receive):
                    return Response(status_code=499)  # the client left while it waited: nothing ran
        started = time.monotonic()
        try:
            return await run_in_threadpool(work)
        finally:
            slots.release(time.monotonic() - started)

    def resolved(principal: Principal, key: str, orphan: Orphaned) -> Claimed | StoredResponse:
        """An orphaned key, from the audit log: the answer its run recorded (in_doubt if it was
        opened and never sealed), or, if it was never opened, the claim, taken over."""
        reply = None
        if orphan.run_id is not None:
            reply = current(orphan.run_id)
            if reply is None:  # nothing ran: running it now is safe
                claim = idempotency.take_over(principal.id, key, orphan)
                if claim is None:
                    raise KeyInProgress(key)
                return claim
        if reply is None:  # a claim of release 0.1: its run is not known, so neither is its effect
            answer = Answer(
                run_id="",
                status="in_doubt",
                reason="the first request with this key was under way when its server stopped (release 0.1 "
                "did not record its run id): what it did is not known; `charter audit list` shows the "
                "principal's runs",
            )
            reply = Reply(200, _conclusion(answer) | {"run_id": None, "contract": None, "version": None})
        stored = StoredResponse(reply.status, json.dumps(reply.body).encode())
        idempotency.settle(principal.id, key, orphan, stored)
        return stored

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
        except (AuditError, StoreUnavailable) as error:
            kind, detail, headers = unavailable(error)
            opened = error.opened_run if isinstance(error, AuditError) else None
            if opened is None:
                raise ApiProblem(kind, detail, headers=headers) from None
            # The run had started: what it did up to here is in the log, and it must not run again.
            raise ApiProblem(
                kind,
                f"{detail}. Run {opened} was under way and may have acted: it is sealed interrupted once the "
                "log's database is back. Do not send the request again without its Idempotency-Key; with it, "
                "a retry gets this run's answer, never a second run",
                headers=headers,
                run_id=opened,
            ) from None
        except ApprovalError as error:
            kind = _APPROVAL_PROBLEMS.get(error.code, "invalid-request")
            raise ApiProblem(kind, str(error), code=error.code) from None
        except UsageError as error:
            raise ApiProblem("invalid-request", str(error)) from None

    @app.post(
        "/v1/intents",
        response_model=ConclusionBody,
        summary="Ask for something in plain words",
        description="The Runtime Agent writes one program against the contract, which runs governed. "
        "Only the conclusion comes back, with the run id to audit it by.",
        responses=_PAUSED | _problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
    )
    async def post_intent(
        request: IntentRequest, principal: Caller, http: Request, idempotency_key: IdempotencyKey = None
    ) -> Response:
        def run(run_id: str | None) -> Reply:
            ended = guarded(
                lambda: service.operate(
                    principal,
                    request.contract,
                    request.intent,
                    run_id=run_id,
                    inputs=request.inputs,
                    secret_inputs=request.secret_inputs or (),
                )
            )
            chain = guarded(lambda: service.chain(ended.run_id)) if ended.approval_id else None
            return conclusion(ended, ended.attempts, chain)

        return await admitted(
            http,
            principal,
            idempotency_key,
            "/v1/intents",
            request,
            lambda: once(principal, idempotency_key, "/v1/intents", request, run),
        )

    @app.post(
        "/v1/programs",
        response_model=ConclusionBody,
        summary="Run a program you wrote (code mode)",
        description="The program runs in the sandbox; every proxy call is checked against the contract.",
        responses=_PAUSED | _problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
    )
    async def post_program(
        request: ProgramRequest, principal: Caller, http: Request, idempotency_key: IdempotencyKey = None
    ) -> Response:
        def run(run_id: str | None) -> Reply:
            return conclusion(
                guarded(
                    lambda: service.execute(
                        principal,
                        request.contract,
                        request.program,
                        run_id=run_id,
                        inputs=request.inputs,
                        secret_inputs=request.secret_inputs or (),
                    )
                )
            )

        return await admitted(
            http,
            principal,
            idempotency_key,
            "/v1/programs",
            request,
            lambda: once(principal, idempotency_key, "/v1/programs", request, run),
        )

    @app.get(
        "/v1/runs",
        response_model=RunListBody,
        summary="Runs you may see, newest first, a page at a time",
        description="Your own runs, or every principal's with the scope audit:read; without it, a `principal` "
        "naming another principal or a `run` prefix search is 403. Filters: contract (NAME or NAME@X.Y.Z), "
        "status, principal, code (the run's first denial's reason code), since <= opened_at < until (ISO-8601, "
        "UTC unless zoned), run (run-id prefix, hex). Pass `next_cursor` as `cursor` for the next page.",
        responses=_problems(401, 403, 422),
    )
    def get_runs(
        principal: Caller,
        contract: Annotated[str | None, Query(max_length=200, description="NAME or NAME@X.Y.Z")] = None,
        status: Annotated[Status | None, Query()] = None,
        principal_filter: Annotated[str | None, Query(alias="principal", max_length=200)] = None,
        code: Annotated[str | None, Query(max_length=64, description="A reason code: STATE_VIOLATION...")] = None,
        since: Annotated[str | None, Query(max_length=40, description="ISO-8601 date or time")] = None,
        until: Annotated[str | None, Query(max_length=40, description="ISO-8601 date or time (excluded)")] = None,
        run: Annotated[str | None, Query(max_length=32, pattern=r"^[0-9a-fA-F]+$", description="Run-id prefix")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=40, description="A page's next_cursor")] = None,
    ) -> dict[str, Any]:
        values = {
            "contract": contract,
            "status": status,
            "principal": principal_filter,
            "code": code,
            "since": since,
            "until": until,
            "run": run,
            "limit": str(limit),
            "cursor": cursor,
        }
        try:
            query = parse_run_query(values)
        except RunQueryError as error:
            location = f"query.{error.parameter}"
            raise ApiProblem(
                "invalid-request", str(error), errors=[{"location": location, "message": str(error)}]
            ) from None
        return page_body(guarded(lambda: service.list_runs(principal, query)))

    @app.get(
        "/v1/runs/{run_id}",
        response_model=RunBody,
        summary="A run's conclusion, receipts and verification",
        description="Your own runs, or any run with the scope audit:read; another principal's run is "
        "answered as missing (404). Without audit:read the view is the conclusion: the fields of the "
        "summary, each call's gate decision and the verification, never the receipts (which hold the "
        "program, the model's response, prompt hashes, host and pid).",
        responses=_problems(401, 404),
    )
    def get_run(run_id: str, principal: Caller) -> dict[str, Any]:
        view: dict[str, Any] = guarded(lambda: service.run_view(principal, run_id))
        if not principal.has(AUDIT_SCOPE):
            view["receipts"] = None
            view["programs"] = None  # they hold the program runs' receipts
        return view

    # Here, between the runs and the contracts: the order the OpenAPI document lists them in.
    add_approval_routes(app, service, guarded, once)

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

    # Outermost but for Starlette's error middleware: the limit holds before authentication,
    # routing and parsing, for every route; the JSON routes are the ones with a body model.
    json_routes = {
        (method, route.path_regex)
        for route in app.routes
        if isinstance(route, APIRoute) and route.body_field is not None
        for method in route.methods or ()
    }
    app.add_middleware(
        BodyGuard,
        max_bytes=MAX_BODY_BYTES,
        json_routes=json_routes,
        refuse=problem_response,
    )
    return app
