"""The review app's Runs page (being built)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from charter.ui._app import SignedIn, UiContext

__all__ = ["add_routes"]


def add_routes(router: APIRouter, ui: UiContext) -> None:
    @router.get("/runs")
    def page(request: Request, viewer: SignedIn) -> HTMLResponse:
        return ui.render(request, "placeholder.html", viewer, heading="Runs")
