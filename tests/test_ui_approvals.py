"""The review app's Approvals pages over HTTP: a real uvicorn server on loopback, the real sandbox
and gate over the payments example's SQLite bank, and a run paused for approval by the holder's
program (`send_payment` to an IBAN that is not a saved payee). A reviewer holding
`payments:approve` decides through the page's forms; four eyes and the approver scope are the
server's to enforce, and a refusal is shown and decides nothing.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from markupsafe import escape

from charter.audit import AuditLog
from charter.contract import load_contract
from charter.principal import Principal
from charter.registry import Registry
from charter.runner import Runner
from charter.sandbox import Sandbox
from charter.server import CharterService, TokenStore
from examples.payments import backend
from tests.conftest import ROOT
from tests.ui_pages import csrf_of, review_app, signed_in

HOLDER_SCOPES = ["payments:read", "payments:write", "documents:read", "profile:read", "ui"]
HOLDER = Principal(
    "holder",
    frozenset(HOLDER_SCOPES),
    {"account_id": backend.HOLDER_ACCOUNT, "daily_limit": "2500.00"},
)
XSS = '<script>alert(1)</script>"><img src=x onerror=alert(1)>javascript:alert(1)'
# The reference is the holder's own text: it reaches the page as an argument and in the program.
PAY_NEW_IBAN = (
    "from decimal import Decimal\n"
    "# " + XSS + "\n"
    "transfer = payments.send_payment(\n"
    '    account="ACC-1001", recipient=inputs["iban"], amount=Decimal("25.00"), reference=inputs["ref"]\n'
    ")\n"
    'conclude(f"sent {transfer.amount}")\n'
)
WAITING_LINE = 3  # the line of the send_payment call


@dataclass
class Review:
    url: str
    tokens: dict[str, str]
    service: CharterService
    log: AuditLog
    approval_id: str
    run_id: str

    def client(self, who: str) -> AbstractContextManager[httpx.Client]:
        return signed_in(self.url, self.tokens[who])

    def decisions(self) -> int:
        with closing(sqlite3.connect(self.log.path)) as db:
            return int(db.execute("SELECT COUNT(*) FROM receipts WHERE kind = 'approval_decision'").fetchone()[0])


@pytest.fixture
def review(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Review]:
    backend.seed()
    registry = Registry()
    path = ROOT / "contracts" / "payments.yaml"
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"), published_by="payments-team")
    log = AuditLog(charter_home / "audit.db")
    service = CharterService(registry=registry, audit=log, runner=Runner(audit=log, sandbox=shared_sandbox), agent=None)
    paused = service.execute(HOLDER, "payments", PAY_NEW_IBAN, inputs={"iban": backend.LANDLORD_NEW_IBAN, "ref": XSS})
    assert paused.approval_id is not None, paused
    store = TokenStore(charter_home / "tokens.yaml")
    tokens = {
        "holder": store.add("holder", "holder", HOLDER_SCOPES, dict(HOLDER.attributes)),
        "reviewer": store.add("reviewer", "reviewer", ["payments:approve", "ui"]),
        "auditor": store.add("auditor", "auditor", ["audit:read", "ui"]),
        "outsider": store.add("outsider", "outsider", ["orders:read", "ui"]),
    }
    with review_app(charter_home, service, store) as url:
        yield Review(url, tokens, service, log, paused.approval_id, paused.run_id)


def test_the_queue_lists_what_each_viewer_may_see(review: Review) -> None:
    short = review.approval_id[:12]
    for who in ("reviewer", "holder", "auditor"):
        with review.client(who) as client:
            page = client.get("/ui/approvals")
        assert page.status_code == 200, (who, page.text)
        assert f'href="/ui/approvals/{review.approval_id}"' in page.text, who
        assert short in page.text
        assert ("yours to decide" in page.text) == (who == "reviewer"), who  # not the requester, not the auditor
    assert "send_payment" in page.text
    assert "payments:approve" in page.text  # the approver scope
    assert "approval-pending" in page.text
    with review.client("outsider") as client:
        page = client.get("/ui/approvals")
    assert page.status_code == 200
    assert review.approval_id not in page.text  # neither its own, nor decidable by its scopes
    assert "No approval request" in page.text


def test_the_queue_filters_by_status_and_contract_and_names_a_bad_filter(review: Review) -> None:
    with review.client("reviewer") as client:
        assert review.approval_id in client.get("/ui/approvals", params={"status": "pending"}).text
        assert review.approval_id not in client.get("/ui/approvals", params={"status": "approved"}).text
        assert review.approval_id in client.get("/ui/approvals", params={"contract": "payments"}).text
        assert review.approval_id not in client.get("/ui/approvals", params={"contract": "orders"}).text
        bad = client.get("/ui/approvals", params={"status": "<b>nope</b>"})
        long = client.get("/ui/approvals", params={"contract": "x" * 201})
    assert bad.status_code == 400
    assert "status" in bad.text
    assert "pending, approved, denied, expired, tampered" in bad.text
    assert "<b>nope" not in bad.text
    assert long.status_code == 400
    assert "contract is longer than 200 characters" in long.text


def test_the_request_page_shows_the_program_the_waiting_line_the_call_and_what_the_gate_read(
    review: Review,
) -> None:
    with review.client("reviewer") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}")
    assert page.status_code == 200, page.text
    text = page.text
    assert f'<li id="L{WAITING_LINE}" class="waiting">' in text  # the program, its waiting line marked
    assert text.count('class="waiting"') == 1
    assert f'href="#L{WAITING_LINE}"' in text
    assert "line reported by the program" in text
    assert backend.LANDLORD_NEW_IBAN in text  # the arguments
    assert "approval:send_payment" in text  # the rule
    view = review.service.approval(Principal("auditor", frozenset({"audit:read"})), review.approval_id)
    assert escape(view.reason) in text  # its reason, as the signed request records it
    assert "new_recipient_confirmed" in text  # the hard boundary and its sentence, from the compiled contract
    assert escape("Never pay an IBAN that is not a saved payee without the holder's confirmation.") in text
    assert "What the gate read" in text
    assert "list_payees" in text  # the lookup the approval rule reads
    assert "daily_outflow" in text  # the quota, money in units
    assert re.search(r"<td>25\.00</td>", text)
    assert f'href="/ui/runs/{review.run_id}"' in text  # the paused run
    assert 'action="/ui/approvals/' + review.approval_id + '/approve"' in text
    assert 'action="/ui/approvals/' + review.approval_id + '/deny"' in text
    assert text.count('name="reason" required') == 2


def test_every_value_from_the_program_and_the_arguments_is_escaped(review: Review) -> None:
    with review.client("auditor") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        queue = client.get("/ui/approvals").text
    for text in (page, queue):
        assert "<script>alert" not in text
        assert "<img src=x" not in text
        assert 'href="javascript:' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text: in the program and the arguments
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 2


def test_a_second_principal_approves_and_the_page_shows_the_decision(review: Review) -> None:
    with review.client("reviewer") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        response = client.post(
            f"/ui/approvals/{review.approval_id}/approve",
            data={"csrf": csrf_of(page), "reason": "Checked the <b>new</b> IBAN with the landlord"},
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/ui/approvals/{review.approval_id}?done=recorded"
        shown = client.get(response.headers["location"])
    assert shown.status_code == 200
    assert "Your decision was recorded." in shown.text
    assert "<strong>approved</strong> by reviewer" in shown.text
    assert "Checked the &lt;b&gt;new&lt;/b&gt; IBAN with the landlord" in shown.text
    # Decided, the paused run is no longer the approver's to open: named, not linked (an auditor's link).
    paused = review.service.approval(Principal("auditor", frozenset({"audit:read"})), review.approval_id).run_id
    assert paused[:12] in shown.text
    assert f'href="/ui/runs/{paused}"' not in shown.text
    with review.client("auditor") as client:
        assert f'href="/ui/runs/{paused}"' in client.get(f"/ui/approvals/{review.approval_id}").text
    assert 'class="called"' in shown.text
    assert 'class="waiting"' not in shown.text
    assert 'action="/ui/approvals/' not in shown.text  # decided once: no forms any more
    auditor = Principal("auditor", frozenset({"audit:read"}))
    view = review.service.approval(auditor, review.approval_id)
    assert (view.status, view.decided_by, view.decision_reason) == (
        "approved",
        "reviewer",
        "Checked the <b>new</b> IBAN with the landlord",
    )
    with review.client("reviewer") as client:  # the same decision again: recorded once
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        again = client.post(f"/ui/approvals/{review.approval_id}/approve", data={"csrf": csrf_of(page), "reason": "x"})
    assert again.headers["location"].endswith("?done=already")
    assert review.decisions() == 1


def test_the_requester_is_refused_four_eyes_and_nothing_is_decided(review: Review) -> None:
    with review.client("holder") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}")
        assert page.status_code == 200
        assert "a second principal must decide it (four eyes)" in page.text
        refused = client.post(
            f"/ui/approvals/{review.approval_id}/approve",
            data={"csrf": csrf_of(page.text), "reason": "my own payment, fine"},
        )
    assert refused.status_code == 403
    assert "Not decided: SELF_APPROVAL" in refused.text
    assert "four eyes" in refused.text
    assert "Nothing was recorded" in refused.text
    assert "my own payment, fine" in refused.text  # the reason kept in the form
    assert review.decisions() == 0
    assert review.service.approval(HOLDER, review.approval_id).status == "pending"


def test_a_viewer_without_the_approver_scope_is_refused(review: Review) -> None:
    with review.client("auditor") as client:  # sees every request, may decide none
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        assert "the server refuses your decision" in page
        refused = client.post(f"/ui/approvals/{review.approval_id}/deny", data={"csrf": csrf_of(page), "reason": "no"})
    assert refused.status_code == 403
    assert "Not decided: FORBIDDEN_SCOPE" in refused.text
    assert "payments:approve" in refused.text
    assert review.decisions() == 0


def test_a_second_decision_is_refused_already_decided(review: Review, charter_home: Path) -> None:
    store = TokenStore(charter_home / "tokens.yaml")
    other = store.add("reviewer2", "second-reviewer", ["payments:approve", "ui"])
    with review.client("reviewer") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        denied = client.post(f"/ui/approvals/{review.approval_id}/deny", data={"csrf": csrf_of(page), "reason": "no"})
        assert denied.status_code == 303
    with signed_in(review.url, other) as client:
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        assert "<strong>denied</strong> by reviewer" in page
        assert "/approve" not in page  # a decided request offers no form
        late = client.post(f"/ui/approvals/{review.approval_id}/approve", data={"csrf": csrf_of(page), "reason": "ok"})
    assert late.status_code == 409
    assert "Not decided: ALREADY_DECIDED" in late.text
    assert review.decisions() == 1
    view = review.service.approval(HOLDER, review.approval_id)
    assert (view.status, view.decided_by) == ("denied", "reviewer")


def test_an_empty_reason_is_refused(review: Review) -> None:
    with review.client("reviewer") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        refused = client.post(
            f"/ui/approvals/{review.approval_id}/approve", data={"csrf": csrf_of(page), "reason": "   "}
        )
    assert refused.status_code == 422
    assert "a decision needs a reason" in refused.text
    assert review.decisions() == 0


def test_a_forged_or_missing_csrf_token_decides_nothing(review: Review) -> None:
    with review.client("reviewer") as client:
        forged = client.post(
            f"/ui/approvals/{review.approval_id}/approve", data={"csrf": "forged", "reason": "looks fine"}
        )
        missing = client.post(f"/ui/approvals/{review.approval_id}/approve", data={"reason": "looks fine"})
    assert (forged.status_code, missing.status_code) == (403, 403)
    assert review.decisions() == 0
    with httpx.Client(base_url=review.url) as anonymous:  # no session at all
        response = anonymous.post(f"/ui/approvals/{review.approval_id}/approve", data={"reason": "x"})
    assert response.status_code == 401
    assert review.decisions() == 0


def test_an_unknown_malformed_or_invisible_request_is_the_same_404_page(review: Review) -> None:
    with review.client("outsider") as client:
        invisible = client.get(f"/ui/approvals/{review.approval_id}")
        page = client.get("/ui/approvals").text
        posted = client.post(
            f"/ui/approvals/{review.approval_id}/approve", data={"csrf": csrf_of(page), "reason": "mine now"}
        )
        unknown = client.get("/ui/approvals/" + "0" * 32)
        malformed = client.get("/ui/approvals/<script>")
    for response in (invisible, posted, unknown, malformed):
        assert response.status_code == 404
        assert "No such approval request" in response.text
        assert "text/html" in response.headers["content-type"]
    assert "send_payment" not in invisible.text
    assert "<script>" not in malformed.text
    assert review.decisions() == 0


def test_a_request_whose_records_do_not_verify_is_flagged_and_offers_no_decision(review: Review) -> None:
    with closing(sqlite3.connect(review.log.path)) as db, db:  # the derived index edited behind the log's back
        db.execute("UPDATE approvals SET approver_scope = 'ui' WHERE approval_id = ?", (review.approval_id,))
    with review.client("reviewer") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}")
        queue = client.get("/ui/approvals", params={"status": "pending"})
    assert page.status_code == 200
    assert "VERIFICATION FAILED" in page.text
    assert "the approvals index says approver_scope &#39;ui&#39;" in page.text
    assert 'class="request unverified"' in page.text
    assert 'action="/ui/approvals/' not in page.text
    assert "approval-tampered" in queue.text  # listed under every status, never hidden


def test_a_request_that_expired_unanswered_shows_it_and_can_no_longer_be_approved(review: Review) -> None:
    from datetime import UTC, datetime, timedelta

    [expired] = review.service.approvals.expire_due(now=datetime.now(UTC) + timedelta(days=2))
    assert expired.approval_id == review.approval_id
    with review.client("reviewer") as client:
        page = client.get(f"/ui/approvals/{review.approval_id}").text
        assert "<strong>denied</strong> by charter" in page
        assert "(it expired unanswered)" in page
        assert 'action="/ui/approvals/' not in page
        late = client.post(f"/ui/approvals/{review.approval_id}/approve", data={"csrf": csrf_of(page), "reason": "ok"})
    assert late.status_code == 409
    assert "Not decided: ALREADY_DECIDED" in late.text
    assert review.decisions() == 1
