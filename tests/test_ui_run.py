"""The review app's run page over HTTP: a real uvicorn server on loopback serving the API and
/ui, the real sandbox and gate over the payments example's SQLite bank, runs recorded in a
real audit log, and receipts altered in the real SQLite file as an attacker with write access
would (past the append-only triggers, dropped in the test's own connection).

The payments contract: paying from another customer's account is a GUARD_VIOLATION of the
hard boundary own_account_only; paying a new IBAN pauses for approval by payments:approve.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from charter.audit import AuditLog, Decision, verify_bundle
from charter.audit.receipts import link_of
from charter.principal import Principal
from charter.sandbox import Sandbox
from charter.server import CharterService, IdempotencyStore, create_app, serving
from charter.ui import SessionStore, mount_ui
from examples.payments import backend
from tests.charter_service import charter_service

HOLDER_SCOPES = ["payments:read", "payments:write", "documents:read", "profile:read"]
ATTRIBUTES = {"account_id": backend.HOLDER_ACCOUNT, "daily_limit": "2500.00"}
HOLDER = Principal("holder", frozenset(HOLDER_SCOPES), ATTRIBUTES)
NEW_IBAN = backend.LANDLORD_NEW_IBAN  # not a saved payee: the approval rule holds

XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)")


def pay(account: str, reference: str = "Deposit") -> str:
    return (
        "from decimal import Decimal\n"
        "transfer = payments.send_payment(\n"
        f'    account="{account}", recipient=inputs["iban"], amount=Decimal("25.00"), reference={reference!r}\n'
        ")\n"
        'conclude(f"sent {transfer.amount}")\n'
    )


READ = 'account = payments.get_account(id="ACC-1001")\nconclude(f"balance {account.balance}")\n'
XSS_PROGRAM = f'# {XSS[0]} {XSS[1]}\naccount = payments.get_account(id="ACC-1001")\nconclude({" ".join(XSS)!r})\n'


def scripted(request: object) -> str:
    return f"```python\n{READ}```"


@dataclass
class Site:
    url: str
    log: AuditLog
    service: CharterService
    tokens: dict[str, str]
    app: object
    runs: dict[str, str]

    @contextmanager
    def client(self, who: str) -> Iterator[httpx.Client]:
        """A browser-like client signed in as `who` (its session cookie set)."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            signed = client.post("/ui/sign-in", data={"token": self.tokens[who]})
            assert signed.status_code == 303, signed.text
            yield client


@pytest.fixture
def site(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Site]:
    backend.seed()
    log, service, store = charter_service(charter_home, shared_sandbox, "payments", scripted)
    tokens = {
        "holder": store.add("holder", "holder", [*HOLDER_SCOPES, "ui"], ATTRIBUTES),
        "carol": store.add("carol", "carol", [*HOLDER_SCOPES, "ui"], {"account_id": "ACC-2002", "daily_limit": "9"}),
        "reviewer": store.add("reviewer", "reviewer", ["payments:approve", "ui"]),
        "auditor": store.add("auditor", "auditor", ["audit:read", "ui"]),
    }
    inputs = {"iban": NEW_IBAN}
    runs = {
        "denied": service.execute(HOLDER, "payments", pay("ACC-2002"), inputs=inputs).run_id,
        "paused": service.execute(HOLDER, "payments", pay(backend.HOLDER_ACCOUNT), inputs=inputs).run_id,
        "read": service.execute(HOLDER, "payments", READ).run_id,
        "xss": service.runner.execute(
            XSS_PROGRAM, contract=service.contract("payments"), principal=HOLDER, intent=" ".join(XSS)
        ).run_id,
        "intent": service.operate(HOLDER, "payments", "What is my balance? " + XSS[0]).run_id,
    }
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"), max_runs=1, queue=0)
    mount_ui(app, service, SessionStore(charter_home / "ui-sessions.db"), secure=False)
    with serving(app, name="charter-ui") as url:
        yield Site(url, log, service, tokens, app, runs)


