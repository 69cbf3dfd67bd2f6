"""The approvals store: requests and decisions as signed receipts in a real audit log (SQLite).

Paused runs are written through the real AuditLog and RunRecorder (Opened, ApprovalRequested,
Sealed awaiting_approval), as the gate and runner write them; one test pauses a real program
in the sandbox at a real gate. Decisions go through ApprovalStore: four eyes by TR39 skeleton,
the approver scope, expiry, exactly one decision across threads and processes.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from charter.approvals import (
    ApprovalConflict,
    ApprovalError,
    ApprovalExpired,
    ApprovalForbidden,
    ApprovalNotFound,
    ApprovalStore,
    SelfApproval,
    chain_of,
    latest_of,
)
from charter.audit import (
    ApprovalDecided,
    ApprovalRequested,
    Asked,
    Attempted,
    AuditLog,
    Concluded,
    Opened,
    args_digest,
    verify_log,
)
from charter.audit.index import RunFilter
from charter.audit.receipts import text_sha256
from charter.audit.store import AUDIT_SCHEMA, now_iso
from charter.errors import InvalidPrincipal, RunNotFound, UsageError
from charter.principal import Principal
from charter.runner import Runner, sealed_receipt
from charter.sandbox import Completed, Paused
from tests.conftest import ROOT, Governed, charter, compiled

SCOPE = "invoices:approve"
PROGRAM = (
    'invoice = invoices.get_invoice(number="INV-1003")\ninvoices.pay_invoice(number="INV-1003")\nconclude("paid")\n'
)
MIRA = Principal("mira", frozenset({SCOPE}))
NOOR = Principal("noor", frozenset({SCOPE}))


@pytest.fixture
def log(charter_home: Path) -> AuditLog:
    return AuditLog(charter_home / "audit.db")


@pytest.fixture
def store(log: AuditLog) -> ApprovalStore:
    return ApprovalStore(log)


def opened(
    log: AuditLog,
    *,
    principal: str = "kim",
    contract: str = "invoices",
    program: str = PROGRAM,
    resumes: str | None = None,
    approval_id: str | None = None,
) -> Opened:
    """A program run's opening; resuming `resumes` under `approval_id`, it names the decision's link
    and carries the paused run's logical id, as the resumer writes it."""
    approval_link = logical_run_id = None
    if resumes is not None and approval_id is not None:
        approval_link = next(r.link for r in log.stored(approval_id))
        paused = log.run(resumes).opened
        logical_run_id = (paused.logical_run_id if isinstance(paused, Opened) else None) or resumes
    return Opened(
        run_id=secrets.token_hex(16),
        seq=0,
        at=now_iso(),
        intent=None,
        program=program,
        program_sha256=text_sha256(program),
        principal=principal,
        scopes=("invoices:pay",),
        contract=contract,
        version="1.0.0",
        contract_sha256="c" * 64,
        clock="2026-11-29T12:00:00+00:00",
        seed=7,
        limits={},
        host="test",
        pid=0,
        resumes=resumes,
        approval_id=approval_id,
        approval_link=approval_link,
        logical_run_id=logical_run_id,
    )


def request(
    log: AuditLog,
    *,
    principal: str = "kim",
    contract: str = "invoices",
    scope: str = SCOPE,
    expires_in: timedelta = timedelta(hours=24),
    resumes: tuple[str, str] | None = None,  # (paused run, approval id) this run resumes
) -> tuple[str, str]:
    """A program run paused at call 2 (pay_invoice) for a new approval: (run id, approval id)."""
    opening = opened(
        log,
        principal=principal,
        contract=contract,
        resumes=resumes[0] if resumes else None,
        approval_id=resumes[1] if resumes else None,
    )
    recorder = log.open_run(opening)
    approval_id = secrets.token_hex(16)
    arguments, digest = args_digest({"number": "INV-1003"})
    recorder.approval_requested(
        ApprovalRequested(
            run_id=opening.run_id,
            seq=0,
            at=now_iso(),
            approval_id=approval_id,
            call=2,
            operation="pay_invoice",
            args_sha256=digest,
            arguments=arguments,
            program_sha256=opening.program_sha256,
            contract=contract,
            version="1.0.0",
            contract_sha256="c" * 64,
            principal=principal,
            logical_run_id=opening.logical_run_id or opening.run_id,
            reason="an invoice is paid by a second person",
            clause="approval:pay_invoice",
            boundary=None,
            approver_scope=scope,
            expires=(datetime.now(UTC) + expires_in).isoformat(),
            line=2,
        )
    )
    paused = Paused(approval_id=approval_id, call=2, operation="pay_invoice", reason="a second person", line=2)
    recorder.seal(sealed_receipt(opening.run_id, paused))
    return opening.run_id, approval_id


