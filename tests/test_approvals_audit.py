"""The audit surfaces for approvals (issue 16): verify checks the links between a paused run, the
decision on its approval and the run resuming it; show tells the story in order; list and export.

The chains here are written receipt by receipt through the real AuditLog and RunRecorder on a
real SQLite file, exactly as the gate, the approval store and the resumer write them; tampering
edits that file as an attacker with write access would (the append-only triggers dropped).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from charter.agent import Charter, ScriptedModel
from charter.audit import (
    ApprovalDecided,
    ApprovalRequested,
    AuditLog,
    Decision,
    Opened,
    Outcome,
    RunRecorder,
    Verification,
    export_run,
    now_iso,
    verify_bundle,
    verify_log,
)
from charter.audit._approval_records import chain_of
from charter.audit.receipts import args_digest, link_of, text_sha256
from charter.cli._audit_approvals import story
from charter.replay import replay_run
from charter.runner import sealed_receipt
from charter.sandbox import Completed, Paused, Stats
from tests.conftest import charter, compiled
from tests.test_approvals_pause import NEW_IBAN, PAY_NEW_IBAN, Bank, bank  # noqa: F401  (bank: the fixture)
from tests.test_approvals_resume import REFUND, RITA, Env, env  # noqa: F401  (env: the fixture)

PROGRAM = (
    "account = payments.get_account(id='acc-1')\n"  # line 1
    "\n"
    "payment = payments.send_payment(\n"  # line 3: the flagged call
    "    account='acc-1', iban='DE89370400440532013000', amount='1200.00'\n"
    ")\n"
    "conclude(f'sent {payment.id}')\n"
)
SEND_ARGS = {"account": "acc-1", "amount": "1200.00", "iban": "DE89370400440532013000"}
CONTRACT = ("payments", "1.0.0", "c" * 64)


def opened(*, principal: str = "ada", **fields: Any) -> Opened:
    given: dict[str, Any] = {
        "run_id": secrets.token_hex(16),
        "seq": 0,
        "at": now_iso(),
        "intent": "pay the supplier",
        "program": PROGRAM,
        "program_sha256": text_sha256(PROGRAM),
        "principal": principal,
        "scopes": ("payments:read", "payments:write"),
        "contract": CONTRACT[0],
        "version": CONTRACT[1],
        "contract_sha256": CONTRACT[2],
        "clock": "2026-11-29T12:00:00+00:00",
        "seed": 7,
        "limits": {},
        "host": "test",
        "pid": 1,
    }
    return Opened(**{**given, **fields})


def decision(run_id: str, call: int, operation: str, arguments: dict[str, Any], line: int, **fields: Any) -> Decision:
    shown, digest = args_digest(arguments)
    return Decision(
        run_id=run_id,
        seq=0,
        at=now_iso(),
        call=call,
        operation=operation,
        args_sha256=digest,
        arguments=shown,
        decision="ALLOW",
        code="OK",
        message="allowed",
        clause=None,
        boundary=None,
        contract=CONTRACT[0],
        version=CONTRACT[1],
        contract_sha256=CONTRACT[2],
        principal="ada",
        nonce=secrets.token_hex(16),
        idempotency_key=None,
        observed=None,
        line=line,
        **fields,
    )


def outcome(run_id: str, call: int, operation: str, result: dict[str, Any]) -> Outcome:
    text = json.dumps(result)
    return Outcome(
        run_id=run_id,
        seq=0,
        at=now_iso(),
        call=call,
        operation=operation,
        status="ok",
        code=None,
        message=None,
        result=text,
        result_sha256="0" * 64,
    )


def link_of_kind(log: AuditLog, run_id: str, kind: str) -> str:
    [link] = [r.link for r in log.stored(run_id) if r.kind == kind]
    return link


@dataclass
class Chain:
    log: AuditLog
    paused: str  # the run that paused
    approval_id: str
    resumed: str  # the run resuming it


def pause(log: AuditLog, approval_id: str, *, principal: str = "ada") -> str:
    """A program run that reads, then pauses at the flagged call (call 2, line 3)."""
    recorder = log.open_run(opened(principal=principal))
    run_id = recorder.run_id
    recorder.decision(decision(run_id, 1, "get_account", {"id": "acc-1"}, 1))
    recorder.outcome(outcome(run_id, 1, "get_account", {"id": "acc-1", "balance": "5000.00"}))
    shown, digest = args_digest(SEND_ARGS)
    request = ApprovalRequested(
        run_id=run_id,
        seq=0,
        at=now_iso(),
        approval_id=approval_id,
        call=2,
        operation="send_payment",
        args_sha256=digest,
        arguments=shown,
        program_sha256=text_sha256(PROGRAM),
        contract=CONTRACT[0],
        version=CONTRACT[1],
        contract_sha256=CONTRACT[2],
        principal=principal,
        logical_run_id=run_id,
        reason="the recipient is not a saved payee",
        clause="approval:send_payment",
        boundary=None,
        approver_scope="payments:approve",
        expires="2026-11-30T12:00:00+00:00",
        line=3,
    )
    recorder.approval_requested(request)
    paused = Paused(
        approval_id=approval_id, call=2, operation="send_payment", reason=request.reason, line=3, stats=Stats(calls=2)
    )
    recorder.seal(sealed_receipt(run_id, paused))
    return run_id


def decide(
    log: AuditLog,
    approval_id: str,
    paused: str,
    *,
    verdict: str = "approved",
    record_id: str | None = None,
    request_link: str | None = None,
    **fields: Any,
) -> str:
    """The decision record, as the approval store writes it (AuditLog.append_record)."""
    digest = args_digest(SEND_ARGS)[1]
    decided = ApprovalDecided(
        run_id=record_id or approval_id,
        seq=0,
        at=now_iso(),
        approval_id=approval_id,
        request_run=paused,
        request_link=request_link or link_of_kind(log, paused, "approval_request"),
        call=fields.pop("call", 2),
        operation=fields.pop("operation", "send_payment"),
        args_sha256=fields.pop("args_sha256", digest),
        decision=verdict,  # type: ignore[arg-type]
        approver=fields.pop("approver", "grace"),
        approver_scopes=fields.pop("approver_scopes", ("payments:approve",)),
        reason=fields.pop("reason", "checked the invoice with the supplier"),
        expired=fields.pop("expired", False),
    )
    if decided.run_id == approval_id:
        return log.append_record(decided).run_id
    # A forged second record under another id (append_record refuses that): through the same writer.
    recorder: RunRecorder = log.open_run(decided)  # type: ignore[arg-type]
    return recorder.run_id


def resume(log: AuditLog, paused: str, approval_id: str, *, approval_link: str | None = None, **fields: Any) -> str:
    """The resumed run: its own receipts start at the approved call, which executes and concludes."""
    link = approval_link or link_of_kind(log, approval_id, "approval_decision")
    recorder = log.open_run(
        opened(resumes=paused, approval_id=approval_id, approval_link=link, logical_run_id=paused, **fields)
    )
    run_id = recorder.run_id
    recorder.decision(decision(run_id, 2, "send_payment", SEND_ARGS, 3, approval_id=approval_id))
    recorder.outcome(outcome(run_id, 2, "send_payment", {"id": "pay-9"}), durable=True)
    recorder.seal(sealed_receipt(run_id, Completed(answer="sent pay-9", stats=Stats(calls=2))))
    return run_id


@pytest.fixture
def chain(charter_home: Path) -> Chain:
    log = AuditLog(charter_home / "audit.db")
    approval_id = secrets.token_hex(16)
    paused = pause(log, approval_id)
    decide(log, approval_id, paused)
    resumed = resume(log, paused, approval_id)
    report = verify(log)
    assert report.ok, report.findings
    assert (report.runs, report.approvals, report.sealed) == (2, 1, 2)
    assert report.incomplete == []
    return Chain(log, paused, approval_id, resumed)


def verify(log: AuditLog, **kwargs: Any) -> Verification:
    return verify_log(log, log.trusted_keys(), every_signature=True, **kwargs)


def findings(log: AuditLog, **kwargs: Any) -> str:
    report = verify(log, **kwargs)
    assert not report.ok
    return "\n".join(str(f) for f in report.findings)


def tamper(log: AuditLog, sql: str, *params: object) -> None:
    """Edit the file as an attacker with write access would: past the append-only triggers."""
    with sqlite3.connect(log.path) as db:
        db.execute("DROP TRIGGER IF EXISTS receipts_no_update")
        db.execute("DROP TRIGGER IF EXISTS receipts_no_delete")
        db.execute(sql, params)


def row_of(log: AuditLog, kind: str) -> tuple[int, bytes]:
    [(log_seq, body)] = [(r.log_seq, r.body) for r in log.stored() if r.kind == kind]
    return log_seq, body


# --- verify: the links -------------------------------------------------------------------


def test_a_whole_chain_verifies_as_a_log_and_run_by_run(chain: Chain) -> None:
    for part in (chain.paused, chain.approval_id, chain.resumed):
        report = verify(chain.log, run_id=part)
        assert report.ok, (part, report.findings)
    assert verify(chain.log, run_id=chain.approval_id).approvals == 1


def test_a_tampered_approval_request_is_named(chain: Chain) -> None:
    log_seq, body = row_of(chain.log, "approval_request")
    forged = body.replace(b'"reason":"the recipient is not a saved payee"', b'"reason":"a routine payment"')
    assert forged != body
    tamper(chain.log, "UPDATE receipts SET body = ? WHERE log_seq = ?", forged, log_seq)
    found = findings(chain.log)
    assert f"receipt {log_seq} ApprovalRequested (run {chain.paused}): its stored link is not sha256" in found
    assert f"receipt {log_seq} ApprovalRequested (run {chain.paused}): its Ed25519 signature does not verify" in found


def test_a_tampered_request_whose_link_is_recomputed_breaks_the_decisions_link(chain: Chain) -> None:
    # The attacker changes what was asked (the arguments' hash) and stores a matching link: the
    # signature fails, the seal no longer follows it, and the decision no longer decides it.
    log_seq, body = row_of(chain.log, "approval_request")
    [signature] = [r.signature for r in chain.log.stored() if r.log_seq == log_seq]
    at = body.index(b'"args_sha256":"') + len(b'"args_sha256":"')
    forged = body[:at] + (b"0" if body[at : at + 1] != b"0" else b"1") + body[at + 1 :]
    tamper(
        chain.log,
        "UPDATE receipts SET body = ?, link = ? WHERE log_seq = ?",
        forged,
        link_of(forged, signature),
        log_seq,
    )
    found = findings(chain.log)
    decision_seq, _ = row_of(chain.log, "approval_decision")
    assert f"receipt {log_seq} ApprovalRequested (run {chain.paused}): its Ed25519 signature does not verify" in found
    assert (
        f"receipt {decision_seq} ApprovalDecided (approval {chain.approval_id}): its request_link "
        f"{link_of(body, signature)[:16]}… names no ApprovalRequested receipt of run {chain.paused}"
    ) in found


def test_a_tampered_approval_decision_is_named(chain: Chain) -> None:
    # Turning a denial into an approval (or changing who approved) is an edit of the record.
    log_seq, body = row_of(chain.log, "approval_decision")
    forged = body.replace(b'"approver":"grace"', b'"approver":"mallory"')
    assert forged != body
    tamper(chain.log, "UPDATE receipts SET body = ? WHERE log_seq = ?", forged, log_seq)
    found = findings(chain.log)
    assert f"receipt {log_seq} ApprovalDecided (approval {chain.approval_id}): its stored link is not sha256" in found
    # The resumed run's signed Opened names the decision's true link; the run-by-run view says so too.
    assert not verify(chain.log, run_id=chain.approval_id).ok


def test_a_decision_pointing_at_the_wrong_link_is_named(charter_home: Path) -> None:
    log = AuditLog(charter_home / "audit.db")
    approval_id = secrets.token_hex(16)
    paused = pause(log, approval_id)
    # Signed by the real key, but it links the paused run's first Decision, not its request.
    wrong = link_of_kind(log, paused, "decision")
    decide(log, approval_id, paused, request_link=wrong)
    found = findings(log)
    decision_seq, _ = row_of(log, "approval_decision")
    assert (
        f"receipt {decision_seq} ApprovalDecided (approval {approval_id}): its request_link {wrong[:16]}… names "
        f"no ApprovalRequested receipt of run {paused}"
    ) in found
    assert not verify(log, run_id=approval_id).ok  # the record on its own reads the paused run to check it


def test_a_decision_on_other_arguments_than_were_asked_is_named(charter_home: Path) -> None:
    log = AuditLog(charter_home / "audit.db")
    approval_id = secrets.token_hex(16)
    paused = pause(log, approval_id)
    request_seq, _ = row_of(log, "approval_request")
    decide(log, approval_id, paused, args_sha256="f" * 64, call=3)
    found = findings(log)
    assert (
        "it does not decide the request its request_link names: call 3 where the request "
        f"(receipt {request_seq}) has 2; args_sha256 '{'f' * 64}' where the request (receipt {request_seq}) has"
    ) in found


def test_two_decisions_for_one_approval_are_named(chain: Chain) -> None:
    # A second record (under another id: the first holds the approval's) deciding the same approval.
    first, _ = row_of(chain.log, "approval_decision")
    second = decide(chain.log, chain.approval_id, chain.paused, verdict="denied", record_id=secrets.token_hex(16))
    [second_seq] = [r.log_seq for r in chain.log.stored(second)]
    found = findings(chain.log)
    assert (
        f"receipt {second_seq} ApprovalDecided (approval {second}): a second decision on approval "
        f"{chain.approval_id} (denied by grace): receipt {first} already decided it, and an approval is decided once"
    ) in found
    assert f"this one decides approval {chain.approval_id} under record id {second}" in found


def test_a_resumed_run_pointing_at_a_decision_that_does_not_exist_is_named(charter_home: Path) -> None:
    log = AuditLog(charter_home / "audit.db")
    approval_id = secrets.token_hex(16)
    paused = pause(log, approval_id)
    resumed = resume(log, paused, approval_id, approval_link="e" * 64)  # never decided
    open_seq = next(r.log_seq for r in log.stored(resumed))
    expected = (
        f"receipt {open_seq} Opened (run {resumed}): it resumes under approval {approval_id}, whose decision is not in"
    )
    assert expected + " the log" in findings(log)
    assert expected + " the log" in findings(log, run_id=resumed)


def test_a_resumed_run_whose_link_is_not_the_decisions_is_named(chain: Chain) -> None:
    other = resume(chain.log, chain.paused, chain.approval_id, approval_link="d" * 64)
    decision_seq, _ = row_of(chain.log, "approval_decision")
    found = findings(chain.log, run_id=other)
    assert (
        f"its approval_link dddddddddddddddd… is not the link of the decision on approval {chain.approval_id} "
        f"(receipt {decision_seq})"
    ) in found


def test_a_resumed_run_of_a_run_that_did_not_pause_for_that_approval_is_named(chain: Chain) -> None:
    # The resumed run (completed) is named as the run being resumed: it never paused.
    [decision_link] = [r.link for r in chain.log.stored(chain.approval_id)]
    third = resume(chain.log, chain.resumed, chain.approval_id, approval_link=decision_link)
    found = findings(chain.log, run_id=third)
    assert f"it resumes run {chain.resumed}, but approval {chain.approval_id} was requested in run {chain.paused}" in (
        found
    )
    assert f"the run it resumes, {chain.resumed}, is sealed completed with approval None" in found
    assert f"its logical run id '{chain.resumed}' is not the paused run's '{chain.resumed}'" not in found


def test_a_resumed_run_with_another_program_is_named(chain: Chain) -> None:
    other = "conclude('something else')\n"
    resumed = resume(chain.log, chain.paused, chain.approval_id, program=other, program_sha256=text_sha256(other))
    found = findings(chain.log, run_id=resumed)
    assert f"it runs program sha256 {text_sha256(other)[:16]}…, not the paused run's" in found


# --- export: the bundle carries the chain --------------------------------------------------


def test_a_bundle_of_the_resumed_run_holds_the_chain_and_verifies(chain: Chain, tmp_path: Path) -> None:
    lines = export_run(chain.log, chain.resumed)
    header = json.loads(lines[0])
    assert (header["run_id"], header["chain"], header["approvals"]) == (
        chain.resumed,
        [chain.paused],
        [chain.approval_id],
    )
    kinds = [json.loads(line)["kind"] for line in lines[1:]]
    assert kinds.count("approval_request") == 1
    assert kinds.count("approval_decision") == 1
    bundle = tmp_path / "bundle.jsonl"
    bundle.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = verify_bundle(bundle)
    assert report.ok, report.findings
    # The paused run's bundle carries the decision and the resume just the same.
    assert json.loads(export_run(chain.log, chain.paused)[0])["approvals"] == [chain.approval_id]
    # Without the decision record, the bundle cannot vouch for the resume: verify says what is missing.
    kept = [line for line in lines[1:] if json.loads(line)["kind"] != "approval_decision"]
    header["receipts"] = len(kept)
    bundle.write_text("\n".join([json.dumps(header), *kept]) + "\n", encoding="utf-8")
    found = "\n".join(str(f) for f in verify_bundle(bundle).findings)
    assert f"it resumes under approval {chain.approval_id}, whose decision is not in the bundle" in found


# --- show, list and verify on the command line ----------------------------------------------


def test_audit_show_tells_the_story_of_a_paused_and_resumed_run_in_order(chain: Chain) -> None:
    shown = charter("audit", "show", chain.resumed[:12])
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    story = text[text.index("story") :]
    steps = [
        f"asked: run {chain.paused} (principal ada) called send_payment at call 2, line 3 (reported by the guest)",
        f"paused: approval {chain.approval_id}: the recipient is not a saved payee; approver scope "
        "payments:approve; expires 2026-11-30T12:00:00+00:00",
        "approved by grace",
        "why: checked the invoice with the supplier",
        f"resumed: run {chain.resumed}",
        "result: done: sent pay-9",
    ]
    at = [story.index(step) for step in steps]
    assert at == sorted(at), story
    assert "line 3 (reported by the guest)" in text[: text.index("story")]  # the resumed call's receipt


def test_audit_show_of_a_paused_run_says_what_it_waits_for(charter_home: Path) -> None:
    log = AuditLog(charter_home / "audit.db")
    approval_id = secrets.token_hex(16)
    paused = pause(log, approval_id)
    shown = charter("audit", "show", paused)
    assert shown.returncode == 0, shown.stderr
    assert "line 1 (reported by the guest)" in shown.stdout  # the read before the pause
    assert f"PAUSED for approval {approval_id}" in shown.stdout
    assert "decided: not yet (pending; expires 2026-11-30T12:00:00+00:00)" in shown.stdout
    assert "status: awaiting_approval (cause APPROVAL_REQUIRED)" in shown.stdout
    listed = charter("audit", "list", "--status", "awaiting_approval")
    assert listed.returncode == 0, listed.stderr
    assert paused[:12] in listed.stdout
    assert f"  ada · approval {approval_id[:12]} · cause APPROVAL_REQUIRED" in listed.stdout


def test_audit_show_of_an_approval_id_shows_its_record(chain: Chain) -> None:
    shown = charter("audit", "show", chain.approval_id)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for expected in (
        f"approval {chain.approval_id}",
        f"requested in run {chain.paused}, call 2 send_payment, line 3 (reported by the guest)",
        "rule: approval:send_payment: the recipient is not a saved payee",
        "approver scope: payments:approve",
        "decision: approved by grace (scopes: payments:approve)",
        "why: checked the invoice with the supplier",
        f"resumed by: run {chain.resumed} (done)",
    ):
        assert expected in text, text
    as_json = json.loads(charter("audit", "show", chain.approval_id, "--json").stdout)
    assert as_json["decision"]["decision"] == "approved"
    assert as_json["verified"] is True


def test_audit_show_marks_a_tampered_decision_and_exits_1(chain: Chain) -> None:
    log_seq, body = row_of(chain.log, "approval_decision")
    tamper(
        chain.log,
        "UPDATE receipts SET body = ? WHERE log_seq = ?",
        body.replace(b'"decision":"approved"', b'"decision":"denied"'),
        log_seq,
    )
    shown = charter("audit", "show", chain.approval_id)
    assert shown.returncode == 1
    assert f"UNVERIFIED receipt {log_seq}" in shown.stdout
    # The resumed run's own receipts are intact, but the story it tells rests on the decision.
    resumed = charter("audit", "show", chain.resumed)
    assert resumed.returncode == 1
    assert "the story is NOT VERIFIED: records it rests on failed verification" in resumed.stdout
    assert json.loads(charter("audit", "show", chain.resumed, "--json").stdout)["story_findings"]
    verified = charter("audit", "verify")
    assert verified.returncode == 1
    assert f"receipt {log_seq} ApprovalDecided (approval {chain.approval_id})" in verified.stdout


def test_the_story_of_an_expired_request_denied_by_charter(charter_home: Path) -> None:
    log = AuditLog(charter_home / "audit.db")
    approval_id = secrets.token_hex(16)
    paused = pause(log, approval_id)
    chain = chain_of(log, paused)
    assert chain is not None
    assert story(chain)[-2:] == [
        "  3. decided: not yet (pending; expires 2026-11-30T12:00:00+00:00)",
        f"  4. result: awaiting_approval: waiting for approval {approval_id}",
    ]
    decide(
        log,
        approval_id,
        paused,
        verdict="denied",
        approver="charter",
        approver_scopes=(),
        reason="the request expired unanswered",
        expired=True,
    )
    chain = chain_of(log, paused)
    assert chain is not None
    [decided] = [line for line in story(chain) if "decided:" in line]
    assert decided.startswith("  3. decided: denied by charter at ")
    assert decided.endswith(" (the request expired unanswered)")
    assert verify(log).ok


# --- end to end: the real pause, approval store and resumer write the chain ----------------


def test_a_real_chain_of_two_approvals_verifies_shows_its_story_and_exports(env: Env, tmp_path: Path) -> None:  # noqa: F811
    program = REFUND + "c = orders.cancel_order(id=101, reason='customer asked')\nconclude('refunded and cancelled')\n"
    first, refund_approval = env.paused(program)
    env.store.decide(refund_approval, RITA, "approved", "checked the parcel photos")
    second_run = env.resumer.resume(refund_approval)
    assert second_run.status == "awaiting_approval"
    assert second_run.approval_id is not None
    cancel_approval = second_run.approval_id
    env.store.decide(cancel_approval, RITA, "approved", "the customer asked in writing")
    final = env.resumer.resume(cancel_approval)
    assert (final.status, final.answer) == ("done", "refunded and cancelled")

    # The guest's lines: the refund on line 4, the cancellation on line 5, on the requests and decisions.
    requests = [r for run in (first, second_run.run_id) for r in env.log.run(run).receipts]
    assert [(r.operation, r.line) for r in requests if isinstance(r, ApprovalRequested)] == [
        ("refund_order", 4),
        ("cancel_order", 5),
    ]
    approved = [r for r in env.log.run(final.run_id).receipts if isinstance(r, Decision)]
    assert [(r.operation, r.line, r.approval_id) for r in approved] == [("cancel_order", 5, cancel_approval)]

    report = verify(env.log)
    assert report.ok, report.findings
    assert report.approvals == 2
    for part in (first, refund_approval, second_run.run_id, cancel_approval, final.run_id):
        assert verify(env.log, run_id=part).ok, part

    shown = charter("audit", "show", first)
    assert shown.returncode == 0, shown.stderr
    story = shown.stdout[shown.stdout.index("story (in order)") :]
    steps = [
        f"asked: run {first} (principal ada) called refund_order at call 3, line 4 (reported by the guest)",
        f"paused: approval {refund_approval}",
        "decided: approved by rita",
        "why: checked the parcel photos",
        f"resumed: run {second_run.run_id}",
        f"asked: run {second_run.run_id} (principal ada) called cancel_order at call 4, line 5 (reported by the guest)",
        f"paused: approval {cancel_approval}",
        "why: the customer asked in writing",
        f"resumed: run {final.run_id}",
        "result: done: refunded and cancelled",
    ]
    at = [story.index(step) for step in steps]
    assert at == sorted(at), story

    lines = export_run(env.log, final.run_id)
    header = json.loads(lines[0])
    assert header["chain"] == [first, second_run.run_id]
    assert header["approvals"] == [refund_approval, cancel_approval]
    bundle = tmp_path / "chain.jsonl"
    bundle.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert verify_bundle(bundle).ok


def test_a_real_denial_shows_on_the_resumed_call_and_in_the_story(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that no receipt line folds
    program = REFUND + "conclude('refunded')\n"
    _, approval_id = env.paused(program)
    env.store.decide(approval_id, RITA, "denied", "no photos of the damage")
    resumed = env.resumer.resume(approval_id)
    assert (resumed.status, resumed.cause) == ("refused", "APPROVAL_DENIED")
    shown = charter("audit", "show", resumed.run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"-> DENY APPROVAL_DENIED (approval {approval_id}): refund_order was denied by rita" in shown.stdout
    story = shown.stdout[shown.stdout.index("story (in order)") :]
    steps = [
        f"paused: approval {approval_id}",
        "decided: denied by rita",
        "why: no photos of the damage",
        f"resumed: run {resumed.run_id}",
        "result: refused",
    ]
    at = [story.index(step) for step in steps]
    assert at == sorted(at), story
    assert verify(env.log).ok


def test_audit_show_of_an_intent_that_paused_tells_its_program_runs_story(bank: Bank) -> None:  # noqa: F811
    model = ScriptedModel([f"```python\n{PAY_NEW_IBAN}```"])
    conclusion = Charter(model=model, runner=bank.runner).handle(
        "Pay my landlord's deposit of 25.00 to their new IBAN",
        contract=compiled("payments"),
        principal=bank.holder(),
        inputs={"iban": NEW_IBAN, "amount": "25.00"},
    )
    assert conclusion.status == "awaiting_approval"
    assert isinstance(conclusion.data, dict)
    program_run = conclusion.data["run_id"]
    shown = charter("audit", "show", conclusion.run_id)
    assert shown.returncode == 0, shown.stderr
    story = shown.stdout[shown.stdout.index("story (in order)") :]
    steps = [
        f"asked: run {program_run} (principal ada) called send_payment at call 1, line 2 (reported by the guest)",
        f"paused: approval {conclusion.approval_id}: recipient not a saved payee; approver scope payments:approve",
        "decided: not yet (pending; expires ",
        f"result: awaiting_approval: waiting for approval {conclusion.approval_id}",
    ]
    at = [story.index(step) for step in steps]
    assert at == sorted(at), story


def test_replay_of_each_run_of_a_chain_of_two_approvals_is_identical(env: Env) -> None:  # noqa: F811
    """A paused run's recorded end is the pause: replay answers the call its ApprovalRequested
    holds by pausing as the gate did, for the first run, the middle one (resumed, then paused
    again) and the last; a request whose recorded arguments were changed still diverges."""
    program = REFUND + "c = orders.cancel_order(id=101, reason='customer asked')\nconclude('refunded and cancelled')\n"
    first, refund_approval = env.paused(program)
    env.store.decide(refund_approval, RITA, "approved", "checked the parcel photos")
    middle = env.resumer.resume(refund_approval)
    assert middle.status == "awaiting_approval"
    assert middle.approval_id is not None
    env.store.decide(middle.approval_id, RITA, "approved", "the customer asked in writing")
    final = env.resumer.resume(middle.approval_id)
    assert final.status == "done"

    for run_id, calls in ((first, 3), (middle.run_id, 4), (final.run_id, 4)):
        report = replay_run(env.log.run(run_id), env.contract, env.runner.sandbox, log=env.log)
        assert report.identical, (run_id, report.divergences, report.recorded_outcome, report.replayed_outcome)
        assert (report.recorded_calls, report.replayed_calls) == (calls, calls)
        shown = charter("audit", "replay", run_id)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "conclusion: identical" in shown.stdout
        assert ("(paused for approval" in shown.stdout) == (run_id != final.run_id)
    assert json.loads(charter("audit", "replay", middle.run_id, "--json").stdout)["identical"] is True
    paused_outcome = json.loads(replay_run(env.log.run(first), env.contract, env.runner.sandbox).replayed_outcome)
    assert (paused_outcome["status"], paused_outcome["approval_id"]) == ("paused", refund_approval)

    # The middle run's request, with other arguments recorded: the replayed call is not the asked one.
    record = env.log.run(middle.run_id)
    forged = tuple(
        msgspec.structs.replace(r, args_sha256="0" * 64) if isinstance(r, ApprovalRequested) else r
        for r in record.receipts
    )
    report = replay_run(replace(record, receipts=forged), env.contract, env.runner.sandbox, log=env.log)
    assert not report.identical
    assert any("cancel_order" in d for d in report.divergences), report.divergences
