"""The review app's Approvals pages: the queue a viewer may see, one request (the program with
its waiting line, the arguments, the rule and its reason, what the gate read), and approve /
deny with a reason.

    GET  /ui/approvals?status=&contract=           the requests the viewer may see, newest first
    GET  /ui/approvals/{approval_id}               one request and its decision
    POST /ui/approvals/{approval_id}/approve       a decision with a required `reason` (CSRF-checked
    POST /ui/approvals/{approval_id}/deny          form); then 303 to the request's page

Who sees and decides what is the service's (`CharterService.list_approvals`, `approval`,
`decide`), as for the HTTP API: the requester sees its own requests, a holder of the request's
approver scope or of audit:read sees it, another's is answered like a missing one (404). Four
eyes and the approver scope are enforced by the approval store: a refused decision (SELF_APPROVAL,
FORBIDDEN_SCOPE, ALREADY_DECIDED, APPROVAL_EXPIRED, TAMPERED, an empty reason) re-renders the
request with the refusal, its reason code and a 4xx status; nothing is decided.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from charter.approvals import ApprovalError, ApprovalNotFound, ApprovalView
from charter.errors import AuditError, UsageError
from charter.principal import same_principal
from charter.ui._app import SignedIn, UiContext, UiError, Viewer, query_values
from charter.ui._code import highlighted_lines

__all__ = ["STATUSES", "add_routes"]

STATUSES = ("pending", "approved", "denied", "expired", "tampered")
_LIMIT = 200  # requests listed per page; the queue is newest first
# A refused decision's HTTP status, by the approval store's reason code.
_REFUSED = {"SELF_APPROVAL": 403, "FORBIDDEN_SCOPE": 403, "ALREADY_DECIDED": 409, "APPROVAL_EXPIRED": 409}
_DONE = {
    "recorded": "Your decision was recorded.",
    "already": "You had already given this decision: nothing new was written.",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a decision was not recorded, as the page shows it."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class QuotaLine:
    id: str
    window: str
    amount: str
    total: str
    max: str


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def _quotas(view: ApprovalView) -> list[QuotaLine]:
    """Each quota the gate checked, money shown in units (receipts keep integer cents)."""
    lines = []
    for quota in view.quotas:
        show = _money if quota.money else str
        lines.append(QuotaLine(quota.id, quota.window, show(quota.amount), show(quota.total), show(quota.max)))
    return lines


def _pretty(canonical: str | None) -> str | None:
    """Canonical JSON arguments, indented for reading (as recorded if they do not parse)."""
    if canonical is None:
        return None
    try:
        return json.dumps(json.loads(canonical), indent=2, ensure_ascii=False)
    except ValueError:
        return canonical


def _line_mark(view: ApprovalView) -> Literal["waiting", "called", "denied"]:
    if view.decision == "approved":
        return "called"
    if view.decision == "denied":
        return "denied"
    return "waiting"


def _request(ui: UiContext, viewer: Viewer, approval_id: str) -> ApprovalView:
    try:
        return ui.service.approval(viewer.principal, approval_id)
    except ApprovalNotFound:
        raise UiError(
            404,
            "No such approval request",
            f"No approval request {approval_id[:64]!r} that you may see: requests are listed at /ui/approvals "
            "(yours, those your scopes may decide, or all with audit:read).",
        ) from None


def _page(
    ui: UiContext,
    request: Request,
    viewer: Viewer,
    view: ApprovalView,
    *,
    status: int = 200,
    refusal: Refusal | None = None,
    done: str = "",
    posted: tuple[str, str] = ("", ""),
) -> HTMLResponse:
    lines = highlighted_lines(view.program) if view.program else []
    marks = {view.line: _line_mark(view)} if view.line is not None and 0 < view.line <= len(lines) else {}
    requester = same_principal(viewer.principal.id, view.principal)
    holds_scope = viewer.principal.has(view.approver_scope)
    return ui.render(
        request,
        "approval.html",
        viewer,
        status=status,
        view=view,
        lines=lines,
        marks=marks,
        arguments=_pretty(view.arguments),
        quotas=_quotas(view),
        rule=ui.service.approval_rule(view),
        requester=requester,
        holds_scope=holds_scope,
        open_for_decision=view.verified and view.decision is None,
        # Links only to runs the viewer may open (the run page's rule, server._run_review.run_access):
        # its own and, for an auditor, any; an approver, the paused run while the request is pending.
        runs_open=viewer.auditor or requester,
        paused_open=viewer.auditor
        or requester
        or (view.decision is None and viewer.principal.has(view.approver_scope)),
        refusal=refusal,
        done=_DONE.get(done, ""),
        posted_verb=posted[0],
        posted_reason=posted[1],
    )


def add_routes(router: APIRouter, ui: UiContext) -> None:
    @router.get("/approvals")
    def queue(request: Request, viewer: SignedIn) -> HTMLResponse:
        chosen = query_values(request, {"status": 16, "contract": 200})
        status, contract = chosen.get("status"), chosen.get("contract")
        if status is not None and status not in STATUSES:
            raise UiError(
                400,
                "Unknown status",
                f"status {status[:16]!r} is not an approval status: use one of {', '.join(STATUSES)} (or none for all)",
            )
        views = ui.service.list_approvals(viewer.principal, contract=contract, status=status, limit=_LIMIT)
        # Which of them the viewer could decide now (a hint; the server decides who may).
        mine = {
            v.approval_id
            for v in views
            if v.status == "pending"
            and viewer.principal.has(v.approver_scope)
            and not same_principal(viewer.principal.id, v.principal)
        }
        return ui.render(
            request,
            "approvals.html",
            viewer,
            views=views,
            mine=mine,
            statuses=STATUSES,
            chosen_status=status or "",
            contract=contract or "",
            contracts=ui.service.registry.names(),
            limit=_LIMIT,
        )

    @router.get("/approvals/{approval_id}")
    def one(request: Request, viewer: SignedIn, approval_id: str) -> HTMLResponse:
        done = request.query_params.get("done", "")
        return _page(ui, request, viewer, _request(ui, viewer, approval_id), done=done)

    async def decide(request: Request, viewer: Viewer, approval_id: str, verb: str) -> Response:
        fields = await ui.form(request, viewer)  # CSRF first: a forged form learns nothing
        reason = fields.get("reason", "")
        decision: Literal["approved", "denied"] = "approved" if verb == "approve" else "denied"
        try:
            _, written = await run_in_threadpool(ui.service.decide, viewer.principal, approval_id, decision, reason)
        except ApprovalNotFound:
            await run_in_threadpool(_request, ui, viewer, approval_id)  # raises the 404 page
            raise
        except ApprovalError as error:
            refusal, status = Refusal(error.code, str(error)), _REFUSED.get(error.code, 409)
        except UsageError as error:
            refusal, status = Refusal("INVALID_DECISION", str(error)), 422
        except AuditError as error:
            raise UiError(503, "The decision could not be recorded", f"{error}; nothing was decided") from None
        else:
            done = "recorded" if written else "already"
            return RedirectResponse(f"/ui/approvals/{approval_id}?done={done}", status_code=303)
        view = await run_in_threadpool(_request, ui, viewer, approval_id)  # as it is now: nothing changed
        return _page(ui, request, viewer, view, status=status, refusal=refusal, posted=(verb, reason))

    @router.post("/approvals/{approval_id}/approve", response_model=None)
    async def approve(request: Request, viewer: SignedIn, approval_id: str) -> Response:
        return await decide(request, viewer, approval_id, "approve")

    @router.post("/approvals/{approval_id}/deny", response_model=None)
    async def deny(request: Request, viewer: SignedIn, approval_id: str) -> Response:
        return await decide(request, viewer, approval_id, "deny")
