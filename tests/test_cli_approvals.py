"""`charter approvals ...` and `charter bench approvals` as real processes, on a real audit log.

A payment to an IBAN the holder typed that is not a saved payee pauses in the real sandbox and
gate (the payments contract's approval rule); the CLI then lists, shows, approves, denies and
resumes it against the same SQLite files, and the bank's own database says what was sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from charter.audit import ApprovalDecided, AuditLog, Decision, Opened, verify_log
from charter.cli._demo_approvals import PLUMBER_IBAN, PROGRAM
from charter.contract import load_contract
from charter.principal import Principal
from charter.registry import Registry
from charter.runner import Runner
from charter.sandbox import Sandbox
from examples.payments import backend
from examples.payments.scenarios import HOLDER_ATTRIBUTES, HOLDER_SCOPES
from tests.conftest import ROOT, charter

INPUTS = {"account": backend.HOLDER_ACCOUNT, "iban": PLUMBER_IBAN, "amount": "120.00", "reference": "Boiler repair"}
REVIEWER = ("--principal", "mira", "--scope", "payments:approve")
WAITING_LINE = 4  # `transfer = payments.send_payment(` in PROGRAM


class Paused:
    def __init__(self, log: AuditLog, run_id: str, approval_id: str) -> None:
        self.log, self.run_id, self.approval_id = log, run_id, approval_id


@pytest.fixture
def paused(charter_home: Path, shared_sandbox: Sandbox) -> Paused:
    """The holder's payment to a new IBAN, paused for approval; payments published in the registry."""
    backend.seed()
    path = ROOT / "contracts" / "payments.yaml"
    registry = Registry()
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = AuditLog(charter_home / "audit.db")
    holder = Principal("ada", HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES)
    execution = Runner(audit=log, sandbox=shared_sandbox).execute(
        PROGRAM, contract=registry.get("payments"), principal=holder, inputs=INPUTS
    )
    assert execution.status == "awaiting_approval", execution.text
    assert execution.approval_id is not None
    return Paused(log, execution.run_id, execution.approval_id)


def plumber_transfers() -> list[dict[str, Any]]:
    with backend._db() as db:
        return [dict(r) for r in db.execute("SELECT * FROM transfers WHERE recipient = ?", (PLUMBER_IBAN,))]


def decision_records(log: AuditLog) -> list[ApprovalDecided]:
    return [r for r in (s.decoded() for s in log.stored()) if isinstance(r, ApprovalDecided)]


def resumed_runs(log: AuditLog, approval_id: str) -> list[str]:
    """The runs whose Opened receipt resumes `approval_id`, read from the receipts themselves."""
    opened = (r for r in (s.decoded() for s in log.stored()) if isinstance(r, Opened))
    return [r.run_id for r in opened if r.approval_id == approval_id]


def test_list_shows_the_pending_request(paused: Paused) -> None:
    result = charter("approvals", "list")
    assert result.returncode == 0, result.stderr
    assert paused.approval_id[:12] in result.stdout
    assert "pending" in result.stdout
    assert "payments@1.0.0  send_payment (call 3)" in result.stdout
    assert "ada · recipient not a saved payee · expires" in result.stdout
    as_json = json.loads(charter("approvals", "list", "--status", "pending", "--json").stdout)
    assert [v["approval_id"] for v in as_json] == [paused.approval_id]
    assert json.loads(charter("approvals", "list", "--status", "approved", "--json").stdout) == []
    assert json.loads(charter("approvals", "list", "--contract", "orders", "--json").stdout) == []
    bad = charter("approvals", "list", "--status", "waiting")
    assert bad.returncode == 1
    assert "--status 'waiting' is not an approval status; the statuses are pending, approved" in bad.stderr


def test_show_marks_the_waiting_line_and_what_the_gate_read(paused: Paused) -> None:
    result = charter("approvals", "show", paused.approval_id[:10])  # a unique prefix is enough
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"approval {paused.approval_id}: pending" in text
    assert f"run {paused.run_id}" in text
    assert f"waiting at:  call 3 send_payment, line {WAITING_LINE} (reported by the guest)" in text
    assert "rule:        approval:send_payment: recipient not a saved payee" in text
    assert "who decides: a principal holding payments:approve, never ada (four eyes)" in text
    assert f'"recipient": "{PLUMBER_IBAN}"' in text
    # The program, numbered, with the waiting line (and only it) marked.
    marked = [line for line in text.splitlines() if line.lstrip().startswith(">")]
    assert len(marked) == 1
    assert marked[0].split()[:3] == [">", str(WAITING_LINE), "transfer"]
    assert "payments.send_payment(" in marked[0]
    # What the gate read to decide: both lookups, where the recipient came from, the quota.
    assert 'lookup:     account = get_account({"id":"ACC-1001"})' in text
    assert "lookup:     payees = list_payees(" in text
    assert "provenance: recipient <- request" in text
    assert "quota:      daily_outflow" in text
    view = json.loads(charter("approvals", "show", paused.approval_id, "--json").stdout)
    assert (view["line"], view["status"], view["program"]) == (WAITING_LINE, "pending", PROGRAM)


