"""The review app's run page: one run verified as it is shown, its program beside the timeline
of its calls, its attempts and approval chain; replay and bundle export for auditors.

    GET  /ui/runs/{run_id}          the page (a whole 32-hex id; anything else is a 404 page)
    POST /ui/runs/{run_id}/replay   replay it (audit:read; CSRF-checked; under the server's
                                    admission control: no free run slot -> 503 with Retry-After)
    GET  /ui/runs/{run_id}/bundle   its bundle, as `charter audit export` writes it (audit:read)

What a viewer may see is `CharterService.run_review`'s decision (charter.server._run_review).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from charter.audit import Attempted
from charter.errors import AuditError, RunNotFound, UsageError
from charter.replay import ReplayReport
from charter.server._run_review import RunReview
from charter.server._service import Forbidden
from charter.ui._app import SignedIn, UiContext, UiError, Viewer
from charter.ui._code import highlighted_lines

__all__ = ["add_routes"]


def add_routes(router: APIRouter, ui: UiContext) -> None:
    @router.get("/runs/{run_id}")
    def page(request: Request, viewer: SignedIn, run_id: str) -> HTMLResponse:
        return _page(ui, request, viewer, _review(ui, viewer, run_id), None)

    @router.post("/runs/{run_id}/replay")
    async def replay(request: Request, viewer: SignedIn, run_id: str) -> Response:
        await ui.form(request, viewer)  # CSRF first: a forged form learns nothing else
        if not viewer.auditor:
            raise UiError(403, "Not allowed", "Replaying a run needs the audit:read scope.")
        if not ui.slots.take():
            seconds = ui.slots.retry_after()
            message = ui.slots.refusal(f"try the replay again in {seconds} s")
            response = ui.render(request, "error.html", viewer, status=503, title="Server busy", message=message)
            response.headers["Retry-After"] = str(seconds)
            return response
        started = time.monotonic()
        try:
            reports, problem = await run_in_threadpool(_replay, ui, viewer, run_id)
        finally:
            ui.slots.release(time.monotonic() - started)
        if request.headers.get("HX-Request"):
            return ui.render(request, "run_replay.html", viewer, run_id=run_id, reports=reports, problem=problem)
        review = await run_in_threadpool(_review, ui, viewer, run_id)
        return _page(ui, request, viewer, review, (reports, problem))

    @router.get("/runs/{run_id}/bundle")
    def bundle(viewer: SignedIn, run_id: str) -> Response:
        if not viewer.auditor:
            raise UiError(403, "Not allowed", "Exporting a run's bundle needs the audit:read scope.")
        try:
            text = ui.service.run_bundle(viewer.principal, run_id)
        except RunNotFound as error:
            raise UiError(404, "No such run", str(error)) from None
        return Response(
            text,
            media_type="application/jsonl; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="run-{run_id}.jsonl"'},
        )


def _review(ui: UiContext, viewer: Viewer, run_id: str) -> RunReview:
    try:
        return ui.service.run_review(viewer.principal, run_id)
    except RunNotFound as error:
        raise UiError(404, "No such run", f"{error}. The runs page lists the runs you may read.") from None
    except AuditError as error:
        raise UiError(409, "VERIFICATION FAILED", str(error)) from None


def _replay(ui: UiContext, viewer: Viewer, run_id: str) -> tuple[list[ReplayReport], str | None]:
    """The replay's reports, or why there are none (said on the page, not as an error page:
    the run is still shown)."""
    try:
        return ui.service.replay(viewer.principal, run_id), None
    except Forbidden as error:
        raise UiError(403, "Not allowed", str(error)) from None
    except RunNotFound as error:
        raise UiError(404, "No such run", str(error)) from None
    except UsageError as error:
        return [], str(error)


def _page(
    ui: UiContext,
    request: Request,
    viewer: Viewer,
    review: RunReview,
    replayed: tuple[list[ReplayReport], str | None] | None,
) -> HTMLResponse:
    attempt_lines = {}
    if review.detailed:  # an attempt's program is shown to auditors, as a run's program is
        for attempt in review.attempts:
            receipt = attempt.entry.receipt
            if isinstance(receipt, Attempted) and receipt.program is not None and attempt.entry.verified:
                attempt_lines[attempt.entry.log_seq] = highlighted_lines(receipt.program)
    reports, problem = replayed if replayed is not None else ([], None)
    return ui.render(
        request,
        "run.html",
        viewer,
        review=review,
        lines=highlighted_lines(review.program) if review.program is not None else [],
        attempts={a.entry.log_seq: a for a in review.attempts},
        attempt_lines=attempt_lines,
        replayed=replayed is not None,
        reports=reports,
        problem=problem,
    )