def page(client: httpx.Client, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def item(text: str, log_seq: int) -> str:
    """The timeline entry of receipt `log_seq` (its <li> element)."""
    found = re.search(rf'<li id="r{log_seq}" class="([^"]*)">(.*?)</li>\n', text, re.S)
    assert found is not None, f"no entry for receipt {log_seq}"
    return found.group(0)


def seq_of(log: AuditLog, run_id: str, kind: str) -> int:
    return next(row.log_seq for row in log.stored(run_id) if row.kind == kind)


def csrf_of(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found is not None
    return found.group(1)


# -- the page: program beside the timeline, each call linked to its line ----------------------


def test_an_auditor_sees_the_denied_call_on_its_line_with_clause_boundary_and_what_the_gate_read(site: Site) -> None:
    run_id = site.runs["denied"]
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}")
    assert "verified: 3 receipts, signatures and chain intact" in text
    assert "VERIFICATION FAILED" not in text
    # The program, highlighted, its line 2 (the call, as the guest reported it) marked denied.
    assert '<li id="L2" class="denied">' in text
    assert '<li id="L1">' in text  # a line without a call is not marked
    decision = item(text, seq_of(site.log, run_id, "decision"))
    assert '<span class="verdict deny">GUARD_VIOLATION</span>' in decision
    assert '<a href="#L2">line 2</a>' in decision
    assert "line reported by the program" in decision
    assert "<code>guard:pay_from_own_account</code>" in decision
    assert "<code>own_account_only</code>" in decision
    sentence = (
        "Never pay from, add payees to, or list the payees and standing orders of another customer&#39;s account."
    )
    assert sentence in decision
    assert "what the gate read" in decision
    assert "<dt>provenance of <code>recipient</code></dt>\n<dd>request</dd>" in decision
    assert "{&#34;account&#34;:&#34;ACC-2002&#34;" in decision  # the arguments as recorded, escaped
    assert 'href="/ui/contracts/payments/1.0.0"' in text
    assert "refused" in text
    assert "GUARD_VIOLATION" in text


def test_a_paused_run_marks_the_waiting_line_and_links_its_approval(site: Site) -> None:
    run_id = site.runs["paused"]
    approval_id = site.service.list_approvals(HOLDER)[0].approval_id
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}")
    assert '<li id="L2" class="waiting">' in text
    request = item(text, seq_of(site.log, run_id, "approval_request"))
    assert "APPROVAL REQUIRED" in request
    assert "recipient not a saved payee" in request
    assert f'href="/ui/approvals/{approval_id}"' in request
    assert "Never pay an IBAN that is not a saved payee without the holder&#39;s confirmation." in request
    # What the gate read to decide it: the lookups (with what they saw) and the quota.
    assert "lookup <code>account</code>" in request
    assert "<code>get_account({&#34;id&#34;:&#34;ACC-1001&#34;})</code>" in request
    assert "quota <code>daily_outflow</code>" in request
    assert "0.00 counted + 25.00 of 2000.00 per 24h" in request
    assert "Approval chain" in text
    assert "<strong>pending</strong>" in text


def test_the_decision_shows_in_the_run_at_once(site: Site) -> None:
    run_id = site.runs["paused"]
    approval_id = site.service.list_approvals(HOLDER)[0].approval_id
    reviewer = Principal("reviewer", frozenset({"payments:approve"}))
    site.service.decide(reviewer, approval_id, "approved", "landlord's new account, confirmed by phone")
    with site.client("holder") as client:
        text = page(client, f"/ui/runs/{run_id}")
    assert "<strong>approved</strong>, approved by reviewer" in text
    assert "<q>landlord&#39;s new account, confirmed by phone</q>" in text


def test_an_intent_run_shows_its_attempts_and_links_their_program_runs(site: Site) -> None:
    run_id = site.runs["intent"]
    program_run = site.log.run(run_id).program_runs()[0]
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}")
        assert "Intent run" in text
        assert "attempt 1" in text
        assert f'href="/ui/runs/{program_run}"' in text
        assert "payments.get_account" in re.sub(r"<[^>]+>", "", text)  # the attempt's program, highlighted
        assert "concluded" in text
        program_page = page(client, f"/ui/runs/{program_run}")
    assert '<li id="L1" class="called">' in program_page
    assert '<dd class="answer">balance 3250.00</dd>' in program_page
    assert '<dd class="answer">balance 3250.00</dd>' in text  # the intent's conclusion


