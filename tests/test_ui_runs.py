"""The review app's Runs page over HTTP (httpx against a real loopback server): what each
viewer sees, the filters, intent rows expanding to their attempts, older pages by cursor,
bad filters as clear 4xx pages, and every value from a run escaped."""

from __future__ import annotations

import re
import urllib.parse

import httpx

from tests.runs_review import Review, review

__all__ = ["review"]  # the fixture


def page(client: httpx.Client, query: str = "", status: int = 200, **headers: str) -> str:
    response = client.get(f"/ui/runs{query}", headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def linked(html: str) -> list[str]:
    """The run ids linked from the table's rows, in order (attempts inside <details> included)."""
    return re.findall(r'href="/ui/runs/([0-9a-f]{32})"', html)


def rows(html: str) -> list[str]:
    """Run ids of the table's top-level rows, in order."""
    return re.findall(r'<tr class="run run-\w+">\s*<td>.*?</td>\s*<td><a href="/ui/runs/([0-9a-f]{32})"', html, re.S)


def test_an_auditor_sees_every_run_newest_first_with_its_first_denial(review: Review) -> None:
    runs = review.runs
    with review.browser("auditor") as client:
        html = page(client)
    assert rows(html) == [runs["xss"], runs["intent"], runs["bob_scope"], runs["boundary"], runs["done"]]
    assert '<a class="code" href="/ui/runs?code=STATE_VIOLATION">STATE_VIOLATION</a>' in html
    assert '<span class="status status-refused">refused</span>' in html
    assert 'name="principal"' in html  # auditors filter by principal and search by run-id prefix
    assert 'name="run"' in html
    assert "Older runs" not in html


def test_every_value_from_a_run_is_escaped(review: Review) -> None:
    with review.browser("auditor") as client:
        html = page(client)
    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="javascript:' not in html


def test_an_intent_row_expands_to_its_attempts_program_runs(review: Review) -> None:
    intent = review.runs["intent"]
    [attempt] = [r.run_id for r in review.log.list_runs() if r.parent == intent]
    with review.browser("auditor") as client:
        html = page(client)
    assert attempt not in rows(html)  # not a row of its own
    row = html[html.index(f'href="/ui/runs/{intent}"') :]
    details = row[row.index('<details class="attempts">') : row.index("</details>")]
    assert "<summary>1 attempt</summary>" in details
    assert f'href="/ui/runs/{attempt}"' in details


def test_without_audit_read_a_viewer_sees_only_its_own_runs(review: Review) -> None:
    with review.browser("bob") as client:
        html = page(client)
        assert set(linked(html)) == {review.runs["bob_scope"]}
        assert 'name="principal"' not in html
        assert 'name="run"' not in html
        refused = page(client, "?principal=ada", status=403)
        assert "only your own runs" in refused
        assert review.runs["boundary"] not in refused
        prefix = page(client, f"?run={review.runs['boundary'][:4]}", status=403)
        assert review.runs["boundary"] not in prefix


def test_filter_by_reason_code_status_contract_and_days(review: Review) -> None:
    runs = review.runs
    today = review.log.list_runs()[0].opened_at[:10]
    version = review.service.contract("orders").version
    with review.browser("auditor") as client:
        assert rows(page(client, "?code=FORBIDDEN_SCOPE")) == [runs["bob_scope"]]
        assert rows(page(client, "?status=refused")) == [runs["bob_scope"], runs["boundary"]]
        assert rows(page(client, "?principal=bob")) == [runs["bob_scope"]]
        html = page(client, f"?contract=orders%40{version}&since={today}&until={today}")
        assert len(rows(html)) == 5  # `until` includes its day
        assert f'<option value="orders@{version}" selected>' in html
        assert "No runs match these filters." in page(client, "?contract=orders%4099.0.0")
        assert rows(page(client, f"?run={runs['done'][:7]}")) == [runs["done"]]


def test_a_bad_filter_is_a_400_page_naming_the_field_and_keeping_the_form(review: Review) -> None:
    with review.browser("auditor") as client:
        html = page(client, "?since=31-12-2026&code=STATE_VIOLATION", status=400)
        assert "The filter &#39;since&#39; is not valid" in html
        assert 'name="since" value="31-12-2026" aria-invalid="true"' in html
        assert 'value="STATE_VIOLATION"' in html  # the other filters are kept
        hostile = page(client, "?code=" + urllib.parse.quote('"><script>alert(1)</script>'), status=400)
        assert "<script>alert(1)" not in hostile
        assert "&lt;script&gt;" in hostile
        assert "The filter &#39;code&#39; is not valid" in hostile
        too_long = client.get("/ui/runs", params={"code": "A" * 65})
        assert too_long.status_code == 400
        assert "code is longer than 64 characters" in too_long.text


def test_older_runs_follow_the_cursor_and_htmx_gets_only_the_rows(review: Review) -> None:
    runs = review.runs
    with review.browser("auditor") as client:
        first = page(client, "?status=refused&limit=1")
        assert rows(first) == [runs["bob_scope"]]
        [older] = re.findall(r'<a href="(/ui/runs\?[^"]*)" hx-get="[^"]*" hx-target="closest tr"', first)
        older = older.replace("&amp;", "&")
        assert "status=refused" in older
        assert "limit=1" in older
        second = page(client, older[len("/ui/runs") :])
        assert rows(second) == [runs["boundary"]]
        assert "Back to the newest" in second
        fragment = page(client, older[len("/ui/runs") :], **{"HX-Request": "true"})
        assert rows(fragment) == [runs["boundary"]]
        assert "<html" not in fragment
        assert "<form" not in fragment
        last = page(client, "?status=refused&limit=2")
        assert "Older runs" not in last
        assert page(client, "?cursor=forged", status=400).count("cursor") >= 1


def test_signed_out_the_page_sends_you_to_sign_in(review: Review) -> None:
    response = httpx.get(f"{review.url}/ui/runs")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/sign-in"