def test_show_of_an_unknown_id_names_the_code(paused: Paused) -> None:
    unknown = "0" * 32
    result = charter("approvals", "show", unknown)
    assert result.returncode == 9
    assert "error: APPROVAL_NOT_FOUND: " in result.stderr
    assert "how to fix: charter approvals list shows the requests" in result.stderr
    assert charter("approvals", "show", "not-an-id").returncode == 9


def test_approve_by_a_reviewer_resumes_and_concludes(paused: Paused) -> None:
    assert plumber_transfers() == []
    result = charter("approvals", "approve", paused.approval_id, "--reason", "Checked with ada by phone", *REVIEWER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"approval {paused.approval_id} approved by mira: Checked with ada by phone" in result.stdout
    assert f"Paid 120.00 to {PLUMBER_IBAN}" in result.stdout
    # Sent exactly once, by the resumed run, under the approval.
    (sent,) = plumber_transfers()
    assert (sent["amount"], sent["state"]) == ("120.00", "executed")
    (resumed,) = resumed_runs(paused.log, paused.approval_id)
    record = paused.log.run(resumed)
    assert record.status == "done"
    (call,) = [r for r in record.receipts if isinstance(r, Decision)]
    assert (call.operation, call.decision, call.approval_id) == ("send_payment", "ALLOW", paused.approval_id)
    (decided,) = decision_records(paused.log)
    assert (decided.approver, decided.decision, decided.request_run) == ("mira", "approved", paused.run_id)
    assert verify_log(paused.log, paused.log.trusted_keys()).ok
    shown = charter("approvals", "show", paused.approval_id).stdout
    assert "decision:    approved by mira" in shown
    assert f"resumed:     run {resumed}: done" in shown
    # Approving again: the same decision by the same approver is idempotent; nothing runs twice.
    again = charter("approvals", "approve", paused.approval_id, "--reason", "Checked with ada by phone", *REVIEWER)
    assert again.returncode == 0, again.stderr
    assert "already recorded" in again.stdout
    assert len(plumber_transfers()) == 1
    assert len(decision_records(paused.log)) == 1


def test_self_approval_is_refused(paused: Paused) -> None:
    result = charter(
        "approvals", "approve", paused.approval_id, "--reason", "mine", "--principal", "ada",
        "--scope", "payments:approve",
    )  # fmt: skip
    assert result.returncode == 8
    assert "error: SELF_APPROVAL: " in result.stderr
    assert "four eyes: another principal holding payments:approve must decide it" in result.stderr
    assert decision_records(paused.log) == []
    assert resumed_runs(paused.log, paused.approval_id) == []
    assert plumber_transfers() == []
    assert json.loads(charter("approvals", "show", paused.approval_id, "--json").stdout)["status"] == "pending"


def test_a_look_alike_of_the_requester_is_refused(paused: Paused) -> None:
    """U+0251 LATIN SMALL LETTER ALPHA then 'da': a valid single-script id that reads as 'ada'."""
    look_alike = "\u0251da"
    result = charter(
        "approvals", "approve", paused.approval_id, "--reason", "looks fine", "--principal", look_alike,
        "--scope", "payments:approve",
    )  # fmt: skip
    assert result.returncode == 8
    assert "error: SELF_APPROVAL: " in result.stderr
    assert decision_records(paused.log) == []
    assert plumber_transfers() == []


def test_an_approver_without_the_scope_is_refused(paused: Paused) -> None:
    result = charter(
        "approvals", "approve", paused.approval_id, "--reason", "ok", "--principal", "mira",
        "--scope", "payments:read",
    )  # fmt: skip
    assert result.returncode == 8
    assert "error: FORBIDDEN_SCOPE: " in result.stderr
    assert "decide as a principal holding payments:approve (--scope payments:approve" in result.stderr
    assert decision_records(paused.log) == []


def test_deny_concludes_with_approval_denied(paused: Paused) -> None:
    result = charter("approvals", "deny", paused.approval_id, "--reason", "Unknown plumber", *REVIEWER)
    assert result.returncode == 2, result.stdout + result.stderr  # refused: the program did not catch it
    assert f"approval {paused.approval_id} denied by mira: Unknown plumber" in result.stdout
    (resumed,) = resumed_runs(paused.log, paused.approval_id)
    record = paused.log.run(resumed)
    assert record.status == "refused"
    (call,) = [r for r in record.receipts if isinstance(r, Decision)]
    assert (call.operation, call.decision, call.code) == ("send_payment", "DENY", "APPROVAL_DENIED")
    assert "denied by mira: Unknown plumber" in call.message
    assert plumber_transfers() == []
    # A different decision after this one is refused, naming the one kept.
    approve = charter("approvals", "approve", paused.approval_id, "--reason", "changed my mind", *REVIEWER)
    assert approve.returncode == 8
    assert "error: ALREADY_DECIDED: " in approve.stderr
    assert plumber_transfers() == []


def test_no_resume_then_resume(paused: Paused) -> None:
    pending = charter("approvals", "resume", paused.approval_id)
    assert pending.returncode == 1
    assert "is not decided yet: decide it first" in pending.stderr
    decided = charter("approvals", "approve", paused.approval_id, "--reason", "ok", "--no-resume", *REVIEWER)
    assert decided.returncode == 0, decided.stderr
    assert "not resumed (--no-resume)" in decided.stdout
    assert resumed_runs(paused.log, paused.approval_id) == []
    assert plumber_transfers() == []
    resumed = charter("approvals", "resume", paused.approval_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    answer = json.loads(resumed.stdout)
    assert (answer["status"], answer["approval"]["status"]) == ("done", "approved")
    # Resuming again reports the sealed resume; nothing is sent twice.
    again = json.loads(charter("approvals", "resume", paused.approval_id, "--json").stdout)
    assert again["run_id"] == answer["run_id"]
    assert len(plumber_transfers()) == 1


def test_bench_approvals_prints_the_ratio_fields() -> None:
    result = charter("bench", "approvals", "--reads", "1", "--reads", "3", "--samples", "1", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["reads"], figures["samples"]) == ([1, 3], 1)
    assert [r["reads"] for r in figures["results"]] == [1, 3]
    for row in figures["results"]:
        assert row["calls"] == row["reads"] + 1
        for measure in ("fresh_ms", "pause_ms", "resume_ms"):
            assert row[measure]["median"] > 0
        assert row["resume_over_fresh"] == pytest.approx(
            row["resume_ms"]["median"] / row["fresh_ms"]["median"], rel=0.01
        )
    assert figures["audit_verified"] is True
    assert isinstance(figures["goal"]["resume_cheaper_than_fresh"], bool)
    assert figures["machine"]["cpus"] >= 1


def test_webhook_key_is_what_the_server_signs_with(charter_home: Path) -> None:
    from charter.approvals import load_or_create_webhook_key, sign, verify_signature

    result = charter("approvals", "webhook-key")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert len(printed) == 64
    assert charter("approvals", "webhook-key").stdout.strip() == printed  # made once, then read
    key = load_or_create_webhook_key(charter_home / "keys")
    assert key == printed.encode("ascii")
    body = b'{"type":"approval.requested"}'
    assert verify_signature(printed.encode("ascii"), sign(key, body), body)


def test_with_tokens_the_token_file_decides_who_acts(paused: Paused) -> None:
    """Once the token file names principals (a server's deployment), the approver's scopes come
    from its tokens when no --scope is given, and the requester must still hold a token: here
    'ada' has none (revoked), so the resume is refused PRINCIPAL_REVOKED and nothing is sent."""
    from charter.server import TokenStore

    TokenStore().add("reviewer", "mira", ["payments:approve"])
    result = charter("approvals", "approve", paused.approval_id, "--reason", "ok", "--principal", "mira")
    assert result.returncode == 2, result.stdout + result.stderr  # refused
    assert f"approval {paused.approval_id} approved by mira: ok" in result.stdout
    (decided,) = decision_records(paused.log)
    assert decided.approver_scopes == ("payments:approve",)
    (resumed,) = resumed_runs(paused.log, paused.approval_id)
    record = paused.log.run(resumed)
    assert (record.status, record.cause) == ("refused", "PRINCIPAL_REVOKED")
    assert plumber_transfers() == []


def test_a_tampered_request_is_neither_decided_nor_run(paused: Paused) -> None:
    """Whoever can write the file swaps the IBAN in the signed request (past the append-only
    trigger): approving it is refused TAMPERED, nothing is decided, nothing is sent."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(paused.log.path)) as db, db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute(
            "UPDATE receipts SET body = CAST(replace(body, ?, ?) AS BLOB) WHERE kind = 'approval_request'",
            (PLUMBER_IBAN, backend.INJECTED_IBAN),
        )
    result = charter("approvals", "approve", paused.approval_id, "--reason", "ok", *REVIEWER)
    assert result.returncode == 11, result.stdout + result.stderr
    assert "error: TAMPERED: " in result.stderr
    assert "charter audit verify names the receipts" in result.stderr
    assert decision_records(paused.log) == []
    assert resumed_runs(paused.log, paused.approval_id) == []
    assert plumber_transfers() == []


def test_a_decision_forged_in_the_index_is_shown_unverified_not_approved(paused: Paused) -> None:
    """Whoever can write the file edits the unsigned approvals index: list and show say what the
    signed receipts say (no decision) and flag the disagreement, never 'approved by bob'."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(paused.log.path)) as db, db:
        db.execute(
            "UPDATE approvals SET status = 'approved', decided_by = 'bob', decision_reason = 'forged', "
            "approver_scope = 'payments:pay' WHERE approval_id = ?",
            (paused.approval_id,),
        )
    shown = charter("approvals", "show", paused.approval_id)
    assert shown.returncode == 0, shown.stderr
    assert f"approval {paused.approval_id}: tampered" in shown.stdout
    assert "UNVERIFIED: the audit log does not vouch for this request" in shown.stdout
    assert "the approvals index says status 'approved' but the signed receipts say 'pending'" in shown.stdout
    assert "bob" not in shown.stdout.replace("'bob'", "")  # named only as the index's claim
    listed = charter("approvals", "list")
    assert "tampered" in listed.stdout
    assert "approved by bob" not in listed.stdout
    refused = charter(
        "approvals", "approve", paused.approval_id, "--reason", "ok", "--principal", "bob", "--scope", "payments:pay"
    )
    assert "payments:approve" in refused.stderr
    assert "holding payments:pay" not in refused.stderr


def test_a_resume_held_elsewhere_is_reported_not_run_twice(paused: Paused) -> None:
    """A server (here: this process) holds the approval's resume lock: the CLI records the
    decision, then says RESUME_IN_PROGRESS and runs nothing; once the lock is free it resumes."""
    from charter.approvals.resume import _resume_lock

    with _resume_lock(paused.log, paused.approval_id):
        result = charter("approvals", "approve", paused.approval_id, "--reason", "ok", *REVIEWER)
        assert result.returncode == 10, result.stdout + result.stderr
        assert f"approval {paused.approval_id} approved by mira: ok" in result.stdout
        assert "error: RESUME_IN_PROGRESS: " in result.stderr
        assert "another process is resuming it now" in result.stderr
        assert resumed_runs(paused.log, paused.approval_id) == []
    assert plumber_transfers() == []
    assert charter("approvals", "resume", paused.approval_id).returncode == 0
    assert len(plumber_transfers()) == 1


# -- untrusted text reaches the approver's terminal neutralised (ANSI escapes, bidi, markup) --

# Cursor up one line and erase it, a right-to-left override, rich markup: each would act on the
# reader's terminal (or on rich) if printed raw.
HOSTILE = "\x1b[1A\x1b[2K\u202e[bold]x[/bold]"
ESCAPED = "\\x1b[1A\\x1b[2K<U+202E>[bold]x[/bold]"
# The program pauses at the same call (line 4); its conclusion and a last comment hold HOSTILE.
HOSTILE_PROGRAM = PROGRAM.replace(
    'conclude(f"Paid {transfer.amount} to {transfer.recipient}: transfer {transfer.id} is {transfer.state}.")',
    f'conclude("paid {HOSTILE}")\n# {HOSTILE}',
)


def pause(home: Path, sandbox: Sandbox, program: str) -> Paused:
    """Run `program` as the holder with INPUTS on the published payments contract; it must pause."""
    backend.seed()
    path = ROOT / "contracts" / "payments.yaml"
    registry = Registry()
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = AuditLog(home / "audit.db")
    holder = Principal("ada", HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES)
    execution = Runner(audit=log, sandbox=sandbox).execute(
        program, contract=registry.get("payments"), principal=holder, inputs=INPUTS
    )
    assert execution.status == "awaiting_approval", execution.text
    assert execution.approval_id is not None
    return Paused(log, execution.run_id, execution.approval_id)


@pytest.fixture
def hostile(charter_home: Path, shared_sandbox: Sandbox) -> Paused:
    assert HOSTILE_PROGRAM != PROGRAM
    return pause(charter_home, shared_sandbox, HOSTILE_PROGRAM)


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if c in "\x1b\u202e\x9b"]


def test_the_requesters_program_and_the_reasons_reach_the_terminal_escaped(hostile: Paused) -> None:
    shown = charter("approvals", "show", hostile.approval_id)
    assert shown.returncode == 0, shown.stderr
    assert _raw_controls(shown.stdout) == []
    assert f"# {ESCAPED}" in shown.stdout  # the program's last line, as written, made visible
    assert f'conclude("paid {ESCAPED}")' in shown.stdout
    marked = [line for line in shown.stdout.splitlines() if line.lstrip().startswith(">")]
    assert marked[0].split()[:3] == [">", str(WAITING_LINE), "transfer"]  # the mark is where it was

    # A reason with a line of its own that mimics the output: the newline is escaped as well.
    reason = f"ok {HOSTILE}\nresumed:     run 0000: done"
    approved = charter("approvals", "approve", hostile.approval_id, "--reason", reason, *REVIEWER)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert _raw_controls(approved.stdout + approved.stderr) == []
    assert f"approved by mira: ok {ESCAPED}\\x0aresumed:     run 0000: done" in approved.stdout
    assert f"paid {ESCAPED}" in approved.stdout  # the resumed run's conclusion
    assert not any(line.startswith("resumed:     run 0000") for line in approved.stdout.splitlines())

    decided = charter("approvals", "show", hostile.approval_id).stdout
    assert _raw_controls(decided) == []
    assert f": ok {ESCAPED}\\x0aresumed:     run 0000: done" in decided
    listed = charter("approvals", "list").stdout
    assert _raw_controls(listed) == []

    (resumed,) = resumed_runs(hostile.log, hostile.approval_id)
    story = charter("audit", "show", hostile.run_id)
    assert story.returncode == 0, story.stdout + story.stderr
    assert _raw_controls(story.stdout) == []
    assert f"why: ok {ESCAPED}\\x0aresumed:     run 0000: done" in story.stdout
    assert f"result: done: paid {ESCAPED}" in story.stdout
    assert f"# {ESCAPED}" in story.stdout
    record = charter("audit", "show", hostile.approval_id).stdout
    assert _raw_controls(record) == []
    assert f"  why: ok {ESCAPED}\\x0aresumed:     run 0000: done" in record
    assert _raw_controls(charter("audit", "show", resumed).stdout) == []
    assert _raw_controls(charter("audit", "list").stdout) == []
    # JSON keeps the text exactly (it escapes what a terminal acts on, and decodes back to it).
    as_json = charter("approvals", "show", hostile.approval_id, "--json").stdout
    assert _raw_controls(as_json) == []
    assert json.loads(as_json)["decision_reason"] == reason


def test_audit_list_shows_a_paused_run_as_resumed_once_it_is(paused: Paused) -> None:
    def row_of(run_id: str) -> tuple[str, str]:
        lines = charter("audit", "list").stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(run_id[:12]))
        return lines[at], lines[at + 1]

    head, detail = row_of(paused.run_id)
    assert head.split()[3] == "awaiting_approval"
    assert f"approval {paused.approval_id[:12]} · cause APPROVAL_REQUIRED" in detail
    assert charter("approvals", "approve", paused.approval_id, "--reason", "ok", *REVIEWER).returncode == 0
    (resumed,) = resumed_runs(paused.log, paused.approval_id)
    head, detail = row_of(paused.run_id)
    assert head.split()[3] == "resumed"
    assert f"approval {paused.approval_id[:12]}: resumed: {resumed[:12]} done" in detail