# -- who sees what ------------------------------------------------------------------------------


def test_the_owner_sees_summary_decisions_and_verification_but_not_program_nor_receipts(site: Site) -> None:
    run_id = site.runs["denied"]
    with site.client("holder") as client:
        text = page(client, f"/ui/runs/{run_id}")
        assert client.get(f"/ui/runs/{run_id}/bundle").status_code == 403
        intent = page(client, f"/ui/runs/{site.runs['intent']}")
    assert "attempt 1" in intent
    assert 'class="code program"' not in intent  # nor an attempt's program
    assert "verified: 3 receipts" in text
    assert '<span class="verdict deny">GUARD_VIOLATION</span>' in text
    assert 'class="code program"' not in text  # no program
    assert "ACC-2002" not in text  # no arguments
    assert "what the gate read" not in text
    assert "/replay" not in text
    assert "/bundle" not in text


def test_another_principals_run_is_answered_exactly_like_a_missing_one(site: Site) -> None:
    run_id = site.runs["denied"]
    missing = "0" * 32
    with site.client("carol") as client:
        theirs = client.get(f"/ui/runs/{run_id}")
        nothing = client.get(f"/ui/runs/{missing}")
        malformed = client.get("/ui/runs/405edb62")
        assert client.get(f"/ui/runs/{run_id}/bundle").status_code == 403
    assert theirs.status_code == nothing.status_code == malformed.status_code == 404
    assert theirs.text.replace(run_id, missing) == nothing.text
    assert "give the whole 32-character run id" in malformed.text
    assert "<h1>No such run</h1>" in malformed.text  # the HTML error page, not problem+json


def test_an_approver_sees_the_program_of_a_pending_request_addressed_to_them_only(site: Site) -> None:
    paused, denied = site.runs["paused"], site.runs["denied"]
    with site.client("reviewer") as client:
        text = page(client, f"/ui/runs/{paused}")
        assert '<li id="L2" class="waiting">' in text  # the program and the waiting line
        assert "as an approver of its pending request" in text
        assert "/replay" not in text  # no auditor's actions
        assert client.get(f"/ui/runs/{denied}").status_code == 404  # not a request of theirs
        api = {"Authorization": f"Bearer {site.tokens['reviewer']}"}
        assert client.get(f"/v1/runs/{paused}", headers=api).status_code == 200  # the API decides alike
        assert client.get(f"/v1/runs/{denied}", headers=api).status_code == 404
        approval_id = site.service.list_approvals(HOLDER)[0].approval_id
        site.service.decide(Principal("reviewer", frozenset({"payments:approve"})), approval_id, "denied", "no")
        assert client.get(f"/ui/runs/{paused}").status_code == 404  # decided: no longer pending
        assert client.get(f"/v1/runs/{paused}", headers=api).status_code == 404


# -- verification on the page -------------------------------------------------------------------


def forge(log: AuditLog, log_seq: int, old: bytes, new: bytes) -> None:
    """Edit one stored receipt past the append-only trigger, as an attacker with write access would."""
    with sqlite3.connect(log.path) as db:
        db.execute("DROP TRIGGER receipts_no_update")
        (body,) = db.execute("SELECT body FROM receipts WHERE log_seq = ?", (log_seq,)).fetchone()
        assert old in body
        db.execute("UPDATE receipts SET body = ? WHERE log_seq = ?", (body.replace(old, new), log_seq))


