"""Human approvals over the HTTP API: a real uvicorn server on loopback, the real sandbox and
gate over the payments example's SQLite bank, the resume worker `charter serve` starts, and a
real loopback receiver for the approval webhook.

The payments contract requires approval for `send_payment` to an IBAN that is not a saved
payee: the holder's program pauses there, a reviewer holding `payments:approve` decides, and
the worker resumes the run.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.agent._model import ModelRequest
from charter.approvals import (
    SIGNATURE_HEADER,
    ApprovalWebhook,
    SelfApproval,
    load_or_create_webhook_key,
    verify_signature,
)
from charter.audit import ApprovalDecided, AuditLog
from charter.contract import load_contract
from charter.errors import InvalidPrincipal
from charter.principal import Principal
from charter.registry import Registry
from charter.sandbox import Sandbox
from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving
from examples.payments import backend
from tests.charter_service import charter_service
from tests.conftest import ROOT, charter
from tests.hook_receiver import HookReceiver
from tests.payments_approval import HOLDER_ATTRIBUTES, HOLDER_SCOPES, NEW_IBAN, PAY, PAY_NEW_IBAN


def scripted(request: ModelRequest) -> str:
    return f"```python\n{PAY_NEW_IBAN}```"


@dataclass
class Api:
    url: str
    tokens: dict[str, str]
    log: AuditLog
    service: CharterService
    receiver: HookReceiver
    webhook_key: bytes
    store: TokenStore
    seen: list[Any] = field(default_factory=list)

    def client(self, who: str = "holder") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=60)

    def pause(self, **extra: Any) -> dict[str, Any]:
        with self.client() as client:
            response = client.post("/v1/programs", json=PAY, **extra)
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def settled(self, run_id: str, who: str = "holder", timeout: float = 90.0) -> dict[str, Any]:
        """GET /v1/runs/{run_id} until the worker sealed the resumed run."""
        deadline = time.monotonic() + timeout
        with self.client(who) as client:
            while True:
                view: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
                if view["status"] != "awaiting_approval" and view["resuming"] is None:
                    return view
                assert time.monotonic() < deadline, f"the run was not resumed: {view}"
                time.sleep(0.1)


@pytest.fixture
def api(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Api]:
    backend.seed()
    log, service, store = charter_service(charter_home, shared_sandbox, "payments", scripted)
    tokens = {
        "holder": store.add("holder", "holder", HOLDER_SCOPES, HOLDER_ATTRIBUTES),
        "carol": store.add("carol", "carol", HOLDER_SCOPES, {"account_id": "ACC-2002", "daily_limit": "10.00"}),
        "reviewer": store.add("reviewer", "reviewer", ["payments:approve"]),
        "reviewer2": store.add("reviewer2", "reviewer2", ["payments:approve"]),
        "auditor": store.add("auditor", "auditor", ["audit:read"]),
    }
    receiver = HookReceiver("/hooks/charter", statuses=[500])  # the first delivery fails: it is retried
    key = load_or_create_webhook_key(charter_home / "keys")
    # As `charter serve --approval-webhook URL` starts it (short backoff: the retry comes quickly).
    service.start_approvals(store.principal, webhook=ApprovalWebhook(receiver.url, key, backoff=0.05), poll_seconds=0.2)
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    try:
        with serving(app, name="charter-api") as url:
            yield Api(url, tokens, log, service, receiver, key, store)
    finally:
        service.stop_approvals()
        receiver.close()


def problem(response: httpx.Response, status: int, kind: str, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:charter:problem:{kind}"
    if code is not None:
        assert body["code"] == code
    return body


def transfers_to(iban: str) -> list[dict[str, Any]]:
    with backend._db() as db:
        return [dict(r) for r in db.execute("SELECT * FROM transfers WHERE recipient = ?", (iban,))]


def decisions(log: AuditLog, approval_id: str) -> list[ApprovalDecided]:
    """The signed decisions on `approval_id`: a record of its own, run_id = the approval id."""
    found = [row.decoded() for row in log.stored(approval_id)]
    assert all(isinstance(d, ApprovalDecided) for d in found)
    return found  # type: ignore[return-value]


# -- pause, decide, resume -------------------------------------------------------------------


def test_a_paused_program_answers_202_and_concludes_once_a_reviewer_approves(api: Api) -> None:
    paused = api.pause()
    run_id = paused["run_id"]
    approval = paused["approval"]
    assert (paused["status"], paused["cause"]) == ("awaiting_approval", "APPROVAL_REQUIRED")
    assert (approval["operation"], approval["reason"], approval["status"]) == (
        "send_payment",
        "recipient not a saved payee",
        "pending",
    )
    assert approval["expires"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    assert transfers_to(NEW_IBAN) == []  # nothing executed

    with api.client() as client:
        waiting = client.get(f"/v1/runs/{run_id}").json()
    assert (waiting["status"], waiting["chain"], waiting["approval"]["id"]) == (
        "awaiting_approval",
        [run_id],
        approval["id"],
    )

    with api.client("reviewer") as client:
        listed = client.get("/v1/approvals", params={"status": "pending", "contract": "payments"}).json()
        assert [a["approval_id"] for a in listed] == [approval["id"]]
        shown = client.get(f"/v1/approvals/{approval['id']}").json()
        assert (shown["principal"], shown["arguments"] is not None, shown["run_id"]) == ("holder", True, run_id)
        decided = client.post(f"/v1/approvals/{approval['id']}/approve", json={"reason": "landlord confirmed by phone"})
    assert decided.status_code == 200, decided.text
    assert (decided.json()["status"], decided.json()["decided_by"]) == ("approved", "reviewer")

    final = api.settled(run_id)
    assert (final["status"], final["answer"]) == ("done", "sent 25.00")
    assert final["chain"][0] == run_id
    assert len(final["chain"]) == 2
    assert final["latest_run"] == final["chain"][1]
    assert [t["amount"] for t in transfers_to(NEW_IBAN)] == ["25.00"]  # executed exactly once
    # The view covers the chain: the paused run's calls (none before the flagged one here), then the
    # approved call, which the resumed run made.
    assert [(c["call"], c["operation"], c["decision"], c["run_id"]) for c in final["calls"]] == [
        (approval["call"], "send_payment", "ALLOW", final["chain"][1])
    ]
    assert [(o["call"], o["run_id"]) for o in final["outcomes"]] == [(approval["call"], final["chain"][1])]
    assert final["in_doubt"] == []
    # The list keeps the paused run's own status and says where its chain went; the overview
    # counts the run as its chain stands (the review app reads both).
    with api.client("auditor") as client:
        [row] = [r for r in client.get("/v1/runs").json()["runs"] if r["run_id"] == run_id]
    assert (row["status"], row["resumed"]) == ("awaiting_approval", {"run_id": final["chain"][1], "status": "done"})
    from charter.server._runs_query import overview

    counted = overview(api.log, principal=None).days[-1].by
    assert "awaiting_approval" not in counted
    assert counted["done"] == 2  # the paused run, as its chain stands, and the run that resumed it


def test_an_intent_that_pauses_answers_202_and_its_run_follows_the_chain(api: Api) -> None:
    with api.client() as client:
        response = client.post(
            "/v1/intents",
            json={"contract": "payments", "intent": "Pay the deposit to my landlord", "inputs": {"iban": NEW_IBAN}},
        )
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/runs/{body['run_id']}"
    assert body["status"] == "awaiting_approval"
    with api.client("reviewer") as client:
        assert client.post(f"/v1/approvals/{body['approval']['id']}/approve", json={"reason": "ok"}).status_code == 200
    final = api.settled(body["run_id"])
    assert (final["kind"], final["status"], final["answer"]) == ("intent", "done", "sent 25.00")
    assert final["chain"][0] == body["run_id"]
    assert len(final["chain"]) == 3


def test_a_denied_approval_concludes_the_run_with_the_approval_denied_refusal(api: Api) -> None:
    paused = api.pause()
    with api.client("reviewer") as client:
        denied = client.post(f"/v1/approvals/{paused['approval']['id']}/deny", json={"reason": "unknown IBAN"})
    assert (denied.status_code, denied.json()["status"]) == (200, "denied")
    final = api.settled(paused["run_id"])
    assert (final["status"], final["cause"]) == ("refused", "APPROVAL_DENIED")
    assert "unknown IBAN" in final["reason"]
    assert transfers_to(NEW_IBAN) == []


# -- four eyes, scopes, visibility ----------------------------------------------------------------


def test_the_holder_cannot_approve_its_own_request(api: Api) -> None:
    paused = api.pause()
    approval_id = paused["approval"]["id"]
    with api.client() as client:
        refused = client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "it is fine"})
        problem(refused, 403, "self-approval", "SELF_APPROVAL")
        assert client.get(f"/v1/approvals/{approval_id}").json()["status"] == "pending"
    assert decisions(api.log, approval_id) == []


def test_a_look_alike_principal_is_refused_at_token_creation_and_as_self_approval(api: Api) -> None:
    look_alikes = ("ho1der", "h0lder", "HOLDER")  # one TR39 skeleton with "holder"
    for n, look_alike in enumerate(look_alikes):
        with pytest.raises(InvalidPrincipal, match="looks like"):
            api.store.add(f"imposter{n}", look_alike, ["payments:approve"])
    paused = api.pause()
    approval_id = paused["approval"]["id"]
    for who in look_alikes:  # had it come from elsewhere (an MCP operator, another token file)
        with pytest.raises(SelfApproval):
            api.service.decide(Principal(who, frozenset({"payments:approve"})), approval_id, "approved", "mine")
    assert decisions(api.log, approval_id) == []


def test_a_principal_without_the_approver_scope_is_refused_and_a_stranger_sees_nothing(api: Api) -> None:
    approval_id = api.pause()["approval"]["id"]
    with api.client("auditor") as client:  # sees every request, may decide none
        assert client.get(f"/v1/approvals/{approval_id}").status_code == 200
        refused = client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "looks fine"})
        problem(refused, 403, "forbidden-scope", "FORBIDDEN_SCOPE")
    with api.client("carol") as client:  # another holder: the request is not hers to see
        assert client.get("/v1/approvals").json() == []
        problem(client.get(f"/v1/approvals/{approval_id}"), 404, "approval-not-found", "APPROVAL_NOT_FOUND")
        problem(
            client.post(f"/v1/approvals/{approval_id}/deny", json={"reason": "no"}),
            404,
            "approval-not-found",
            "APPROVAL_NOT_FOUND",
        )
    assert decisions(api.log, approval_id) == []


def test_no_input_gets_a_server_error(api: Api) -> None:
    approval_id = api.pause()["approval"]["id"]
    with api.client("reviewer") as client:
        for bad_id in ("nothex", "0" * 32, approval_id.upper(), approval_id[:31], "%00", "x" * 5000):
            problem(client.get(f"/v1/approvals/{bad_id}"), 404, "approval-not-found")
            problem(client.post(f"/v1/approvals/{bad_id}/approve", json={"reason": "r"}), 404, "approval-not-found")
        url = f"/v1/approvals/{approval_id}/approve"
        problem(client.post(url, json={"reason": "x" * 2001}), 422, "invalid-request")
        problem(client.post(url, json={"reason": ""}), 422, "invalid-request")
        problem(client.post(url, json={"reason": "   "}), 422, "invalid-request")
        problem(client.post(url, json={"reason": 7}), 422, "invalid-request")
        problem(client.post(url, json={"reason": "r", "extra": 1}), 422, "invalid-request")
        problem(client.post(url, json={}), 422, "invalid-request")
        problem(client.post(url, json=["reason"]), 422, "invalid-request")
        problem(client.post(url, content=b"{", headers={"Content-Type": "application/json"}), 400, "invalid-json")
        problem(client.post(url, content=b'{"reason": "r"}'), 415, "unsupported-media-type")
        problem(client.get("/v1/approvals", params={"status": "maybe"}), 422, "invalid-request")
        problem(client.get("/v1/approvals", params={"limit": "0"}), 422, "invalid-request")
        problem(client.get("/v1/runs/" + "f" * 32), 404, "run-not-found")
        assert client.get(f"/v1/approvals/{approval_id}").json()["status"] == "pending"  # none decided it
    assert decisions(api.log, approval_id) == []


# -- deciding twice, racing --------------------------------------------------------------------


def test_deciding_twice_is_idempotent_and_another_decision_conflicts(api: Api) -> None:
    approval_id = api.pause()["approval"]["id"]
    url = f"/v1/approvals/{approval_id}/approve"
    with api.client("reviewer") as client:
        first = client.post(url, json={"reason": "ok"}, headers={"Idempotency-Key": "approve-1"})
        again = client.post(url, json={"reason": "ok"}, headers={"Idempotency-Key": "approve-1"})
        plain = client.post(url, json={"reason": "ok"})
    assert first.status_code == again.status_code == plain.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["decision_link"] == again.json()["decision_link"] == plain.json()["decision_link"]
    assert (first.json()["already_decided"], plain.json()["already_decided"]) == (False, True)
    assert "note" not in first.json()
    # The same approver and decision with another reason: still 200 (a retry), but visibly not recorded.
    with api.client("reviewer") as client:
        changed = client.post(url, json={"reason": "different reason"})
    assert changed.status_code == 200
    assert (changed.json()["already_decided"], changed.json()["decision_reason"]) == (True, "ok")
    assert "already approved by reviewer" in changed.json()["note"]
    assert "('different reason') was not recorded" in changed.json()["note"]
    with api.client("reviewer2") as client:
        problem(client.post(f"/v1/approvals/{approval_id}/deny", json={"reason": "no"}), 409, "already-decided")
    assert len(decisions(api.log, approval_id)) == 1


def test_racing_approvers_produce_exactly_one_decision(api: Api) -> None:
    paused = api.pause()
    run_id, approval_id = paused["run_id"], paused["approval"]["id"]
    barrier = threading.Barrier(6)
    answers: list[tuple[str, int, str]] = []

    def decide(who: str, verb: str) -> None:
        with api.client(who) as client:
            barrier.wait()
            response = client.post(f"/v1/approvals/{approval_id}/{verb}", json={"reason": f"{who} {verb}"})
            body = response.json()
            answers.append((who, response.status_code, body.get("decision") or body.get("code")))

    threads = [
        threading.Thread(target=decide, args=(who, verb))
        for who in ("reviewer", "reviewer2")
        for verb in ("approve", "deny", "approve")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 6
    assert {status for _, status, _ in answers} <= {200, 409}
    winners = {(who, seen) for who, status, seen in answers if status == 200}
    assert len(winners) == 1, answers  # one principal's one decision; its repeats answer the same
    assert len(decisions(api.log, approval_id)) == 1
    (winner,) = winners
    final = api.settled(run_id)
    assert final["status"] == ("done" if winner[1] == "approved" else "refused")
    assert {code for _, status, code in answers if status == 409} <= {"ALREADY_DECIDED"}


# -- the paused request's Idempotency-Key ----------------------------------------------------------


def test_a_retry_with_the_paused_requests_key_returns_the_current_state(api: Api) -> None:
    key = {"Idempotency-Key": "pay-landlord-deposit"}
    paused = api.pause(headers=key)
    with api.client() as client:
        still = client.post("/v1/programs", json=PAY, headers=key)
    assert (still.status_code, still.headers["idempotent-replayed"], still.json()["status"]) == (
        202,
        "true",
        "awaiting_approval",
    )
    assert still.headers["location"] == f"/v1/runs/{paused['run_id']}"
    with api.client("reviewer") as client:
        client.post(f"/v1/approvals/{paused['approval']['id']}/approve", json={"reason": "ok"}).raise_for_status()
    api.settled(paused["run_id"])
    with api.client() as client:
        now = client.post("/v1/programs", json=PAY, headers=key)
    assert now.status_code == 200, now.text
    body = now.json()
    assert (body["run_id"], body["status"], body["answer"]) == (paused["run_id"], "done", "sent 25.00")
    assert len(body["chain"]) == 2
    assert len(transfers_to(NEW_IBAN)) == 1  # the retry ran nothing


# -- the webhook -------------------------------------------------------------------------------


def test_the_webhook_is_told_of_a_request_signed_and_retried_after_a_500(api: Api) -> None:
    approval_id = api.pause()["approval"]["id"]
    api.receiver.wait_for(2, timeout=30)
    (_first_headers, first_body, first_status), (headers, body, status) = api.receiver.deliveries[:2]
    assert (first_status, status) == (500, 204)
    assert body == first_body  # the same event, retried
    event = json.loads(body)
    assert (event["type"], event["approval"]["approval_id"]) == ("approval.requested", approval_id)
    assert event["approval"]["operation"] == "send_payment"
    # Only what a notifier needs: the details are fetched through the authenticated API.
    assert event["approval"]["links"]["approval"] == f"/v1/approvals/{approval_id}"
    assert not {"program", "arguments", "observed", "lookups", "provenance"} & set(event["approval"])
    signature = headers[SIGNATURE_HEADER]
    assert verify_signature(api.webhook_key, signature, body)
    assert not verify_signature(api.webhook_key, signature, body.replace(b"send_payment", b"send_paymenT"))
    assert not verify_signature(b"0" * 64, signature, body)
    key_file = Path(api.log.path.parent / "keys" / "webhook.key")
    assert key_file.stat().st_mode & 0o077 == 0


def test_an_expired_request_can_only_be_denied(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from charter.approvals import store as approvals_store

    paused = api.pause()
    approval_id = paused["approval"]["id"]
    api.service.stop_approvals()  # no worker: it would deny the expired request itself (expire_due)
    soon = datetime.now(UTC) + timedelta(hours=25)  # the payments contract's requests wait 24 hours

    class Later(datetime):  # the store's clock, a day on
        @classmethod
        def now(cls, tz: Any = None) -> Later:
            return cls.fromtimestamp(soon.timestamp(), tz)

    monkeypatch.setattr(approvals_store, "datetime", Later)
    with api.client("reviewer") as client:
        assert client.get(f"/v1/approvals/{approval_id}").json()["status"] == "expired"
        late = client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "sorry, late"})
        problem(late, 409, "approval-expired", "APPROVAL_EXPIRED")
        denied = client.post(f"/v1/approvals/{approval_id}/deny", json={"reason": "too late"})
    assert (denied.status_code, denied.json()["status"]) == (200, "denied")
    (decided,) = decisions(api.log, approval_id)
    assert (decided.decision, decided.approver) == ("denied", "reviewer")


# -- `charter serve` as a real process -------------------------------------------------------------


def test_charter_serve_resumes_at_start_what_was_decided_while_it_was_down(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    from charter.approvals import ApprovalStore
    from charter.runner import Runner

    backend.seed()
    path = ROOT / "contracts" / "payments.yaml"
    Registry().publish(load_contract(path), path.read_text(encoding="utf-8"))
    token = TokenStore(charter_home / "tokens.yaml").add("holder", "holder", HOLDER_SCOPES, HOLDER_ATTRIBUTES)
    log = AuditLog(charter_home / "audit.db")
    paused = Runner(audit=log, sandbox=shared_sandbox).execute(
        PAY_NEW_IBAN,
        contract=Registry().get("payments"),
        principal=Principal("holder", frozenset(HOLDER_SCOPES), dict(HOLDER_ATTRIBUTES)),
        inputs={"iban": NEW_IBAN},
    )
    assert (paused.status, paused.approval_id is not None) == ("awaiting_approval", True)
    assert paused.approval_id is not None
    approvals = ApprovalStore(log)
    approvals.decide(paused.approval_id, Principal("reviewer", frozenset({"payments:approve"})), "approved", "ok")
    assert transfers_to(NEW_IBAN) == []  # decided, and nothing resumed it: no server ran

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "charter", "serve", f"127.0.0.1:{port}", "--approval-webhook", "http://127.0.0.1:9/"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while approvals.get(paused.approval_id).resume_status in (None, "interrupted"):
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "charter serve did not resume the decided approval"
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            try:
                view = httpx.get(f"http://127.0.0.1:{port}/v1/runs/{paused.run_id}", headers=headers).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "charter serve did not answer"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(30)
    assert (view["status"], view["answer"], len(view["chain"])) == ("done", "sent 25.00", 2)
    assert [t["amount"] for t in transfers_to(NEW_IBAN)] == ["25.00"]
    assert (charter_home / "keys" / "webhook.key").stat().st_mode & 0o777 == 0o600  # made for the webhook


def test_charter_serve_refuses_a_webhook_that_is_not_http() -> None:
    result = charter("serve", "127.0.0.1:0", "--approval-webhook", "file:///etc/passwd")
    assert result.returncode == 1
    assert "is not an http:// or https:// URL" in result.stderr


def test_a_second_flagged_call_pauses_again_and_the_run_follows_a_chain_of_two(api: Api) -> None:
    second = backend.INJECTED_IBAN  # another IBAN that is no saved payee
    program = (
        "from decimal import Decimal\n"
        'first = payments.send_payment(account="ACC-1001", recipient=inputs["iban"], amount=Decimal("25.00"), '
        'reference="Deposit")\n'
        'again = payments.send_payment(account="ACC-1001", recipient=inputs["second"], amount=Decimal("5.00"), '
        'reference="Fee")\n'
        'conclude(f"sent {first.amount} and {again.amount}")\n'
    )
    with api.client() as client:
        paused = client.post(
            "/v1/programs",
            json={"contract": "payments", "program": program, "inputs": {"iban": NEW_IBAN, "second": second}},
        ).json()
    with api.client("reviewer") as client:
        client.post(f"/v1/approvals/{paused['approval']['id']}/approve", json={"reason": "ok"}).raise_for_status()
        deadline = time.monotonic() + 90
        while True:  # the resumed run pauses at the second payment: a new request
            pending = client.get("/v1/approvals", params={"status": "pending"}).json()
            if pending:
                break
            assert time.monotonic() < deadline, "the resumed run did not pause again"
            time.sleep(0.1)
        (again,) = pending
        assert (again["operation"], again["call"]) == ("send_payment", 2)
        assert again["run_id"] != paused["run_id"]  # requested by the resumed run
        with api.client() as holder:
            waiting = holder.get(f"/v1/runs/{paused['run_id']}").json()
        assert (waiting["status"], waiting["approval"]["id"], len(waiting["chain"])) == (
            "awaiting_approval",
            again["approval_id"],
            2,
        )
        client.post(f"/v1/approvals/{again['approval_id']}/approve", json={"reason": "ok"}).raise_for_status()
    final = api.settled(paused["run_id"])
    assert (final["status"], final["answer"], len(final["chain"])) == ("done", "sent 25.00 and 5.00", 3)
    assert [t["amount"] for t in transfers_to(NEW_IBAN) + transfers_to(second)] == ["25.00", "5.00"]
    deadline = time.monotonic() + 30
    while True:  # the webhook was told of both requests, the second by the worker that resumed the first
        told = {json.loads(body)["approval"]["approval_id"] for _, body, status in api.receiver.deliveries}
        if told == {paused["approval"]["id"], again["approval_id"]}:
            break
        assert time.monotonic() < deadline, told
        time.sleep(0.05)


def test_a_tampered_request_is_decided_by_nobody_and_answered_as_a_conflict(api: Api) -> None:
    approval_id = api.pause()["approval"]["id"]
    # Whoever can write the file edits the signed request past the append-only triggers.
    with closing(sqlite3.connect(api.log.path)) as db, db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute(
            "UPDATE receipts SET body = CAST(replace(body, ?, ?) AS BLOB) WHERE kind = 'approval_request'",
            ('"reason":"recipient not a saved payee"', '"reason":"a saved payee"'),
        )
    with api.client("reviewer") as client:
        refused = client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "small amount"})
    problem(refused, 409, "approval-tampered", "TAMPERED")
    assert decisions(api.log, approval_id) == []
    assert transfers_to(NEW_IBAN) == []
