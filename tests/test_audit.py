"""The audit log on a real SQLite file: tamper detection, crashes with a killed process,
bundles a third party verifies, and replay of logged runs in the real sandbox."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from charter.audit import AuditLog, Decision, Outcome, Verification, export_run, verify_bundle, verify_log
from charter.audit.keys import load_or_create_secret_key, load_or_create_signing_key
from charter.errors import UsageError
from charter.replay import replay_run
from tests.conftest import ROOT, Governed, charter, compiled

D = "from decimal import Decimal\n"
REFUND = D + (
    "check = orders.verify_refund(id=125)\n"
    'order = orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")\n'
    "conclude(f'refunded {order.refunded}')"
)
CANCEL_123 = 'try:\n    orders.cancel_order(id=123, reason="x")\nexcept ContractViolation as v:\n    refuse(v.reason)'


def verify(log: AuditLog, **kwargs: object) -> Verification:
    return verify_log(log, log.trusted_keys(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def three_runs(governed: Governed) -> Governed:
    governed.run(REFUND, intent="refund 5 on order 125")
    governed.run(CANCEL_123, intent="cancel 123")
    governed.run("conclude(str(orders.get_order(id=101).status))")
    report = verify(governed.log)
    assert report.ok, report.findings
    assert (report.receipts, report.runs, report.sealed) == (13, 3, 3)
    return governed


def tamper(log: AuditLog, sql: str, *params: object) -> None:
    """Edit the file as an attacker with write access would: past the append-only triggers."""
    with sqlite3.connect(log.path) as db:
        db.execute("DROP TRIGGER IF EXISTS receipts_no_update")
        db.execute("DROP TRIGGER IF EXISTS receipts_no_delete")
        db.execute(sql, params)


def problems(log: AuditLog) -> str:
    report = verify(log)
    assert not report.ok
    return "\n".join(str(f) for f in report.findings)


def test_the_log_refuses_updates_and_deletes(three_runs: Governed) -> None:
    with sqlite3.connect(three_runs.log.path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE receipts SET kind = 'x' WHERE log_seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM receipts WHERE log_seq = 1")


COLUMNS = ["log_seq", "run_id", "seq", "kind", "body", "signature", "link"]


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize("log_seq", [1, 4, 9, 13])  # an opening, a decision, a middle seal, the head
def test_a_flipped_byte_in_any_stored_field_is_found(three_runs: Governed, column: str, log_seq: int) -> None:
    log = three_runs.log
    with sqlite3.connect(log.path) as db:
        value = db.execute(f"SELECT {column} FROM receipts WHERE log_seq = ?", (log_seq,)).fetchone()[0]
    if isinstance(value, int):
        flipped: object = value + 100
    else:
        raw = bytearray(value if isinstance(value, bytes) else value.encode())
        raw[len(raw) // 2] ^= 0x01
        flipped = bytes(raw) if isinstance(value, bytes) else raw.decode(errors="replace")
    tamper(log, f"UPDATE receipts SET {column} = ? WHERE log_seq = ?", flipped, log_seq)
    found = problems(log)
    assert f"receipt {log_seq if column != 'log_seq' else log_seq + 100}" in found or "log ends" in found, found


def test_a_deleted_receipt_is_found(three_runs: Governed) -> None:
    tamper(three_runs.log, "DELETE FROM receipts WHERE log_seq = 4")
    found = problems(three_runs.log)
    assert "receipt 5" in found
    assert "log_seq 5 where 4 was expected: receipts are missing (deleted)" in found


def test_reordered_receipts_are_found(three_runs: Governed) -> None:
    log = three_runs.log
    tamper(log, "UPDATE receipts SET log_seq = -4 WHERE log_seq = 4")
    tamper(log, "UPDATE receipts SET log_seq = 4 WHERE log_seq = 5")
    tamper(log, "UPDATE receipts SET log_seq = 5 WHERE log_seq = -4")
    found = problems(log)
    assert "column log_seq holds 4 but the signed body says 5" in found


def test_an_inserted_receipt_is_found(three_runs: Governed) -> None:
    log = three_runs.log
    with sqlite3.connect(log.path) as db:
        row = db.execute("SELECT * FROM receipts WHERE log_seq = 3").fetchone()
    tamper(log, "UPDATE receipts SET log_seq = log_seq + 1000 WHERE log_seq > 3")
    tamper(log, "UPDATE receipts SET log_seq = log_seq - 999 WHERE log_seq > 1000")
    tamper(log, "INSERT INTO receipts VALUES (4, ?, 99, ?, ?, ?, ?)", row[1], row[3], row[4], row[5], row[6])
    assert "receipt 4" in problems(log)


def test_a_truncated_log_is_found(three_runs: Governed) -> None:
    tamper(three_runs.log, "DELETE FROM receipts WHERE log_seq > 9")
    found = problems(three_runs.log)
    assert "the log ends at receipt 9 but its head names receipt 13" in found


def test_a_truncation_with_a_rewound_head_is_found_against_a_kept_head(three_runs: Governed) -> None:
    log = three_runs.log
    kept = log.head()
    assert kept is not None
    with sqlite3.connect(log.path) as db:
        link_9 = db.execute("SELECT link FROM receipts WHERE log_seq = 9").fetchone()[0]
    tamper(log, "DELETE FROM receipts WHERE log_seq > 9")
    tamper(log, "UPDATE head SET log_seq = 9, link = ?", link_9)
    assert verify(log).ok  # consistent on its own: only an outside record of the head catches this
    report = verify(log, expect_head=kept)
    assert any("the head you expected (receipt 13" in str(f) for f in report.findings)


def test_a_deleted_run_is_found(three_runs: Governed) -> None:
    log = three_runs.log
    second = log.run_ids()[1]
    tamper(log, "DELETE FROM receipts WHERE run_id = ?", second)
    assert "receipts are missing (deleted)" in problems(log)


def test_a_resigned_log_with_another_key_is_refused(three_runs: Governed, tmp_path: Path) -> None:
    # Whoever can write the log cannot also make it verify: the trusted key lives beside
    # the private key, not in the log.
    log = three_runs.log
    intruder = load_or_create_signing_key(tmp_path / "intruder")
    tamper(log, "INSERT INTO keys VALUES (?, ?)", intruder.key_id, intruder.public.raw)
    body = log.stored_at(13)
    assert body is not None
    signature = intruder.sign(body.body.replace(log.signing_key.key_id.encode(), intruder.key_id.encode()))
    tamper(log, "UPDATE receipts SET signature = ? WHERE log_seq = 13", signature)
    assert "receipt 13" in problems(log)


def test_the_private_key_is_private(charter_home: Path, three_runs: Governed) -> None:
    key_file = charter_home / "keys" / "receipts.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key_file.chmod(0o644)
    with pytest.raises(UsageError, match="readable by others"):
        load_or_create_signing_key(charter_home / "keys")


def test_every_signature_mode_checks_each_receipt(three_runs: Governed) -> None:
    assert verify(three_runs.log, every_signature=True).signatures_checked == 13
    assert verify(three_runs.log).signatures_checked == 3  # each run's last receipt; the log's last is one


# -- bundles ---------------------------------------------------------------------------


def test_the_secret_key_is_private_and_keyed(tmp_path: Path) -> None:
    key = load_or_create_secret_key(tmp_path / "keys")
    path = tmp_path / "keys" / "secrets.key"
    assert path.stat().st_mode & 0o777 == 0o600
    digest = key.digest("hunter2")
    assert digest.startswith(f"hmac-sha256:{key.key_id}:")
    assert "hunter2" not in digest
    assert load_or_create_secret_key(tmp_path / "keys").digest("hunter2") == digest  # loaded, not made anew
    assert load_or_create_secret_key(tmp_path / "other").digest("hunter2") != digest  # another key, another digest
    path.chmod(0o644)
    with pytest.raises(UsageError, match=r"readable by others \(mode 644\); run `chmod 600"):
        load_or_create_secret_key(tmp_path / "keys")
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(UsageError, match="holds 5 bytes, not a 32-byte HMAC key"):
        load_or_create_secret_key(tmp_path / "keys")


def test_an_exported_run_verifies_with_the_public_key_alone(three_runs: Governed, tmp_path: Path) -> None:
    log = three_runs.log
    run_id = log.run_ids()[0]
    bundle = tmp_path / "run.jsonl"
    bundle.write_text("\n".join(export_run(log, run_id)) + "\n", encoding="utf-8")
    report = verify_bundle(bundle)
    assert report.ok, report.findings
    assert (report.receipts, report.signatures_checked) == (6, 6)

    lines = bundle.read_text(encoding="utf-8").splitlines()
    bundle.write_text("\n".join(lines[:3] + lines[4:]) + "\n", encoding="utf-8")
    found = "\n".join(str(f) for f in verify_bundle(bundle).findings)
    assert "the bundle's header lists 6 receipts, it holds 5" in found
    assert "receipt #3 of its run where #2 was expected" in found

    edited = "\n".join(lines).replace("late", "LATE")  # the refund's reason, inside a signed body
    assert edited != "\n".join(lines)
    bundle.write_text(edited, encoding="utf-8")
    assert not verify_bundle(bundle).ok


# -- crashes -----------------------------------------------------------------------------

CRASH_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from charter.audit import AuditLog
from charter.audit.store import RunRecorder
from charter.backends import ContractBackend
from charter.principal import Principal
from charter.runner import Runner
from tests.conftest import compiled

BOUNDARY = {boundary!r}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Crashing(ContractBackend):
    def invoke(self, operation, arguments, context=None):
        call = (context.call if context is not None else None, operation)  # the write reads its entity first
        if (BOUNDARY, call) in (("write-decided", (2, "cancel_order")), ("write-returned", (3, "get_order"))):
            die()   # before the backend: the write's decision is on disk / its result reached the program
        result = super().invoke(operation, arguments, context)
        if (BOUNDARY, call) in (
            ("read-reached-backend", (1, "get_order")),
            ("write-acted", (2, "cancel_order")),
            ("later-read-reached-backend", (3, "get_order")),
        ):
            die()   # the backend answered; nothing of it is recorded yet
        return result

seal = RunRecorder.seal

def sealing(self, sealed):
    if BOUNDARY == "sealing":
        die()   # the program concluded; the seal (with the last read) is not committed
    final = seal(self, sealed)
    if BOUNDARY == "sealed":
        die()   # the seal is committed; the conclusion has not left yet
    return final

RunRecorder.seal = sealing

contract = compiled("orders")
runner = Runner(audit=AuditLog(sys.argv[1]), backend_for=Crashing)
program = (
    "before = orders.get_order(id=101)\\n"
    'orders.cancel_order(id=101, reason=f"crash test, was {{before.status}}")\\n'
    "after = orders.get_order(id=101)\\n"
    "conclude(after.status)"
)
principal = Principal("ada", frozenset({{"orders:read", "orders:write"}}))
execution = runner.execute(program, contract=contract, principal=principal)
print("survived", execution.answer)
"""