def test_a_receipt_altered_in_the_sqlite_file_is_marked_and_never_shown_as_true(site: Site) -> None:
    run_id = site.runs["denied"]
    edited = seq_of(site.log, run_id, "decision")
    forge(site.log, edited, b'"decision":"DENY"', b'"decision":"ALLOW"')
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}")
        csrf = csrf_of(text)
        replay = client.post(f"/ui/runs/{run_id}/replay", data={"csrf": csrf})
    assert "VERIFICATION FAILED" in text
    assert "verified:" not in text
    assert f'<a href="#r{edited}">receipt {edited}</a>: ' in text  # the finding links to the marked receipt
    forged = item(text, edited)
    assert 'class="entry kind-decision unverified"' in forged
    assert f"UNVERIFIED receipt {edited}" in forged
    assert "signature" in forged
    assert 'class="verdict allow"' not in forged  # the forged ALLOW is not presented as a decision
    assert "not to be believed" in forged
    assert 'class="denied"' not in text
    assert 'class="called"' not in text
    assert '<span class="status status-unverified">not vouched for</span>' in text
    # A replay compares against the record: it does not replay one it cannot vouch for.
    assert replay.status_code == 200
    assert "Not replayed" in replay.text
    assert "fail their check" in replay.text


def test_a_receipt_that_no_longer_decodes_is_shown_as_unreadable(site: Site) -> None:
    run_id = site.runs["read"]
    edited = seq_of(site.log, run_id, "outcome")
    with sqlite3.connect(site.log.path) as db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute("UPDATE receipts SET body = ? WHERE log_seq = ?", (b'{"kind":"outcome","forged":', edited))
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}")
    assert "VERIFICATION FAILED" in text
    unreadable = item(text, edited)
    assert "unverified" in unreadable
    assert f"receipt {edited} could not be read" in unreadable


def test_a_relinked_forgery_is_still_caught(site: Site) -> None:
    """The edit recomputes the stored link, so only the signature (and the next prev) tell."""
    run_id = site.runs["read"]
    edited = seq_of(site.log, run_id, "outcome")
    with sqlite3.connect(site.log.path) as db:
        db.execute("DROP TRIGGER receipts_no_update")
        body, signature = db.execute("SELECT body, signature FROM receipts WHERE log_seq = ?", (edited,)).fetchone()
        forged = body.replace(b"3250.00", b"9999999.00")
        assert forged != body
        db.execute(
            "UPDATE receipts SET body = ?, link = ? WHERE log_seq = ?", (forged, link_of(forged, signature), edited)
        )
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}")
    assert "VERIFICATION FAILED" in text
    assert "unverified" in item(text, edited)
    assert "9999999.00" not in text.split('class="claimed"')[0]  # the forged balance is only in the marked claim


# -- replay and export --------------------------------------------------------------------------


def test_an_auditor_replays_a_run_and_sees_it_identical(site: Site) -> None:
    run_id = site.runs["denied"]
    with site.client("auditor") as client:
        csrf = csrf_of(page(client, f"/ui/runs/{run_id}"))
        whole = client.post(f"/ui/runs/{run_id}/replay", data={"csrf": csrf})
        fragment = client.post(f"/ui/runs/{run_id}/replay", data={"csrf": csrf}, headers={"HX-Request": "true"})
        intent = client.post(f"/ui/runs/{site.runs['intent']}/replay", data={"csrf": csrf})
    assert whole.status_code == 200
    assert "replay identical" in whole.text
    assert "<html" in whole.text
    assert "calls recorded 1, replayed 1" in whole.text
    assert fragment.status_code == 200
    assert "replay identical" in fragment.text
    assert "<html" not in fragment.text
    assert "replay identical" in intent.text  # an intent run: each program run its attempts started


def test_replay_is_for_auditors_and_checks_the_forms_csrf_token(site: Site) -> None:
    run_id = site.runs["denied"]
    with site.client("holder") as client:
        csrf = csrf_of(page(client, f"/ui/runs/{run_id}"))
        refused = client.post(f"/ui/runs/{run_id}/replay", data={"csrf": csrf})
    assert refused.status_code == 403
    assert "audit:read" in refused.text
    with site.client("auditor") as client:
        forged = client.post(f"/ui/runs/{run_id}/replay", data={"csrf": "forged"})
        missing = client.post(f"/ui/runs/{run_id}/replay", data={"run": run_id})
    assert forged.status_code == missing.status_code == 403
    assert "replay" not in forged.text.lower()


