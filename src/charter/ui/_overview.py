"""The review app's Overview page: GET /ui/overview.

Runs per day over the last two weeks by status (an SVG bar chart drawn here, on the server:
attributes and CSS classes only, no script, no inline style), runs per contract, which
rules fire most (denials by reason code and by hard boundary, each linking to the runs
filtered by that code), runs never sealed, and approval requests waiting. Everything from
`CharterService.overview`, over the runs the viewer may see (all with audit:read, else its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from charter.server._runs_query import Count
from charter.status import STATUSES
from charter.ui._app import SignedIn, UiContext

__all__ = ["add_routes"]

# The chart's drawing area, in SVG user units (the SVG scales to its box: width 100%).
_BAR, _GAP, _HEIGHT, _AXIS = 28, 12, 120, 18
_ORDER = ("done", "refused", "failed", "awaiting_approval", "in_doubt", "interrupted")  # bottom to top


@dataclass(frozen=True, slots=True)
class Bar:
    """One status's part of one day's bar."""

    x: int
    y: float
    width: int
    height: float
    status: str
    label: str  # the tooltip: day, status, count


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (x of the label's middle, MM-DD) under every other day
    peak: int
    summary: str  # the chart in words, for screen readers


def chart(days: list[Count]) -> Chart:
    """Stacked bars, one per day, a segment per status with runs that day."""
    peak = max((d.total for d in days), default=0)
    scale = _HEIGHT / peak if peak else 0.0
    bars, ticks = [], []
    for index, day in enumerate(days):
        x = _GAP // 2 + index * (_BAR + _GAP)
        top = float(_HEIGHT)
        for status in sorted(day.by, key=lambda s: _ORDER.index(s) if s in _ORDER else len(_ORDER)):
            height = day.by[status] * scale
            top -= height
            bars.append(Bar(x, round(top, 2), _BAR, round(height, 2), status, f"{day.name}: {day.by[status]} {status}"))
        if (len(days) - 1 - index) % 2 == 0:  # every other day, ending with today
            ticks.append((x + _BAR / 2, day.name[5:]))
    words = ", ".join(f"{d.name} {d.total}" for d in days if d.total) or "no runs"
    return Chart(len(days) * (_BAR + _GAP), _HEIGHT + _AXIS, bars, ticks, peak, f"Runs per day: {words}")


def add_routes(router: APIRouter, ui: UiContext) -> None:
    @router.get("/overview")
    def page(request: Request, viewer: SignedIn) -> HTMLResponse:
        view = ui.service.overview(viewer.principal)
        legend = [s for s in STATUSES if any(s in d.by for d in view.days)]
        return ui.render(request, "overview.html", viewer, view=view, chart=chart(view.days), legend=legend)