# -- the how-to as the README writes it, and every exit status it names ----------------------


def test_the_how_to_program_ships_and_runs_as_the_readme_writes_it(charter_home: Path) -> None:
    import shlex

    shipped = ROOT / "examples" / "programs" / "pay-plumber.py"
    assert shipped.read_text(encoding="utf-8") == PROGRAM  # the demo's program, line for line
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    how_to = readme[readme.index("## Human approvals") :]
    block = how_to[how_to.index("```sh\n") + 6 : how_to.index("```", how_to.index("```sh\n") + 6)]
    commands = [c.split("  #")[0] for c in block.replace("\\\n", " ").splitlines() if c.startswith("$ ")]
    seed, publish, execute = (shlex.split(c[2:]) for c in commands[:3])
    assert seed[:2] == ["python", "-m"]
    subprocess_seed = __import__("subprocess").run(
        [__import__("sys").executable, *seed[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert subprocess_seed.returncode == 0, subprocess_seed.stderr
    assert charter(*publish[1:]).returncode == 0
    result = charter(*execute[1:])
    assert result.returncode == 5, result.stdout + result.stderr  # awaiting approval
    assert result.stdout.startswith("awaiting_approval: The run is awaiting approval ")
    assert "send_payment (call 3) needs a human's approval: recipient not a saved payee" in result.stdout
    as_json = charter(*execute[1:], "--json")
    assert as_json.returncode == 5
    answer = json.loads(as_json.stdout)
    pending = json.loads(charter("approvals", "list", "--status", "pending", "--json").stdout)
    assert answer["status"] == "awaiting_approval"
    assert answer["approval_id"] in [v["approval_id"] for v in pending]
    assert f"awaiting approval {answer['approval_id']}" in answer["reason"]


def test_the_readme_and_help_name_the_same_exit_statuses() -> None:
    import re

    from charter.cli.approvals import EXIT_CODES, EXIT_HELP
    from charter.cli.execute import EXIT_BACKEND_UNAVAILABLE, EXIT_STATUS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("`charter approvals`\nexit status:")
    paragraph = " ".join(readme[start : readme.index("\n\n", start)].split())
    named = {int(n) for n in re.findall(r"(?<![\w.])(\d{1,2})(?= [`a-z])", paragraph)}
    from_code = {0, 1, EXIT_BACKEND_UNAVAILABLE, *EXIT_CODES.values()}
    from_code |= {EXIT_STATUS[s] for s in ("refused", "failed", "awaiting_approval")}
    assert named == from_code
    assert {int(n) for n in re.findall(r"(?<![\w.])(\d{1,2})(?= [A-Za-z(])", EXIT_HELP)} == from_code


def test_a_resume_on_tampered_records_exits_11_and_runs_nothing(paused: Paused) -> None:
    """The request is intact but a recorded read result the resume would replay was edited:
    the resume concludes failed (cause TAMPERED), runs nothing, and exits 11 as the README says."""
    import sqlite3
    from contextlib import closing

    assert (
        charter("approvals", "approve", paused.approval_id, "--reason", "ok", "--no-resume", *REVIEWER).returncode == 0
    )
    row = next(r for r in paused.log.stored(paused.run_id) if r.kind == "outcome")
    assert b"ACC-1001" in row.body
    with closing(sqlite3.connect(paused.log.path)) as db, db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute(
            "UPDATE receipts SET body = ? WHERE log_seq = ?", (row.body.replace(b"ACC-1001", b"ACC-1002"), row.log_seq)
        )
    result = charter("approvals", "resume", paused.approval_id, "--json")
    assert result.returncode == 11, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert (answer["status"], answer["cause"]) == ("failed", "TAMPERED")
    assert plumber_transfers() == []


def test_a_resumed_run_that_fails_exits_3_and_one_that_pauses_again_exits_5(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    # After the approved payment the program pays a second new IBAN (a new pause), then fails.
    twice = PROGRAM.replace(
        'conclude(f"Paid {transfer.amount} to {transfer.recipient}: transfer {transfer.id} is {transfer.state}.")',
        'payments.send_payment(account=account.id, recipient=inputs["iban"], amount=Decimal("5.00"), '
        'reference="x")\nraise ValueError("after the second payment")',
    )
    assert twice != PROGRAM
    first = pause(charter_home, shared_sandbox, twice)
    again = charter("approvals", "approve", first.approval_id, "--reason", "ok", *REVIEWER, "--json")
    assert again.returncode == 5, again.stdout + again.stderr  # awaiting another approval
    second = json.loads(again.stdout)["approval_id"]
    assert second is not None
    assert second != first.approval_id
    failed = charter("approvals", "approve", second, "--reason", "ok", *REVIEWER, "--json")
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert json.loads(failed.stdout)["status"] == "failed"