def test_replay_waits_for_no_one_when_every_run_slot_is_taken(site: Site) -> None:
    run_id = site.runs["denied"]
    slots = site.app.state.slots  # type: ignore[attr-defined]
    with site.client("auditor") as client:
        csrf = csrf_of(page(client, f"/ui/runs/{run_id}"))
        assert slots.take()  # the server's one slot (max_runs=1), as a run in flight would hold it
        try:
            busy = client.post(f"/ui/runs/{run_id}/replay", data={"csrf": csrf})
        finally:
            slots.release()
        after = client.post(f"/ui/runs/{run_id}/replay", data={"csrf": csrf})
    assert busy.status_code == 503
    assert int(busy.headers["Retry-After"]) >= 1
    assert "try the replay again in" in busy.text
    assert busy.headers["content-security-policy"].startswith("default-src 'self'")
    assert after.status_code == 200
    assert "replay identical" in after.text
    assert slots.in_flight == 0  # released after the replay


def test_an_auditor_exports_the_bundle_and_it_verifies(site: Site, tmp_path: Path) -> None:
    run_id = site.runs["paused"]
    with site.client("auditor") as client:
        response = client.get(f"/ui/runs/{run_id}/bundle")
        unknown = client.get(f"/ui/runs/{'f' * 32}/bundle")
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="run-{run_id}.jsonl"'
    header = json.loads(response.text.splitlines()[0])
    assert (header["format"], header["run_id"]) == ("charter-audit-bundle/1", run_id)
    path = tmp_path / "bundle.jsonl"
    path.write_text(response.text, encoding="utf-8")
    assert verify_bundle(path).ok
    assert unknown.status_code == 404


# -- escaping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["xss", "intent"])
def test_every_value_from_a_program_intent_or_receipt_is_escaped(site: Site, run: str) -> None:
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{site.runs[run]}")
    assert "<script>alert(1)" not in text
    assert "<img src=x" not in text
    assert 'href="javascript:' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    if run == "xss":
        assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_a_backend_errors_withheld_text_is_shown_to_auditors_only(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTER_PAYMENTS_DB", str(tmp_path))  # a folder: the backend's read raises
    run_id = site.service.execute(HOLDER, "payments", READ).run_id
    [kept] = site.log.backend_errors(run_id)
    assert kept.message == "unable to open database file"
    with site.client("auditor") as client:
        shown = page(client, f"/ui/runs/{run_id}")
    with site.client("holder") as client:
        own = page(client, f"/ui/runs/{run_id}")
    assert '<p class="withheld">withheld from the program' in shown
    assert html.escape(kept.message) in shown
    assert kept.message not in own
    assert 'class="withheld"' not in own


def test_a_run_whose_opening_no_longer_decodes_is_a_verification_failure_page(site: Site) -> None:
    run_id = site.runs["read"]
    with sqlite3.connect(site.log.path) as db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute("UPDATE receipts SET body = ? WHERE run_id = ? AND seq = 0", (b"{", run_id))
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}", status=409)
    assert "<h1>VERIFICATION FAILED</h1>" in text
    assert "charter audit verify" in text


def test_a_forged_seal_tells_no_conclusion(site: Site) -> None:
    run_id = site.runs["read"]
    edited = seq_of(site.log, run_id, "seal")
    forge(site.log, edited, b"balance 3250.00", b"balance 1.00")
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{run_id}")
    assert "VERIFICATION FAILED" in text
    assert "unverified" in item(text, edited)
    assert '<dd class="answer">' not in text  # neither the forged answer nor any other
    assert "balance 1.00" not in text.split('class="claimed"')[0]


def test_a_run_never_sealed_shows_its_calls_in_doubt(site: Site) -> None:
    """Its process ended during the run: opened, a write allowed, no outcome, no seal."""
    record = site.log.run(site.runs["read"])
    decision = next(r for r in record.receipts if isinstance(r, Decision))
    recorder = site.log.open_run(msgspec.structs.replace(record.opened, run_id="ab" * 16))
    recorder.decision(decision, durable=True)
    with site.client("auditor") as client:
        text = page(client, f"/ui/runs/{'ab' * 16}")
    assert '<span class="status status-interrupted">interrupted</span>' in text
    assert '<dt>ended</dt><dd><span class="muted">never</span></dd>' in text
    assert "call 1: OUTCOME UNKNOWN" in text
