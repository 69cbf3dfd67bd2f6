"""The review app's Runs page: GET /ui/runs, the runs the viewer may see, newest first.

The filters are a plain GET form (contract, status, reason code, since/until days; principal
and run-id prefix for auditors, whose API twin is GET /v1/runs: the same
`CharterService.list_runs`). An intent run's row expands (a <details>, no script) to its
attempts' program runs. "Older runs" links the next page by its cursor; htmx, when present,
loads that page's rows in place (`runs_rows.html`, the fragment an HX-Request gets).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from charter.server._runs_query import RunQueryError, parse_run_query
from charter.server._service import Forbidden
from charter.status import STATUSES
from charter.ui._app import SignedIn, UiContext, Viewer, query_values

__all__ = ["add_routes"]

# The form's fields and the longest value each takes (longer: a 400 page naming the field).
FIELDS = {
    "contract": 120,
    "status": 40,
    "principal": 200,
    "code": 64,
    "since": 10,
    "until": 10,
    "run": 32,
    "cursor": 40,
    "limit": 3,  # rows a page (default 50): kept in the links to older pages
}
_AUDITORS_ONLY = ("principal", "run")


def add_routes(router: APIRouter, ui: UiContext) -> None:
    @router.get("/runs")
    def page(request: Request, viewer: SignedIn) -> HTMLResponse:
        values = query_values(request, FIELDS)
        shown = {name: value for name, value in values.items() if name != "cursor"}
        base: dict[str, Any] = {"filters": shown, "contracts": _contract_choices(ui), "statuses": STATUSES}
        try:
            query = parse_run_query(values, dates_only=True)
            page = ui.service.list_runs(viewer.principal, query)
        except RunQueryError as error:
            message = f"The filter {error.parameter!r} is not valid: {error}. Correct it in the form and search again."
            return _render(ui, request, viewer, base, status=400, problem=message, field=error.parameter)
        except Forbidden as error:
            return _render(ui, request, viewer, base, status=403, problem=f"Not allowed: {error}.", field="")
        older = None
        if page.next_cursor is not None:
            older = "/ui/runs?" + urllib.parse.urlencode({**shown, "cursor": page.next_cursor})
        values_page: dict[str, Any] = {**base, "page": page, "older": older, "paged": "cursor" in values}
        if request.headers.get("HX-Request"):
            return ui.render(request, "runs_rows.html", viewer, **values_page)
        return _render(ui, request, viewer, values_page, problem="", field="")


def _render(
    ui: UiContext, request: Request, viewer: Viewer, values: dict[str, Any], *, status: int = 200, **more: Any
) -> HTMLResponse:
    values = {"page": None, "older": None, "paged": False} | values
    return ui.render(request, "runs.html", viewer, status=status, **values, **more)


def _contract_choices(ui: UiContext) -> list[tuple[str, str]]:
    """(value, label) of the contract select: each contract (any version), then each version."""
    choices = []
    for listing in ui.service.contract_list():
        choices.append((listing["name"], f"{listing['name']} (any version)"))
        choices.extend(
            (f"{listing['name']}@{v['version']}", f"{listing['name']}@{v['version']}") for v in listing["versions"]
        )
    return choices
