"""Issue 19's pieces together on a real PostgreSQL server: several writer streams with the signed
checkpoints kept outside the database (`charter audit head`, `verify --head`), the `charter audit`
commands with CHARTER_DATABASE_URL set, the advisory locks' use of the connection pool, and a
writer process killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from charter.audit import AuditLog, verify_log
from charter.audit._pg_locks import PgLock
from charter.db import Database
from tests.conftest import ROOT, charter
from tests.test_audit_pg import pg_log, tamper, write_run


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def latest(path: Path) -> dict[str, dict[str, Any]]:
    """Each stream's latest checkpoint in a checkpoint file."""
    found: dict[str, dict[str, Any]] = {}
    for line in lines(path):
        if line["stream"] not in found or line["stream_seq"] >= found[line["stream"]]["stream_seq"]:
            found[line["stream"]] = line
    return found


@pytest.fixture
def pg_home(charter_home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """CHARTER_HOME (keys, checkpoints.jsonl) with its log in PostgreSQL: CHARTER_DATABASE_URL set,
    as a deployment's workers and the operator's `charter` commands see it."""
    monkeypatch.setenv("CHARTER_DATABASE_URL", pg_url)
    return charter_home, pg_url


def two_writers(home: Path, url: str) -> tuple[AuditLog, AuditLog]:
    """Two writers (two AuditLog objects: two streams), three runs of 4 receipts each, interleaved;
    closed, so each has written its last checkpoint."""
    first, second = pg_log(url, home), pg_log(url, home)
    for _ in range(3):
        write_run(first)
        write_run(second)
    first.close()
    second.close()
    assert first.stream
    assert second.stream
    assert first.stream != second.stream
    return first, second


# -- checkpoints of several streams -----------------------------------------------------------------


def test_checkpoints_and_audit_head_hold_every_writer_stream(pg_home: tuple[Path, str]) -> None:
    home, url = pg_home
    first, second = two_writers(home, url)
    checkpoints = home / "checkpoints.jsonl"
    kept = latest(checkpoints)
    assert set(kept) == {first.stream, second.stream}
    heads = first.stream_heads()
    for stream, line in kept.items():
        assert (line["stream_seq"], line["log_seq"], line["link"]) == (
            12,
            heads[stream].log_seq,
            heads[stream].link,
        )

    printed = charter("audit", "head")
    assert printed.returncode == 0, printed.stderr
    printed_heads = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [(h["stream"], h["stream_seq"], h["link"]) for h in printed_heads] == sorted(
        (h.stream, h.stream_seq, h.link) for h in heads.values()
    )
    kept_file = home / "kept-head.jsonl"
    kept_file.write_text(printed.stdout, encoding="utf-8")
    for given in (checkpoints, kept_file):
        checked = charter("audit", "verify", "--head", str(given))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "ok: 24 receipts in 6 runs (6 sealed)" in checked.stdout


def test_a_stream_tail_cut_with_its_head_row_rewritten_is_found_only_by_the_checkpoints(
    pg_home: tuple[Path, str],
) -> None:
    home, url = pg_home
    first, _ = two_writers(home, url)
    stream = first.stream
    assert stream
    checkpoints = home / "checkpoints.jsonl"
    kept = latest(checkpoints)[stream]
    eighth = first.stored_in_stream(stream, 8)
    assert eighth is not None
    # The superuser past the triggers: the stream's last run is deleted and its head row made to
    # name the new last receipt, so the log is consistent from inside.
    tamper(
        url,
        ("DELETE FROM receipts WHERE stream = %s AND stream_seq > 8", (stream,)),
        (
            "UPDATE stream_heads SET stream_seq = 8, log_seq = %s, link = %s WHERE stream = %s",
            (eighth.log_seq, eighth.link, stream),
        ),
    )
    plain = charter("audit", "verify")
    assert plain.returncode == 0, plain.stdout  # plain verify cannot see it: the head row was rewritten too
    assert "ok: 20 receipts in 5 runs (5 sealed)" in plain.stdout
    # The line to keep names every writer stream's head, not one (a single head covered only the
    # stream copied from SQLite: README-only attack, F6).
    assert "2 writer stream(s): keep every stream's head with `charter audit head > kept.jsonl`" in plain.stdout
    assert "(keep it; `--head` checks" not in plain.stdout

    checked = charter("audit", "verify", "--head", str(checkpoints))
    assert checked.returncode == 1, checked.stdout
    assert (
        f"BROKEN log: truncated: stream {json.dumps(stream)} held receipt 12 (link {kept['link'][:16]}…) at "
        f"checkpoint time {kept['at']}; the log ends at 8\n"
    ) in checked.stdout
    assert "FAILED (1 problems)" in checked.stdout


def test_a_whole_stream_deleted_with_its_head_row_is_missing_from_the_checkpoints(
    pg_home: tuple[Path, str],
) -> None:
    home, url = pg_home
    _, second = two_writers(home, url)
    stream = second.stream
    assert stream
    checkpoints = home / "checkpoints.jsonl"
    kept = latest(checkpoints)[stream]
    tamper(
        url,
        ("DELETE FROM receipts WHERE stream = %s", (stream,)),
        ("DELETE FROM stream_heads WHERE stream = %s", (stream,)),
    )
    plain = charter("audit", "verify")
    assert plain.returncode == 0, plain.stdout  # consistent from inside (test_audit_pg says so too)
    checked = charter("audit", "verify", "--head", str(checkpoints), "--json")
    assert checked.returncode == 1
    assert json.loads(checked.stdout)["findings"] == [
        f"log: stream {json.dumps(stream)} is missing: it held receipt 12 (link {kept['link'][:16]}…) at "
        f"checkpoint time {kept['at']}"
    ]


def test_audit_list_show_verify_read_the_postgres_log(pg_home: tuple[Path, str]) -> None:
    home, url = pg_home
    log = pg_log(url, home)
    run_id = write_run(log, calls=2)
    assert not (home / "audit.db").exists()  # the log is in PostgreSQL, not a file beside the keys

    listed = charter("audit", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout
    shown = charter("audit", "show", run_id[:12], "--json")
    assert shown.returncode == 0, shown.stderr
    assert run_id in shown.stdout
    assert "get_order" in shown.stdout
    verified = charter("audit", "verify")
    assert verified.returncode == 0, verified.stdout
    assert "ok: 6 receipts in 1 runs (1 sealed)" in verified.stdout


# -- advisory locks and the pool --------------------------------------------------------------------


def lock_sessions(url: str) -> int:
    """How many sessions hold an advisory lock in the database of `url`."""
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_locks_a_thread_holds_share_one_pooled_connection(pg_url: str, tmp_path: Path) -> None:
    """A call with several quota buckets holds several advisory locks until its decision is
    written: one session per thread holds them all, so 8 concurrent calls with 3 buckets each
    take 8 of the pool's connections for their locks, not 24 (more than CHARTER_DATABASE_POOL=16:
    the calls would wait on each other for connections until the pool timed out)."""
    log = pg_log(pg_url, tmp_path)
    threads, buckets = 8, 3
    all_held = threading.Barrier(threads + 1)
    done = threading.Event()
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            locks = sorted(log.lock(".quota-locks", f"thread {i} bucket {b}") for b in range(buckets))
            for lock in locks:
                assert lock.acquire()
            with log.connect() as connection:  # the quota totals' read while the locks are held
                assert connection.execute("SELECT count(*) FROM receipts").fetchone() == (0,)
            all_held.wait(timeout=60)
            done.wait(timeout=60)
            for lock in reversed(locks):
                lock.release()
        except BaseException as error:  # reported below
            errors.append(error)
            all_held.abort()

    workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    all_held.wait(timeout=60)
    assert lock_sessions(pg_url) == threads
    done.set()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    assert lock_sessions(pg_url) == 0
    write_run(log)  # the writer still gets its connection
    assert verify_log(log, log.trusted_keys()).ok


def test_a_lock_released_by_another_thread_leaves_the_others_held(pg_url: str, tmp_path: Path) -> None:
    log = pg_log(pg_url, tmp_path)
    first, second = sorted([log.lock(".resume-locks", "a"), log.lock(".resume-locks", "b")])
    assert isinstance(first, PgLock)
    assert first.acquire()
    assert second.acquire()
    other = pg_log(pg_url, tmp_path)
    outcome: list[bool] = []
    releaser = threading.Thread(target=lambda: (first.release(), outcome.append(True)))
    releaser.start()
    releaser.join(timeout=30)
    assert outcome == [True]
    # Across sessions: the released one can be taken by another process's session, the held one not.
    with psycopg.connect(pg_url, autocommit=True) as db:
        free = db.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", (".resume-locks", _int4(first.slot)))
        assert free.fetchone() == (True,)
        held = db.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", (".resume-locks", _int4(second.slot)))
        assert held.fetchone() == (False,)
    second.release()
    assert lock_sessions(pg_url) == 0
    again = other.lock(".resume-locks", "b")
    assert again.acquire(blocking=False)
    again.release()
    assert lock_sessions(pg_url) == 0


def _int4(slot: int) -> int:
    return slot % (1 << 32) - (1 << 31)


# -- a writer killed mid-run ------------------------------------------------------------------------

KILLED_RUNNER = """
import sys, time
from pathlib import Path
from charter.audit import AuditLog
from charter.db import Database
from charter.runner import Runner
from tests.test_quotas import ADA, PAY, Wallet, wallet_contract

class Stuck(Wallet):
    def invoke(self, operation, arguments, context=None):
        if self.calls:  # the second run's call: its Decision (ALLOW) is durable, its Outcome never comes
            print("calling", flush=True)
            time.sleep(600)
        return super().invoke(operation, arguments, context)

home = Path(sys.argv[2])
log = AuditLog(database=Database.parse(sys.argv[1], home=home))
backend = Stuck()
runner = Runner(audit=log, backend_for=lambda _: backend)
contract = wallet_contract(home)
print(runner.execute(PAY, contract=contract, principal=ADA).run_id, flush=True)  # one whole run
runner.execute(PAY.replace("1200.00", "10.00"), contract=contract, principal=ADA)
"""


def test_a_worker_killed_mid_run_leaves_an_interrupted_run_and_a_clean_log(pg_home: tuple[Path, str]) -> None:
    """A process runs programs (the real Runner, sandbox and gate) on the PostgreSQL log: one
    whole run, then a payment whose backend call never returns; it is killed (-9) between the
    call's Decision and its Outcome. `charter audit verify` says the log is clean, the run
    interrupted and its allowed call in doubt."""
    home, url = pg_home
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUNNER, url, str(home)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    whole = process.stdout.readline().strip()
    assert process.stdout.readline() == "calling\n"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    checked = charter("audit", "verify", "--json")
    assert checked.returncode == 0, checked.stdout
    report = json.loads(checked.stdout)
    assert report["ok"]
    assert report["findings"] == []
    assert (report["runs"], report["sealed"]) == (2, 1)
    [killed] = report["interrupted"]
    assert killed != whole
    assert report["in_doubt"] == [{"run_id": killed, "call": 1, "operation": "send_payment"}]
    plain = charter("audit", "verify")
    assert f"interrupted: run {killed} was never sealed" in plain.stdout
    assert f"in doubt: run {killed} call 1 send_payment was allowed; its outcome is unknown" in plain.stdout
    log = pg_log(url, home)
    assert log.run(whole).status == "done"
    assert log.run(killed).status == "interrupted"


def test_racing_sandbox_runs_on_postgres_one_allowed_and_replay_recounts(
    pg_url: str, tmp_path: Path, shared_sandbox: Any
) -> None:
    """Two real runs (sandbox, gate, Runner) on two threads on a PostgreSQL log each pay 60% of a
    quota's cap: one is allowed, one QUOTA_EXCEEDED; replay recounts both from the log."""
    from tests.test_quotas import race_two_sandbox_runs, wallet_contract

    race_two_sandbox_runs(pg_log(pg_url, tmp_path), wallet_contract(tmp_path), shared_sandbox)


def test_database_url_is_the_cli_default(pg_home: tuple[Path, str]) -> None:
    home, url = pg_home
    assert AuditLog().database == Database.parse(url, home=home)


# -- quotas through the gate on PostgreSQL ----------------------------------------------------------

QUOTA_PROCESS = """
import os, sys, time
from pathlib import Path
from charter.audit import AuditLog
from charter.compiler import compile_contract
from charter.contract import load_contract
from charter.db import Database
from charter.gate import ContractGate
from tests.test_quotas import ADA, Clock, Run, Wallet
contract = compile_contract(load_contract(Path(sys.argv[1]), resolve_bindings=False))
folder = Path(sys.argv[3])
log = AuditLog(database=Database.parse(sys.argv[2], home=folder))
run = Run(log, ContractGate(contract, Wallet(), clock=Clock(pause=0.3)), ADA)
(folder / f"ready-{os.getpid()}").touch()
while not (folder / "go").exists():
    time.sleep(0.002)
started = time.time()
result = run.pay(sys.argv[4])
print(result, started, time.time())
"""


def test_two_processes_race_for_the_last_unit_of_a_quota_and_one_is_allowed(pg_url: str, tmp_path: Path) -> None:
    """Two processes (two writers, two pools) on one PostgreSQL log: 1,999.99 of the 2,000.00 cap
    is spent; both ask for the last 0.01 at once. The gate's clock pauses 0.3 s after the
    bucket's advisory lock is taken and before the total is read, so without the lock both
    would read 1,999.99 and both pass."""
    from charter.gate import ContractGate
    from tests.test_quotas import ADA, WALLET, Clock, Run, Wallet, wallet_contract

    contract = tmp_path / "wallet.yaml"
    contract.write_text(WALLET, encoding="utf-8")
    log = pg_log(pg_url, tmp_path)  # keys made once, before the race
    assert Run(log, ContractGate(wallet_contract(tmp_path), Wallet(), clock=Clock()), ADA).pay("1999.99") == "OK"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", QUOTA_PROCESS, str(contract), pg_url, str(tmp_path), "0.01"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    found = []
    for process in processes:
        out = process.communicate(timeout=120)[0]
        assert process.returncode == 0, out
        result, started, ended = out.split()
        found.append((result, float(started), float(ended)))
    first, second = sorted(found)
    assert max(first[1], second[1]) < min(first[2], second[2])  # they did race
    assert [first[0], second[0]] == ["OK", "QUOTA_EXCEEDED"]
    report = verify_log(log, log.trusted_keys())
    assert report.ok, report.findings
    assert len(log.stream_heads()) == 3  # this process's writer and one per racing process


BUCKETS = """\
contract: wallet
version: 1.0.0
summary: Payments out of customers' accounts.
owners: [tests@example.com]
changelog: First.
binding:
  python: tests.data.shop_backend
operations:
  send_payment:
    kind: write
    doc: Send money from an account.
    params: {account: str, amount: money, recipient: str}
    returns: str
    scopes: [pay:write]
    quotas:
      - {id: by_account, sum: params.amount, per: [params.account], window: 24h, max: 200000, message: Cap.}
      - {id: by_recipient, sum: params.amount, per: [params.recipient], window: 24h, max: 200000, message: Cap.}
      - {id: by_pair, count: true, per: [params.account, params.recipient], window: 24h, max: 5, message: Cap.}
"""


def test_eight_calls_holding_three_quota_buckets_each_do_not_exhaust_the_pool(pg_url: str, tmp_path: Path) -> None:
    """8 concurrent runs, each call holding 3 bucket locks while the gate reads the totals (the
    clock pauses 0.3 s under the locks) and until the writer has written its decision: with one
    pooled connection per lock they needed 24 + their reads of CHARTER_DATABASE_POOL=16 and waited
    on each other until the pool timed out (the calls failed GATE_ERROR). With one lock session
    per thread every call is allowed and the log verifies."""
    from charter.db._postgres import pool_size
    from charter.gate import ContractGate
    from tests.test_quotas import ADA, Clock, Run, Wallet, wallet_contract

    assert pool_size() == 16
    log = pg_log(pg_url, tmp_path)
    gate = ContractGate(wallet_contract(tmp_path, BUCKETS), Wallet(), clock=Clock(pause=0.3))
    runs = [Run(log, gate, ADA) for _ in range(8)]
    start = threading.Barrier(len(runs))
    results: dict[int, str] = {}

    def pay(i: int) -> None:
        start.wait(timeout=60)
        try:
            results[i] = runs[i].call("send_payment", account=f"GB{i:02d}", amount="10.00", recipient=f"R{i}")
        except Exception as error:  # a StoreUnavailable/AuditError would end the call here
            results[i] = f"{type(error).__name__}: {error}"

    threads = [threading.Thread(target=pay, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == dict.fromkeys(range(len(runs)), "OK")
    assert lock_sessions(pg_url) == 0
    assert verify_log(log, log.trusted_keys()).ok


# -- approvals on PostgreSQL --------------------------------------------------------------------------

APPROVER_PROCESS = """
import sys, time
from pathlib import Path
from charter.cli import main
go = Path(sys.argv[1])
sys.argv = ["charter", *sys.argv[2:]]
while not go.exists():
    time.sleep(0.002)
main()
"""


def test_two_approvers_race_from_two_processes_and_one_decision_is_kept(
    pg_home: tuple[Path, str], shared_sandbox: Any
) -> None:
    """The payments example's payment to a new IBAN pauses (real sandbox and gate, the log in
    PostgreSQL); `charter approvals approve` and `charter approvals deny`, two processes released
    together, decide it: exactly one decision is written, the other is refused ALREADY_DECIDED,
    the run is resumed once by the winner, and the log verifies."""
    from charter.audit import ApprovalDecided, Decision, Opened
    from charter.cli._demo_approvals import PLUMBER_IBAN, PROGRAM
    from charter.contract import load_contract
    from charter.principal import Principal
    from charter.registry import Registry
    from charter.runner import Runner
    from examples.payments import backend
    from examples.payments.scenarios import HOLDER_ATTRIBUTES, HOLDER_SCOPES

    home, url = pg_home
    backend.seed()
    path = ROOT / "contracts" / "payments.yaml"
    registry = Registry()
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = pg_log(url, home)
    holder = Principal("ada", HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES)
    inputs = {"account": backend.HOLDER_ACCOUNT, "iban": PLUMBER_IBAN, "amount": "120.00", "reference": "Boiler"}
    execution = Runner(audit=log, sandbox=shared_sandbox).execute(
        PROGRAM, contract=registry.get("payments"), principal=holder, inputs=inputs
    )
    assert execution.status == "awaiting_approval", execution.text
    approval_id = execution.approval_id
    assert approval_id is not None

    go = home / "go"
    verbs = {"mira": "approve", "noor": "deny"}
    processes = {
        who: subprocess.Popen(
            [
                sys.executable,
                "-c",
                APPROVER_PROCESS,
                str(go),
                "approvals",
                verb,
                approval_id,
                "--reason",
                f"{who} checked",
                "--principal",
                who,
                "--scope",
                "payments:approve",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for who, verb in verbs.items()
    }
    time.sleep(1.0)  # both processes have imported charter and wait for `go`
    go.touch()
    done = {who: (p.communicate(timeout=180), p.returncode) for who, p in processes.items()}
    refused = [who for who, (_, code) in done.items() if code == 8]
    assert len(refused) == 1, done
    [loser] = refused
    [winner] = set(verbs) - {loser}
    (_, loser_err), _ = done[loser]
    assert "error: ALREADY_DECIDED: " in loser_err
    decided = "approved" if verbs[winner] == "approve" else "denied"
    assert f"already {decided} by '{winner}'" in loser_err

    receipts = [s.decoded() for s in log.stored()]
    decisions = [r for r in receipts if isinstance(r, ApprovalDecided)]
    assert [(d.approval_id, d.approver, d.decision) for d in decisions] == [(approval_id, winner, decided)]
    resumed = [r.run_id for r in receipts if isinstance(r, Opened) and r.approval_id == approval_id]
    assert len(resumed) == 1
    record = log.run(resumed[0])
    [payment] = [r for r in record.receipts if isinstance(r, Decision) and r.operation == "send_payment"]
    with backend._db() as db:
        sent = db.execute("SELECT count(*) FROM transfers WHERE recipient = ?", (PLUMBER_IBAN,)).fetchone()[0]
    if decided == "approved":
        assert (record.status, payment.decision, sent) == ("done", "ALLOW", 1)
    else:
        assert (record.status, payment.code, sent) == ("refused", "APPROVAL_DENIED", 0)
    report = verify_log(log, log.trusted_keys())
    assert report.ok, report.findings
    assert report.approvals == 1
    assert report.incomplete == []


def test_a_log_copied_from_sqlite_keeps_its_checkpoints_and_its_stream_tail_is_checked(
    charter_home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite deployment's checkpoints (stream "") still hold after `charter db copy`; a worker
    then writes a stream of its own; cutting the copied chain's tail with its head row rewritten
    is found by `verify --head` (the stream "" looked up by log_seq, its end the head row)."""
    sqlite_log = AuditLog(charter_home / "audit.db")
    for _ in range(3):
        write_run(sqlite_log)
    sqlite_log.close()
    checkpoints = charter_home / "checkpoints.jsonl"
    assert latest(checkpoints)[""]["stream_seq"] == 12
    copied = charter("db", "copy", "--from", f"sqlite:{charter_home}", "--to", pg_url)
    assert copied.returncode == 0, copied.stderr

    monkeypatch.setenv("CHARTER_DATABASE_URL", pg_url)
    worker = pg_log(pg_url, charter_home)
    write_run(worker)
    worker.close()
    assert set(latest(checkpoints)) == {"", worker.stream}
    checked = charter("audit", "verify", "--head", str(checkpoints))
    assert checked.returncode == 0, checked.stdout
    assert "ok: 16 receipts in 4 runs (4 sealed)" in checked.stdout

    kept = latest(checkpoints)[""]
    eighth = worker.stored_at(8)
    assert eighth is not None
    tamper(
        pg_url,
        ("DELETE FROM receipts WHERE stream = '' AND log_seq > 8", ()),
        ("UPDATE head SET log_seq = 8, link = %s", (eighth.link,)),
    )
    assert charter("audit", "verify").returncode == 0  # consistent from inside
    checked = charter("audit", "verify", "--head", str(checkpoints))
    assert checked.returncode == 1
    assert (
        f'BROKEN log: truncated: stream "" held receipt 12 (link {kept["link"][:16]}…) at checkpoint time '
        f"{kept['at']}; the log ends at 8\n"
    ) in checked.stdout


POOL_OF_TWO = """
import sys, threading
from pathlib import Path
from charter.audit import AuditLog, verify_log
from charter.db import Database
from charter.gate import ContractGate
from tests.test_e2e_pg import BUCKETS
from tests.test_quotas import ADA, Clock, Run, Wallet, wallet_contract
home = Path(sys.argv[2])
log = AuditLog(database=Database.parse(sys.argv[1], home=home))
gate = ContractGate(wallet_contract(home, BUCKETS), Wallet(), clock=Clock(pause=0.3))
runs = [Run(log, gate, ADA) for _ in range(2)]
start = threading.Barrier(2)
results = {}
def pay(i):
    start.wait()
    results[i] = runs[i].call("send_payment", account=f"GB{i}", amount="10.00", recipient=f"R{i}")
threads = [threading.Thread(target=pay, args=(i,)) for i in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(results[0], results[1], verify_log(log, log.trusted_keys()).ok)
"""


def test_calls_holding_locks_read_their_totals_on_the_lock_session(pg_url: str, tmp_path: Path) -> None:
    """CHARTER_DATABASE_POOL=2 (the writer's connection is its own, outside the pool): two calls,
    each holding its quota buckets' locks (one session per thread), fill the pool. Each call's
    totals are read on its own lock session, so neither waits for a third connection (which
    never comes while both hold their locks: before, both calls failed GATE_ERROR when the pool
    timed out)."""
    env = {**os.environ, "CHARTER_DATABASE_POOL": "2", "CHARTER_CHECKPOINTS": "none"}
    result = subprocess.run(
        [sys.executable, "-c", POOL_OF_TWO, pg_url, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OK", "OK", "True"]