def resume(log: AuditLog, paused_run: str, approval_id: str, *, seal: bool = True) -> str:
    """A run resuming `paused_run` under `approval_id`, completed (or, without `seal`, crashed)."""
    recorder = log.open_run(opened(log, resumes=paused_run, approval_id=approval_id))
    if seal:
        recorder.seal(sealed_receipt(recorder.run_id, Completed(answer="paid")))
    return recorder.run_id


def records(log: AuditLog) -> list[ApprovalDecided]:
    found = [row.decoded() for row in log.stored() if row.kind == "approval_decision"]
    return [r for r in found if isinstance(r, ApprovalDecided)]


def approvals_rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT * FROM approvals ORDER BY approval_id").fetchall()


# -- deciding ---------------------------------------------------------------------------------


def test_approve_and_deny_each_write_one_signed_record_that_is_not_a_run(log: AuditLog, store: ApprovalStore) -> None:
    run_a, approval_a = request(log)
    _, approval_b = request(log)
    assert [v.status for v in store.list()] == ["pending", "pending"]

    approved, written = store.decide(approval_a, MIRA, "approved", "the invoice matches the order")
    assert written
    denied, _ = store.decide(approval_b, NOOR, "denied", "paid twice already")
    [request_a] = [r.decoded() for r in log.stored(run_a) if r.kind == "approval_request"]
    assert (approved.run_id, approved.seq, approved.prev) == (approval_a, 0, "")
    assert (approved.request_run, approved.call, approved.operation) == (run_a, 2, "pay_invoice")
    assert approved.args_sha256 == args_digest({"number": "INV-1003"})[1]
    assert approved.request_link == next(r.link for r in log.stored(run_a) if r.kind == "approval_request")
    assert isinstance(request_a, ApprovalRequested)
    assert (approved.approver, approved.approver_scopes, approved.expired) == ("mira", (SCOPE,), False)
    assert records(log) == [approved, denied]

    view = store.get(approval_a)
    assert (view.status, view.decision, view.decided_by, view.decision_reason) == (
        "approved",
        "approved",
        "mira",
        "the invoice matches the order",
    )
    [stored] = list(log.stored(approval_a))
    assert view.decision_link == stored.link
    assert store.get(approval_b).status == "denied"
    assert store.pending_resumes() == [approval_a, approval_b]

    # A record is not a run: no listing shows it, no run lookup finds it, verify takes it as it is.
    assert approval_a not in log.run_ids()
    assert approval_a not in {r.run_id for r in log.runs()}
    assert approval_a not in {r.run_id for r in log.list_runs(RunFilter(), limit=50)}
    with pytest.raises(RunNotFound):
        log.run(approval_a)
    with pytest.raises(RunNotFound):
        log.resolve(approval_a[:12])
    report = verify_log(log, log.trusted_keys(), every_signature=True)
    assert report.ok, [str(f) for f in report.findings]
    assert (report.runs, report.incomplete, report.undiagnosed) == (2, [], [])
    verified = charter("audit", "verify", "--every-signature", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    body = json.loads(verified.stdout)
    assert (body["ok"], body["interrupted"], body["undiagnosed"], body["findings"]) == (True, [], [], [])


def test_a_record_written_twice_is_refused_by_the_log_itself(log: AuditLog, store: ApprovalStore) -> None:
    _, approval_id = request(log)
    first, _ = store.decide(approval_id, MIRA, "approved", "fine")
    from charter.errors import AuditError

    with pytest.raises(AuditError, match=f"already holds the record {approval_id}"):
        log.append_record(first)
    assert len(records(log)) == 1
    assert verify_log(log, log.trusted_keys()).ok


def test_four_eyes_refuses_the_requester_by_skeleton(log: AuditLog, store: ApprovalStore) -> None:
    _, approval_id = request(log, principal="sasha")
    for look_alike in ("sasha", "Sasha", "SASHA", "ѕаѕһа"):  # the last: Cyrillic dze, a, dze, shha, a
        with pytest.raises(SelfApproval) as refused:
            store.decide(approval_id, Principal(look_alike, frozenset({SCOPE})), "approved", "mine")
        assert refused.value.code == "SELF_APPROVAL"
        assert "four eyes" in str(refused.value)
    # An id mixing scripts (alice with a Cyrillic U+0430 for its a) cannot even be a principal.
    with pytest.raises(InvalidPrincipal, match="mixes scripts"):
        Principal("аlice", frozenset({SCOPE}))
    assert records(log) == []
    assert store.get(approval_id).status == "pending"
    # A request recorded for such an id (an older log, another writer) still refuses its look-alike.
    _, mixed = request(log, principal="аlice")
    with pytest.raises(SelfApproval):
        store.decide(mixed, Principal("alice", frozenset({SCOPE})), "approved", "mine")
    decided, _ = store.decide(approval_id, MIRA, "approved", "a second person checked it")
    assert decided.approver == "mira"


def test_an_approver_without_the_scope_is_forbidden(log: AuditLog, store: ApprovalStore) -> None:
    _, approval_id = request(log)
    for scopes in (frozenset(), frozenset({"invoices:pay", "payments:approve", "audit:read"})):
        with pytest.raises(ApprovalForbidden) as refused:
            store.decide(approval_id, Principal("mira", scopes), "denied", "no")
        assert refused.value.code == "FORBIDDEN_SCOPE"
        assert SCOPE in str(refused.value)
    with pytest.raises(ApprovalNotFound) as missing:
        store.decide("0" * 32, MIRA, "approved", "fine")
    assert missing.value.code == "APPROVAL_NOT_FOUND"
    assert records(log) == []


def test_decide_trusts_the_signed_request_not_the_index(log: AuditLog, store: ApprovalStore) -> None:
    _, approval_id = request(log)
    # Whoever can write the file edits the derived index: another requester and an easier scope.
    with closing(sqlite3.connect(log.path)) as db, db:
        db.execute("UPDATE approvals SET principal = 'nobody', approver_scope = 'invoices:pay'")
    with pytest.raises(SelfApproval):
        store.decide(approval_id, Principal("kim", frozenset({"invoices:pay"})), "approved", "mine")
    with pytest.raises(ApprovalForbidden):
        store.decide(approval_id, Principal("eve", frozenset({"invoices:pay"})), "approved", "sure")
    # Or edits the signed request itself, past the append-only triggers: nothing is decided.
    with closing(sqlite3.connect(log.path)) as db, db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute(
            "UPDATE receipts SET body = CAST(replace(body, ?, ?) AS BLOB) WHERE kind = 'approval_request'",
            ('"approver_scope":"invoices:approve"', '"approver_scope":"invoices:pays"'),
        )
    with pytest.raises(ApprovalError) as tampered:
        store.decide(approval_id, Principal("eve", frozenset({"invoices:pays"})), "approved", "sure")
    assert tampered.value.code == "TAMPERED"
    assert records(log) == []


@pytest.mark.parametrize("reason", ["", "   ", "x" * 2001])
def test_a_decision_needs_a_reason(log: AuditLog, store: ApprovalStore, reason: str) -> None:
    _, approval_id = request(log)
    with pytest.raises(UsageError, match="reason"):
        store.decide(approval_id, MIRA, "approved", reason)
    assert records(log) == []


def test_an_expired_request_can_only_be_denied_and_expire_due_denies_it(log: AuditLog, store: ApprovalStore) -> None:
    _, late = request(log, expires_in=timedelta(hours=1))
    _, unanswered = request(log, expires_in=timedelta(hours=1))
    _, fresh = request(log, expires_in=timedelta(days=3))
    later = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(ApprovalExpired) as refused:
        store.decide(late, MIRA, "approved", "sorry, I was away", now=later)
    assert refused.value.code == "APPROVAL_EXPIRED"
    assert records(log) == []
    denied, written = store.decide(late, MIRA, "denied", "too late; ask again", now=later)
    assert written
    assert (denied.decision, denied.expired) == ("denied", False)

    [expired] = store.expire_due(now=later)
    assert (expired.approval_id, expired.decision, expired.approver, expired.expired) == (
        unanswered,
        "denied",
        "charter",
        True,
    )
    assert store.expire_due(now=later) == []  # once
    view = store.get(unanswered)
    assert (view.status, view.expired_unanswered, view.decided_by) == ("denied", True, "charter")
    assert store.get(fresh).status == "pending"
    assert {r.approval_id for r in records(log)} == {late, unanswered}


def test_a_request_past_its_expiry_reads_expired_until_denied(log: AuditLog, store: ApprovalStore) -> None:
    _, past = request(log, expires_in=timedelta(seconds=-1))
    _, open_ = request(log)
    assert [v.approval_id for v in store.list(status="expired")] == [past]
    assert [v.approval_id for v in store.list(status="pending")] == [open_]
    view = store.get(past)
    assert (view.status, view.expired_unanswered, view.decision) == ("expired", True, None)
    with pytest.raises(ApprovalExpired):
        store.decide(past, MIRA, "approved", "fine")
    with pytest.raises(UsageError, match="unknown approval status"):
        store.list(status="stale")


def test_deciding_twice_is_idempotent_for_the_same_answer_and_a_conflict_otherwise(
    log: AuditLog, store: ApprovalStore
) -> None:
    _, approval_id = request(log)
    first, written = store.decide(approval_id, MIRA, "approved", "checked")
    again, written_again = store.decide(approval_id, MIRA, "approved", "checked, again")
    assert (written, written_again) == (True, False)
    assert again == first
    for approver, decision in ((MIRA, "denied"), (NOOR, "approved"), (NOOR, "denied")):
        with pytest.raises(ApprovalConflict) as conflict:
            store.decide(approval_id, approver, decision, "changed my mind")  # type: ignore[arg-type]
        assert conflict.value.code == "ALREADY_DECIDED"
        assert conflict.value.existing == first
        assert "already approved by 'mira'" in str(conflict.value)
    assert records(log) == [first]


def test_two_threads_racing_write_exactly_one_decision(log: AuditLog, store: ApprovalStore) -> None:
    for _ in range(3):
        _, approval_id = request(log)
        start = threading.Barrier(2)
        results: dict[str, Any] = {}

        def decide(
            approver: Principal,
            decision: str,
            approval_id: str = approval_id,
            start: threading.Barrier = start,
            results: dict[str, Any] = results,
        ) -> None:
            start.wait()
            try:
                results[approver.id] = ApprovalStore(log).decide(approval_id, approver, decision, "race")  # type: ignore[arg-type]
            except ApprovalError as error:
                results[approver.id] = error

        threads = [threading.Thread(target=decide, args=a) for a in ((MIRA, "approved"), (NOOR, "denied"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        won = [v for v in results.values() if isinstance(v, tuple)]
        lost = [v for v in results.values() if isinstance(v, ApprovalError)]
        assert len(won) == len(lost) == 1, results
        assert isinstance(lost[0], ApprovalConflict)  # refused under the lock, not by the writer
        assert lost[0].existing == won[0][0]
        assert [r for r in records(log) if r.approval_id == approval_id] == [won[0][0]]


RACER = """
import sys, time
from pathlib import Path
from charter.approvals import ApprovalConflict, ApprovalStore
from charter.audit import AuditLog
from charter.principal import Principal

db, approval_id, approver, decision, go = sys.argv[1:]
store = ApprovalStore(AuditLog(Path(db)))
Path(go + "." + approver).touch()
while not Path(go).exists():
    time.sleep(0.001)
try:
    decided, written = store.decide(approval_id, Principal(approver, frozenset({"invoices:approve"})), decision, "race")
    print("written" if written else "existing", decided.approver)
except ApprovalConflict as conflict:
    print("conflict", conflict.existing.approver)
"""


def test_processes_racing_on_one_file_write_exactly_one_decision(log: AuditLog, tmp_path: Path) -> None:
    _, approval_id = request(log)
    go = tmp_path / "go"
    racers = [("mira", "approved"), ("noor", "denied"), ("omar", "approved")]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(log.path), approval_id, approver, decision, str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for approver, decision in racers
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"go.{a}").exists() for a, _ in racers):
        assert time.monotonic() < deadline, "the racers did not start"
        time.sleep(0.01)
    go.touch()
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        outputs.append(out.split())
    [decision] = records(log)
    assert sorted(o[0] for o in outputs) == ["conflict", "conflict", "written"]
    assert {o[1] for o in outputs} == {decision.approver}  # the losers name the winner
    assert verify_log(log, log.trusted_keys(), every_signature=True).ok


# -- who sees what ----------------------------------------------------------------------------


def test_visibility_the_requester_the_approver_scope_and_audit_read(log: AuditLog, store: ApprovalStore) -> None:
    _, kims = request(log, principal="kim")
    _, lees = request(log, principal="lee", contract="payments", scope="payments:approve")

    def seen(viewer: Principal | None, **filters: Any) -> list[str]:
        return [v.approval_id for v in store.list(visible_to=viewer, **filters)]

    assert seen(None) == [lees, kims]  # newest first
    assert seen(Principal("auditor", frozenset({"audit:read"}))) == [lees, kims]
    assert seen(Principal("kim", frozenset({"invoices:pay"}))) == [kims]
    assert seen(Principal("lee")) == [lees]
    assert seen(MIRA) == [kims]
    assert seen(Principal("pat", frozenset({"payments:approve"}))) == [lees]
    stranger = Principal("eve", frozenset({"invoices:pay", "invoices:read"}))
    assert seen(stranger) == []
    with pytest.raises(ApprovalNotFound):
        store.get(kims, visible_to=stranger)
    with pytest.raises(ApprovalNotFound):
        store.get(lees, visible_to=MIRA)
    assert store.get(kims, visible_to=MIRA).principal == "kim"
    assert seen(None, contract="payments") == [lees]
    assert seen(None, limit=1) == [lees]
    store.decide(kims, MIRA, "denied", "no")
    assert seen(None, status="denied") == [kims]
    assert seen(None, status="pending") == [lees]


# -- resumes, chains and the index ------------------------------------------------------------


def test_resume_runs_chains_and_pending_resumes(log: AuditLog, store: ApprovalStore) -> None:
    paused, first = request(log)
    assert store.pending_resumes() == []  # undecided
    assert chain_of(log, paused)[0].run_id == paused
    store.decide(first, MIRA, "approved", "ok")
    assert store.pending_resumes() == [first]
    crashed = resume(log, paused, first, seal=False)
    assert store.pending_resumes() == [first]  # still to do: no resume sealed
    # The resumed run pauses again at a later call: a second approval (a chain of two).
    second_run, second = request(log, resumes=(paused, first))
    assert store.resume_runs(first) == [crashed, second_run]
    assert store.pending_resumes() == []
    assert store.get(first).resume_run == second_run
    assert store.get(first).resume_status == "awaiting_approval"
    store.decide(second, NOOR, "approved", "ok too")
    assert store.pending_resumes() == [second]
    last = resume(log, second_run, second)
    assert store.pending_resumes() == []
    assert store.get(second).resume_status == "done"

    expected = [paused, crashed, second_run, last]
    for member in expected:
        assert [r.run_id for r in chain_of(log, member)] == expected, member
        assert latest_of(log, member).run_id == last
    assert latest_of(log, last[:10]).status == "done"
    lone, _ = request(log)
    assert [r.run_id for r in chain_of(log, lone)] == [lone]
    with pytest.raises(RunNotFound):
        chain_of(log, first)  # an approval record is no run
    report = verify_log(log, log.trusted_keys())
    assert report.ok
    assert report.incomplete == [crashed]


def test_a_run_the_edited_index_lists_as_a_resume_is_not_chained_unless_its_opened_says_so(
    log: AuditLog, store: ApprovalStore
) -> None:
    paused, first = request(log)
    store.decide(first, MIRA, "approved", "ok")
    resumed = resume(log, paused, first)
    unrelated, _ = request(log)
    # Whoever can write the file edits the derived index: an unrelated run now "resumed" it.
    with closing(sqlite3.connect(log.path)) as db, db:
        db.execute(
            "UPDATE approvals SET resume_runs = ? WHERE approval_id = ?", (json.dumps([resumed, unrelated]), first)
        )
    assert store.resume_runs(first) == [resumed]  # read from the signed Opened receipts, not the index
    assert [r.run_id for r in chain_of(log, paused)] == [paused, resumed]
    assert latest_of(log, paused).run_id == resumed


def test_an_intent_that_concluded_awaiting_approval_chains_to_its_program_runs(
    log: AuditLog, store: ApprovalStore
) -> None:
    intent = log.open_run(
        Asked(
            run_id=secrets.token_hex(16),
            seq=0,
            at=now_iso(),
            intent="pay INV-1003",
            principal="kim",
            scopes=("invoices:pay",),
            contract="invoices",
            version="1.0.0",
            contract_sha256="c" * 64,
            model="scripted",
            settings={},
            host="test",
            pid=0,
        )
    )
    paused, approval_id = request(log)
    intent.attempt(
        Attempted(
            run_id=intent.run_id,
            seq=0,
            at=now_iso(),
            attempt=1,
            model="scripted",
            prompt_sha256="p" * 64,
            contract_block_sha256="b" * 64,
            api_tries=1,
            writes_closed=None,
            program=PROGRAM,
            program_sha256=text_sha256(PROGRAM),
            program_run=paused,
        )
    )
    intent.conclude(
        Concluded(
            run_id=intent.run_id,
            seq=0,
            at=now_iso(),
            status="awaiting_approval",
            answer=None,
            data=None,
            reason="waiting",
            attempts=("awaiting_approval",),
            program_runs=(paused,),
            usage={},
            receipts=0,
            cause="APPROVAL_REQUIRED",
            approval_id=approval_id,
        )
    )
    assert [r.run_id for r in chain_of(log, intent.run_id)] == [intent.run_id, paused]
    store.decide(approval_id, MIRA, "approved", "ok")
    resumed = resume(log, paused, approval_id)
    assert [r.run_id for r in chain_of(log, intent.run_id)] == [intent.run_id, paused, resumed]
    latest = latest_of(log, intent.run_id)
    assert (latest.run_id, latest.status) == (resumed, "done")


def test_the_index_rebuilt_by_upgrade_equals_the_live_one(log: AuditLog, store: ApprovalStore, tmp_path: Path) -> None:
    paused, approved = request(log)
    store.decide(approved, MIRA, "approved", "ok")
    resume(log, paused, approved, seal=False)
    resume(log, paused, approved)
    _, denied = request(log, principal="lee")
    store.decide(denied, NOOR, "denied", "no")
    request(log, expires_in=timedelta(seconds=-5))
    store.expire_due()
    request(log)
    live = approvals_rows(log.path)
    assert len(live) == 4
    assert {row[13] for row in live} == {"approved", "denied", "pending"}

    # The log as the previous release (schema 4) left it: same receipts, no approvals table.
    home = tmp_path / "older"
    home.mkdir()
    with closing(sqlite3.connect(log.path)) as live_db, closing(sqlite3.connect(home / "audit.db")) as db:
        live_db.backup(db)  # the receipts in the WAL too
        db.execute("DROP TABLE approvals")
        db.execute("DROP TABLE denials")  # and what steps 6 and 7 added after it (its indexes go with it)
        for index in ("runs_by_contract", "runs_by_principal", "runs_by_denial_code", "runs_in_doubt"):
            db.execute(f"DROP INDEX {index}")
        db.execute("ALTER TABLE runs DROP COLUMN in_doubt")
        db.execute("PRAGMA user_version = 4")
        db.commit()
    upgrade = charter("db", "upgrade", "--home", str(home))
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"version 4 -> {AUDIT_SCHEMA.version}" in upgrade.stdout
    assert approvals_rows(home / "audit.db") == live


# -- a real pause at the gate -----------------------------------------------------------------


def test_a_program_paused_at_the_gate_is_listed_shown_and_decided(governed: Governed) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox)
    program = 'invoice = invoices.get_invoice(number="INV-1003")\ninvoices.pay_invoice(number="INV-1003")\n'
    execution = runner.execute(
        program, contract=compiled("invoices"), principal=Principal("kim", frozenset({"invoices:pay", "invoices:read"}))
    )
    assert execution.status == "awaiting_approval"
    store = ApprovalStore(governed.log)
    [view] = store.list(visible_to=Principal("kim"))
    assert (view.approval_id, view.run_id, view.status) == (execution.approval_id, execution.run_id, "pending")
    assert (view.operation, view.call, view.clause, view.principal) == ("pay_invoice", 2, "approval:pay_invoice", "kim")
    assert view.program == program
    assert view.approver_scope == SCOPE  # the contract's default: <contract>:approve
    assert json.loads(view.arguments or "null") == {"number": "INV-1003"}
    assert datetime.fromisoformat(view.expires) > datetime.now(UTC) + timedelta(hours=23)
    with pytest.raises(SelfApproval):
        store.decide(view.approval_id, Principal("kim", frozenset({SCOPE})), "approved", "mine")
    decided, _ = store.decide(view.approval_id, MIRA, "approved", "the amount is right")
    assert decided.request_run == execution.run_id
    assert store.pending_resumes() == [view.approval_id]
    assert verify_log(governed.log, governed.log.trusted_keys(), every_signature=True).ok
    assert invoices.get_invoice(number="INV-1003")["state"] == "approved"  # not paid: nothing resumed it yet


# -- the index only finds: every fact shown or acted on is the signed receipts' -----------------


def edit_index(log: AuditLog, sql: str, *params: Any) -> None:
    """Whoever can write the file edits the derived, unsigned approvals index (it has no trigger)."""
    with closing(sqlite3.connect(log.path)) as db, db:
        assert (
            db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'approvals'").fetchall()
            == []
        )
        db.execute(sql, params)


def test_a_decision_forged_in_the_index_is_shown_tampered_never_approved(log: AuditLog, store: ApprovalStore) -> None:
    _, approval = request(log)
    edit_index(
        log,
        "UPDATE approvals SET status = 'approved', decided_by = 'bob', decided_at = ?, decision_reason = 'forged' "
        "WHERE approval_id = ?",
        now_iso(),
        approval,
    )
    view = store.get(approval)
    assert (view.status, view.verified, view.decision, view.decided_by, view.decision_reason) == (
        "tampered",
        False,
        None,
        None,
        None,
    )
    assert any("status 'approved'" in f and "'pending'" in f for f in view.findings), view.findings
    assert [v.approval_id for v in store.list(status="tampered")] == [approval]
    # Listed under every filter, marked (B3: an edit of the index must not empty an approver's queue).
    for status in ("approved", "pending"):
        assert [(v.approval_id, v.status) for v in store.list(status=status)] == [(approval, "tampered")]
    assert store.pending_resumes() == []  # no decision record: nothing to resume


def test_a_scope_edited_in_the_index_is_neither_shown_nor_named_in_the_refusal(
    log: AuditLog, store: ApprovalStore
) -> None:
    _, approval = request(log)
    edit_index(log, "UPDATE approvals SET approver_scope = 'invoices:pay' WHERE approval_id = ?", approval)
    view = store.get(approval)
    assert (view.status, view.approver_scope) == ("tampered", SCOPE)
    payer = Principal("bob", frozenset({"invoices:pay"}))
    with pytest.raises(ApprovalNotFound):
        store.get(approval, visible_to=payer)  # visibility follows the signed scope too
    with pytest.raises(ApprovalForbidden, match=f"needs the scope {SCOPE}") as refused:
        store.decide(approval, payer, "approved", "ok")
    assert "invoices:pay" not in str(refused.value)


def test_an_expiry_extended_in_the_index_is_shown_tampered_and_still_auto_denied(
    log: AuditLog, store: ApprovalStore
) -> None:
    _, approval = request(log, expires_in=timedelta(minutes=1))
    signed_expires = store.get(approval).expires
    edit_index(log, "UPDATE approvals SET expires = '2099-01-01T00:00:00.000000+00:00' WHERE approval_id = ?", approval)
    view = store.get(approval)
    assert (view.status, view.expires) == ("tampered", signed_expires)
    [denied] = store.expire_due(now=datetime.now(UTC) + timedelta(minutes=2))
    assert (denied.approval_id, denied.approver, denied.decision, denied.expired) == (
        approval,
        "charter",
        "denied",
        True,
    )
    assert signed_expires in denied.reason
    assert "2099" not in denied.reason


def test_a_deleted_index_row_still_shows_tampered_and_still_expires(log: AuditLog, store: ApprovalStore) -> None:
    _, approval = request(log, expires_in=timedelta(minutes=1))
    edit_index(log, "DELETE FROM approvals WHERE approval_id = ?", approval)
    view = store.get(approval)
    assert (view.status, view.verified) == ("tampered", False)
    assert [v.approval_id for v in store.list()] == [approval]
    [denied] = store.expire_due(now=datetime.now(UTC) + timedelta(minutes=2))
    assert denied.approval_id == approval
    assert store.pending_resumes() == [approval]  # found from its decision record


def test_a_decision_hidden_from_the_index_is_still_found(log: AuditLog, store: ApprovalStore) -> None:
    _, approval = request(log)
    store.decide(approval, MIRA, "approved", "checked")
    edit_index(
        log,
        "UPDATE approvals SET status = 'pending', decided_by = NULL, decided_at = NULL, decision_reason = NULL, "
        "decision_log_seq = NULL WHERE approval_id = ?",
        approval,
    )
    assert store.pending_resumes() == [approval]
    assert store.get(approval).status == "tampered"
    with pytest.raises(ApprovalConflict):
        store.decide(approval, NOOR, "denied", "the index says nobody decided")
    assert store.expire_due(now=datetime.now(UTC) + timedelta(days=2)) == []


def test_an_edited_decision_record_is_shown_tampered(log: AuditLog, store: ApprovalStore) -> None:
    _, approval = request(log)
    store.decide(approval, MIRA, "denied", "no")
    with closing(sqlite3.connect(log.path)) as db, db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute(
            "UPDATE receipts SET body = CAST(replace(CAST(body AS TEXT), '\"denied\"', '\"approved\"') AS BLOB) "
            "WHERE kind = 'approval_decision' AND run_id = ?",
            (approval,),
        )
    view = store.get(approval)
    assert (view.status, view.verified) == ("tampered", False)
    assert any("does not verify" in f for f in view.findings), view.findings


def test_the_resume_status_is_read_from_the_resumed_runs_receipts_not_the_runs_index(
    log: AuditLog, store: ApprovalStore
) -> None:
    paused, approval = request(log)
    store.decide(approval, MIRA, "approved", "ok")
    resumed = resume(log, paused, approval)
    with closing(sqlite3.connect(log.path)) as db, db:
        db.execute("UPDATE runs SET status = 'refused' WHERE run_id = ?", (resumed,))
    view = store.get(approval)
    assert (view.resume_run, view.resume_status, view.status) == (resumed, "done", "approved")
