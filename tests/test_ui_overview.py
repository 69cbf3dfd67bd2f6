"""The review app's Overview page over HTTP (httpx against a real loopback server): runs per
day (a server-drawn SVG chart) and per contract, which rules fire most, runs never sealed and
approvals waiting, each over the runs the viewer may see."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from charter.audit import AuditLog
from charter.registry import Registry
from charter.server import IdempotencyStore, TokenStore, create_app, serving
from charter.server._runs_query import Count
from charter.server._service import CharterService
from charter.ui import SessionStore, mount_ui
from charter.ui._overview import chart
from tests.conftest import ROOT, charter
from tests.runs_review import Review, review

__all__ = ["review"]  # the fixture


def overview(client: httpx.Client) -> str:
    response = client.get("/ui/overview")
    assert response.status_code == 200, response.text
    return response.text


def section(html: str, name: str) -> str:
    start = html.index(f'<section class="{name}">')
    return html[start : html.index("</section>", start)]


def test_an_auditor_sees_every_principals_runs_counted(review: Review) -> None:
    today = datetime.now(UTC).date().isoformat()
    with review.browser("auditor") as client:
        html = overview(client)
    chart_svg = section(html, "per-day")
    assert f"<title>{today}: 3 done</title>" in chart_svg  # done, the intent, the xss run
    assert f"<title>{today}: 2 refused</title>" in chart_svg  # ada's boundary, bob's scope
    assert chart_svg.count("<title>") == 2  # one segment per status with runs; no other day had any
    assert 'aria-label="Runs per day: ' + today + ' 5"' in chart_svg
    contracts = section(html, "per-contract")
    assert re.search(r'<a href="/ui/runs\?contract=orders">orders</a></td><td>5</td>', contracts)
    codes = section(html, "codes")
    assert '<a class="code" href="/ui/runs?code=STATE_VIOLATION">STATE_VIOLATION</a></td><td>1</td><td>1</td>' in codes
    assert '<a class="code" href="/ui/runs?code=FORBIDDEN_SCOPE">FORBIDDEN_SCOPE</a></td><td>1</td><td>1</td>' in codes
    boundaries = section(html, "boundaries")
    assert "<code>no_cancel_after_picking</code>" in boundaries
    assert 'href="/ui/runs?code=STATE_VIOLATION"' in boundaries
    assert "FORBIDDEN_SCOPE" not in boundaries  # a missing scope enforces no boundary
    assert '<strong class="n approvals-waiting">0</strong>' in html
    assert '<a class="tile" href="/ui/approvals?status=pending">' in html
    assert '<strong class="n never-sealed">0</strong>' in html
    assert "style=" not in html


def test_a_viewer_without_audit_read_sees_only_its_own_runs_counted(review: Review) -> None:
    with review.browser("bob") as client:
        html = overview(client)
    assert "STATE_VIOLATION" not in html  # ada's denial
    assert "no_cancel_after_picking" not in html
    assert 'href="/ui/runs?code=FORBIDDEN_SCOPE"' in section(html, "codes")
    assert re.search(r'<a href="/ui/runs\?contract=orders">orders</a></td><td>1</td>', html)
    assert "refused" in section(html, "per-day")
    assert " done</title>" not in section(html, "per-day")


def test_a_reason_code_on_the_overview_links_to_the_runs_it_refused(review: Review) -> None:
    with review.browser("auditor") as client:
        html = overview(client)
        [link] = re.findall(r'<a class="code" href="(/ui/runs\?code=STATE_VIOLATION)">', section(html, "codes"))
        runs = client.get(link)
    assert runs.status_code == 200
    assert re.findall(r'<tr class="run run-\w+">\s*<td>.*?</td>\s*<td><a href="/ui/runs/(\w+)"', runs.text, re.S) == [
        review.runs["boundary"]
    ]
    assert 'name="code" value="STATE_VIOLATION"' in runs.text


def test_the_chart_scales_each_days_bar_to_the_busiest_day() -> None:
    days = [
        Count("2026-01-01", 4, {"done": 3, "refused": 1}),
        Count("2026-01-02", 0),
        Count("2026-01-03", 2, {"failed": 2}),
    ]
    drawn = chart(days)
    heights = {(b.label, b.height) for b in drawn.bars}
    assert heights == {("2026-01-01: 3 done", 90.0), ("2026-01-01: 1 refused", 30.0), ("2026-01-03: 2 failed", 60.0)}
    first = sorted((b for b in drawn.bars if b.label.startswith("2026-01-01")), key=lambda b: b.y)
    assert [b.status for b in first] == ["refused", "done"]  # done at the bottom, stacked
    assert first[1].y + first[1].height == 120.0
    assert [label for _, label in drawn.ticks] == ["01-01", "01-03"]
    assert chart([Count("2026-01-01", 0)]).bars == []  # no runs: no bars, no division by zero


@contextmanager
def upgraded_release_0_1(home: Path) -> Iterator[tuple[str, str]]:
    fixture = ROOT / "tests" / "data" / "release_0_1"
    shutil.copytree(fixture, home, ignore=shutil.ignore_patterns("*-shm", "*-wal", "_make.py"), dirs_exist_ok=True)
    assert charter("db", "upgrade", "--home", str(home)).returncode == 0
    service = CharterService.create(registry=Registry(), audit=AuditLog(home / "audit.db"), agent=None)
    tokens = TokenStore(home / "tokens.yaml")
    token = tokens.add("reviewer", "reviewer", ["audit:read", "ui"])
    app = create_app(service, tokens, IdempotencyStore(home / "idempotency.db"))
    mount_ui(app, service, SessionStore(home / "ui-sessions.db"), secure=False)
    with serving(app, name="charter-review-0-1") as url:
        yield url, token


def test_a_run_never_sealed_in_a_log_of_release_0_1_is_listed_and_linked(charter_home: Path) -> None:
    import json

    killed = next(
        r["run_id"]
        for r in json.loads((ROOT / "tests/data/release_0_1/manifest.json").read_text())["runs"]
        if r["label"] == "killed"
    )
    with (
        upgraded_release_0_1(charter_home) as (url, token),
        httpx.Client(base_url=url, headers={"Origin": url}) as client,
    ):
        assert client.post("/ui/sign-in", data={"token": token}).status_code == 303
        html = overview(client)
        unsealed = section(html, "unsealed")
        assert f'<a href="/ui/runs/{killed}">' in unsealed
        assert '<strong class="n never-sealed">1</strong>' in html
        listed = client.get("/ui/runs?status=interrupted").text
        assert re.findall(r'<td><a href="/ui/runs/(\w+)"', listed) == [killed]
