"""The HTTP API's approval routes (`_api` registers them from `create_app`):

    GET  /v1/approvals                       approval requests the caller may see (?contract=&status=)
    GET  /v1/approvals/{approval_id}         one request: the call, the rule, what the gate read
    POST /v1/approvals/{approval_id}/approve a decision, with {"reason": ...} (four eyes: never the
    POST /v1/approvals/{approval_id}/deny    requester; the approver scope); the run then resumes

A decision is a POST like any other: once per Idempotency-Key (`once`), and Charter's errors as
problems (`guarded`), the approvals' reason codes among them (APPROVAL_NOT_FOUND, SELF_APPROVAL...).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from fastapi import FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from charter.principal import Principal
from charter.server._api import Caller, IdempotencyKey, Reply, _problems, _Request
from charter.server._service import CharterService

__all__ = ["ApprovalBody", "DecideRequest", "add_approval_routes"]

_HEX_ID = re.compile(r"[0-9a-f]{32}")  # an approval id, as secrets.token_hex(16) makes it


class DecideRequest(_Request):
    reason: str = Field(min_length=1, max_length=2000, description="Why: recorded, signed, in the decision's receipt.")


class ApprovalBody(BaseModel):
    """charter.approvals.ApprovalView: one approval request and its decision."""

    model_config = ConfigDict(extra="allow")

    approval_id: str
    status: str = Field(
        description="pending, approved, denied, expired (pending past its expiry) or tampered (the signed "
        "receipts do not verify, or the derived index disagrees with them: see `findings`)."
    )
    run_id: str = Field(description="The paused program run.")
    logical_run_id: str | None = None
    contract: str | None = None
    version: str | None = None
    contract_sha256: str | None = None
    operation: str | None = None
    call: int | None = None
    line: int | None = Field(default=None, description="The program line of the call, as the guest reported it.")
    arguments: str | None = Field(default=None, description="Canonical JSON; secret values masked.")
    args_sha256: str | None = None
    principal: str | None = Field(default=None, description="The requesting principal.")
    reason: str | None = Field(default=None, description="The approval rule's reason.")
    clause: str | None = None
    boundary: str | None = None
    approver_scope: str | None = None
    requested_at: str | None = None
    expires: str | None = None
    program: str | None = None
    observed: Any = None
    lookups: Any = None
    provenance: Any = None
    quotas: Any = None
    decision: str | None = None
    decided_by: str | None = None
    decided_at: str | None = None
    decision_reason: str | None = None
    expired_unanswered: bool | None = None
    decision_link: str | None = None
    resume_run: str | None = None
    resume_status: str | None = None
    already_decided: bool | None = Field(
        default=None,
        description="On a decision's answer: True when this approver had already given this decision (nothing "
        "new was written; `decision_reason` is the first one's, and `note` says so).",
    )
    note: str | None = None
    verified: bool = Field(default=True, description="False: the signed receipts do not vouch for this view.")
    findings: list[str] = Field(default_factory=list, description="Why it is not verified, one sentence each.")


def add_approval_routes(
    app: FastAPI,
    service: CharterService,
    guarded: Callable[[Callable[[], Any]], Any],
    once: Callable[[Principal, str | None, str, BaseModel, Callable[[str | None], Reply]], Response],
) -> None:
    """Add the /v1/approvals routes to `app`. `guarded` runs an action with Charter's errors as
    problems; `once` runs a POST once per Idempotency-Key (both `create_app`'s)."""

    @app.get(
        "/v1/approvals",
        response_model=list[ApprovalBody],
        summary="Approval requests you may see, newest first",
        description="Your own requests, those your scopes may decide (the request's approver scope), or all "
        "with audit:read. Filter by contract name and status (pending, approved, denied, expired).",
        responses=_problems(401, 422),
    )
    def get_approvals(
        principal: Caller,
        contract: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
        status: Annotated[Literal["pending", "approved", "denied", "expired", "tampered"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        views = guarded(lambda: service.list_approvals(principal, contract=contract, status=status, limit=limit))
        return [msgspec.to_builtins(v) for v in views]

    @app.get(
        "/v1/approvals/{approval_id}",
        response_model=ApprovalBody,
        summary="One approval request: the call, the rule and reason, what the gate read, the decision",
        description="A request you may not see is answered as missing (404 APPROVAL_NOT_FOUND).",
        responses=_problems(401, 404),
    )
    def get_approval(approval_id: str, principal: Caller) -> dict[str, Any]:
        return msgspec.to_builtins(guarded(lambda: service.approval(principal, approval_id)))  # type: ignore[no-any-return]

    def decide(
        principal: Principal,
        approval_id: str,
        decision: Literal["approved", "denied"],
        request: DecideRequest,
        key: str | None,
    ) -> Response:
        verb = "approve" if decision == "approved" else "deny"

        def run(_: str | None) -> Reply:
            view, written = guarded(lambda: service.decide(principal, approval_id, decision, request.reason))
            return Reply(200, service.decision_answer(view, written, request.reason))

        if not _HEX_ID.fullmatch(approval_id):  # before the key is claimed: nothing to store for it
            guarded(lambda: service.approval(principal, approval_id))
        return once(principal, key, f"/v1/approvals/{approval_id}/{verb}", request, run)

    _decision_doc = (
        "Four eyes: the requesting principal (or a look-alike id) may not decide (403 SELF_APPROVAL); the "
        "approver needs the request's approver scope (403 FORBIDDEN_SCOPE). The same decision again answers "
        "the view marked `already_decided` (its recorded reason kept, a `note` says so); another decision is 409 "
        "ALREADY_DECIDED; an expired request can only be denied (409 APPROVAL_EXPIRED). The run resumes on the "
        "server's worker: follow it at GET /v1/runs/{run_id}."
    )

    @app.post(
        "/v1/approvals/{approval_id}/approve",
        response_model=ApprovalBody,
        summary="Approve a request; its run resumes",
        description=_decision_doc,
        responses=_problems(400, 401, 403, 404, 409, 413, 415, 422),
    )
    def post_approve(
        approval_id: str, request: DecideRequest, principal: Caller, idempotency_key: IdempotencyKey = None
    ) -> Response:
        return decide(principal, approval_id, "approved", request, idempotency_key)

    @app.post(
        "/v1/approvals/{approval_id}/deny",
        response_model=ApprovalBody,
        summary="Deny a request; its run resumes with the call refused APPROVAL_DENIED",
        description=_decision_doc,
        responses=_problems(400, 401, 403, 404, 409, 413, 415, 422),
    )
    def post_deny(
        approval_id: str, request: DecideRequest, principal: Caller, idempotency_key: IdempotencyKey = None
    ) -> Response:
        return decide(principal, approval_id, "denied", request, idempotency_key)