CALLS = {1: "get_order", 2: "cancel_order", 3: "get_order"}


# Under the commit rule a read's Decision and Outcome ride on the run's next durable commit
# (the write's decision, the write's outcome, the seal); a write's decision is durable before
# it acts and its outcome before the program sees it. At each boundary: the calls the log
# holds (decision, outcome status or None), the write's effect, and what is in doubt.
@pytest.mark.parametrize(
    ("boundary", "status_after", "logged", "in_doubt", "sealed"),
    [
        # The read reached the backend; its result never left the sandbox, and nothing of it is logged.
        ("read-reached-backend", "pending", {}, [], False),
        # The write's decision is durable, with the read whose result its arguments carry.
        ("write-decided", "pending", {1: "ok", 2: None}, [(2, "cancel_order")], False),
        ("write-acted", "cancelled", {1: "ok", 2: None}, [(2, "cancel_order")], False),
        # The write's outcome was durable before the program saw its result.
        ("write-returned", "cancelled", {1: "ok", 2: "ok"}, [], False),
        # A read after the write reached the backend: lost with the crash, and nothing of it left.
        ("later-read-reached-backend", "cancelled", {1: "ok", 2: "ok"}, [], False),
        ("sealing", "cancelled", {1: "ok", 2: "ok"}, [], False),
        # The seal carries the last read: everything is on disk before the conclusion leaves.
        ("sealed", "cancelled", {1: "ok", 2: "ok", 3: "ok"}, [], True),
    ],
)
def test_a_killed_process_loses_nothing_that_left_the_sandbox(
    governed: Governed,
    boundary: str,
    status_after: str,
    logged: dict[int, str | None],
    in_doubt: list[tuple[int, str]],
    sealed: bool,
) -> None:
    log = governed.log
    script = CRASH_SCRIPT.format(root=str(ROOT), boundary=boundary)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(log.path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "survived" not in result.stdout  # the conclusion never left
    from examples.orders import backend

    assert backend.get_order(id=101)["status"] == status_after

    report = verify(log)
    assert report.ok, report.findings
    [run_id] = log.run_ids()
    assert report.incomplete == ([] if sealed else [run_id])
    record = log.run(run_id)
    assert (record.sealed is not None) == sealed
    decisions = {r.call: r for r in record.receipts if isinstance(r, Decision)}
    outcomes = {r.call: r.status for r in record.receipts if isinstance(r, Outcome)}
    # Exactly the calls expected, allowed, with their outcomes: in particular every write that
    # reached the backend has its durable decision, and every read whose result a durable
    # receipt could carry out of the sandbox (the write's arguments) is in the log before it.
    assert {call: (d.operation, d.decision) for call, d in decisions.items()} == {
        call: (CALLS[call], "ALLOW") for call in logged
    }
    assert {call: outcomes.get(call) for call in decisions} == logged
    if 2 in logged:
        write = decisions[2]
        assert write.arguments is not None
        assert "was pending" in write.arguments  # it carries read 1's result
    # In doubt is exact: the allowed calls with no outcome, the same in the record and the report.
    assert [(d.call, d.operation) for d in record.in_doubt()] == in_doubt
    assert report.in_doubt == [(run_id, call, operation) for call, operation in in_doubt]
    # Nothing resumes a dead run: a new run is a new run id, and the write is never redone blindly.
    assert governed.run("conclude(orders.get_order(id=101).status)").answer == status_after
    cancel_outcomes = [r for r in log.run(run_id).receipts if isinstance(r, Outcome) and r.operation == "cancel_order"]
    assert len(cancel_outcomes) == (1 if logged.get(2) else 0)


# -- replay ------------------------------------------------------------------------------

CLOCKED = D + (
    "import datetime, random\n"
    "check = orders.verify_refund(id=125)\n"
    'order = orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")\n'
    "conclude(f'{order.refunded} at {datetime.datetime.now().isoformat()} lucky {random.randint(1, 10**9)}')"
)


def test_replay_of_a_run_is_identical(governed: Governed, shared_sandbox: object) -> None:
    execution = governed.run(CLOCKED)
    denied = governed.run(CANCEL_123)
    from examples.orders import backend

    backend.seed()  # the backend moved on since; replay must not care, or touch it
    for run_id in (execution.run_id, denied.run_id):
        report = replay_run(governed.log.run(run_id), compiled("orders"), governed.runner.sandbox)
        assert report.identical, report
    assert backend.get_order(id=125)["refunded"] == 20  # replay wrote nothing


def test_replay_reports_a_different_program_as_diverged(governed: Governed) -> None:
    execution = governed.run(REFUND)
    record = governed.log.run(execution.run_id)
    from dataclasses import replace

    import msgspec

    changed = msgspec.structs.replace(record.opened, program=record.opened.program.replace("5.00", "6.00"))
    report = replay_run(replace(record, opened=changed), compiled("orders"), governed.runner.sandbox)
    assert not report.identical
    assert report.divergences[0].startswith("call 2 is refund_order with arguments")


# -- the command line ------------------------------------------------------------------


def test_exec_and_audit_commands(charter_home: Path, tmp_path: Path) -> None:
    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    sys.path.insert(0, str(ROOT))
    from examples.orders import backend

    backend.seed()
    program = tmp_path / "cancel.py"
    program.write_text(CANCEL_123, encoding="utf-8")
    result = charter("exec", str(program), "--contract", "orders", "-p", "ada", "-s", "orders:write", "--json")
    assert result.returncode == 2, result.stderr
    import json

    conclusion = json.loads(result.stdout)
    assert conclusion["status"] == "refused"
    assert conclusion["reason"].startswith("Order 123 cannot be cancelled: it is dispatched")
    run_id = conclusion["run_id"]

    listed = json.loads(charter("audit", "list", "--json", "--status", "refused").stdout)
    assert [r["run_id"] for r in listed] == [run_id]
    shown = charter("audit", "show", run_id[:10])
    assert "DENY STATE_VIOLATION" in shown.stdout
    assert "orders.cancel_order(id=123" in shown.stdout
    assert charter("audit", "verify").returncode == 0
    assert charter("audit", "verify", run_id).returncode == 0
    replayed = charter("audit", "replay", run_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replay identical" in replayed.stdout
    bundle = tmp_path / "b.jsonl"
    assert charter("audit", "export", run_id, "-o", str(bundle)).returncode == 0
    key = charter_home / "keys" / "receipts.pub"
    assert charter("audit", "verify", "--bundle", str(bundle), "--public-key", str(key)).returncode == 0

    with sqlite3.connect(charter_home / "audit.db") as db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute("UPDATE receipts SET body = replace(body, 'dispatched', 'delivered') WHERE kind = 'decision'")
    broken = charter("audit", "verify")
    assert broken.returncode == 1
    assert "BROKEN receipt 2" in broken.stdout
    missing = charter("audit", "show", "nosuchrun")
    assert missing.returncode == 1
    assert "no run 'nosuchrun' in the audit log" in missing.stderr
