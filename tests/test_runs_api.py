"""GET /v1/runs: the runs index over HTTP, newest first, a page at a time, with the same
visibility rules as GET /v1/runs/{id}; and the index's denials table (schema step 6)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.runs_review import XSS_INTENT, Review, review

__all__ = ["review"]  # the fixture


def listed(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/runs", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [run["run_id"] for run in body["runs"]]


def problem(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:charter:problem:{kind}"
    return str(body["detail"])


def test_an_auditor_lists_every_top_level_run_newest_first_with_its_first_denial(review: Review) -> None:
    with review.api("auditor") as client:
        body = listed(client)
    runs = review.runs
    assert ids(body) == [runs["xss"], runs["intent"], runs["bob_scope"], runs["boundary"], runs["done"]]
    assert body["next_cursor"] is None
    by_id = {run["run_id"]: run for run in body["runs"]}
    boundary = by_id[runs["boundary"]]
    assert (boundary["status"], boundary["denial_code"], boundary["denial_operation"]) == (
        "refused",
        "STATE_VIOLATION",
        "cancel_order",
    )
    assert by_id[runs["bob_scope"]]["principal"] == "bob"
    assert by_id[runs["xss"]]["intent"] == XSS_INTENT  # JSON carries the text as it is
    assert "cursor" not in boundary  # the internal keyset position is not part of a row


def test_an_intent_run_carries_its_attempts_which_are_not_rows_of_their_own(review: Review) -> None:
    intent = review.runs["intent"]
    attempts = [a.run_id for a in review.log.list_runs() if a.parent == intent]
    assert len(attempts) == 1
    with review.api("auditor") as client:
        body = listed(client)
        [row] = [run for run in body["runs"] if run["run_id"] == intent]
        assert row["kind"] == "intent"
        assert [a["run_id"] for a in row["attempts"]] == attempts
        assert row["attempts"][0]["parent"] == intent
        assert attempts[0] not in ids(body)
        assert all(run["attempts"] is None for run in body["runs"] if run["kind"] == "program")
        # a run-id prefix search finds an attempt too: it names one run, wherever it is
        assert ids(listed(client, run=attempts[0][:10])) == [attempts[0]]


def test_pages_follow_the_cursor_to_the_end_without_gaps_or_repeats(review: Review) -> None:
    for n in range(4):
        review.run(f"more{n}", f'conclude("{n}")')
    with review.api("auditor") as client:
        everything = ids(listed(client, limit=200))
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            body = listed(client, limit=3, **({"cursor": cursor} if cursor else {}))
            seen += ids(body)
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert len(body["runs"]) == 3
            assert not cursor.isdigit()  # opaque: callers pass it back, never compute one
    assert len(everything) == 9
    assert seen == everything
    assert pages == 3


def test_filters_by_contract_version_status_code_principal_and_time(review: Review) -> None:
    runs = review.runs
    version = review.service.contract("orders").version
    now = datetime.now(UTC)
    with review.api("auditor") as client:
        assert ids(listed(client, code="STATE_VIOLATION")) == [runs["boundary"]]
        assert ids(listed(client, code="FORBIDDEN_SCOPE")) == [runs["bob_scope"]]
        assert ids(listed(client, status="refused")) == [runs["bob_scope"], runs["boundary"]]
        assert ids(listed(client, principal="bob")) == [runs["bob_scope"]]
        assert len(ids(listed(client, contract=f"orders@{version}"))) == 5
        assert ids(listed(client, contract="orders@99.0.0")) == []
        assert ids(listed(client, contract="invoices")) == []
        assert len(ids(listed(client, since=(now - timedelta(hours=1)).isoformat()))) == 5
        assert ids(listed(client, since=(now + timedelta(minutes=5)).isoformat())) == []
        assert ids(listed(client, until=(now - timedelta(hours=1)).isoformat())) == []
        assert len(ids(listed(client, until=(now + timedelta(days=1)).date().isoformat()))) == 5
        assert ids(listed(client, run=runs["boundary"][:8].upper())) == [runs["boundary"]]


def test_without_audit_read_a_caller_lists_only_its_own_runs(review: Review) -> None:
    with review.api("bob") as client:
        assert ids(listed(client)) == [review.runs["bob_scope"]]
        assert ids(listed(client, principal="bob")) == [review.runs["bob_scope"]]
        assert ids(listed(client, code="STATE_VIOLATION")) == []  # ada's denial stays hidden
        detail = problem(client.get("/v1/runs", params={"principal": "ada"}), 403, "forbidden")
        assert "principal" in detail
        detail = problem(client.get("/v1/runs", params={"run": review.runs["boundary"][:6]}), 403, "forbidden")
        assert "run-id prefix" in detail
    with review.api("ada") as client:
        assert review.runs["bob_scope"] not in ids(listed(client))
        assert len(ids(listed(client))) == 4


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": "finished"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-40"}, "until"),
        ({"run": "xyz"}, "run"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"contract": "orders@1"}, "contract"),
        ({"code": "state_violation'--"}, "code"),
        ({"since": "2026-01-02", "until": "2026-01-01"}, "until"),
    ],
)
def test_a_bad_value_is_a_422_naming_the_parameter(review: Review, params: dict[str, str], parameter: str) -> None:
    with review.api("auditor") as client:
        response = client.get("/v1/runs", params=params)
    problem(response, 422, "invalid-request")
    assert any(e["location"] == f"query.{parameter}" for e in response.json()["errors"]), response.json()


def test_without_a_token_nothing_is_listed(review: Review) -> None:
    problem(httpx.get(f"{review.url}/v1/runs"), 401, "unauthenticated")


def test_every_deny_decision_is_a_row_of_the_denials_index(review: Review) -> None:
    with closing(sqlite3.connect(review.log.path)) as db:
        rows = db.execute("SELECT run_id, principal, operation, code, boundary, clause FROM denials ORDER BY log_seq")
        found = rows.fetchall()
    assert found == [
        (review.runs["boundary"], "ada", "cancel_order", "STATE_VIOLATION", "no_cancel_after_picking", found[0][5]),
        (review.runs["bob_scope"], "bob", "cancel_order", "FORBIDDEN_SCOPE", None, found[1][5]),
    ]
    assert found[0][5] == "transition:Order.cancel"
