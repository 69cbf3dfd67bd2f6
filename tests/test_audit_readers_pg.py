"""The readers beside the audit log (quota totals, the runs pages and overview, the approvals
index and records) and the index maintenance run the same SQL on SQLite and PostgreSQL.

A real log (SQLite, written by the real writer through real gate sessions: quotas counted and
exceeded, a failed and an in-doubt call, an interrupted run, an intent whose program run was
refused, a run paused for approval, decided and resumed) is the reference. Its receipts are
copied, in log order, into a new, empty real AuditLog of each engine (SQLite: its own file;
PostgreSQL: `AuditLog(database=...)` on the real server of tests/_pg.py, with the log's own
PostgreSQL schema) and fed through the index functions the writer calls (`index_receipt`,
`index_quota_receipt`, `index_approval_receipt`); every reader then asks the copy (through the
AuditLog's own `reader()`, `connect()`: the pool on PostgreSQL) what it asks the reference, and
must get the reference's answers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from charter.approvals._index import fill_approvals_index, index_approval_receipt
from charter.approvals.store import _request_seq, _sealed_resumes
from charter.audit import AuditLog, Opened, now_iso
from charter.audit._approval_records import resolve_approval, resume_runs
from charter.audit.index import RunFilter, attempts_of, fill_runs_index, index_receipt, list_runs
from charter.audit.quotas import QuotaReader, fill_quota_index, index_quota_receipt, quota_total
from charter.audit.receipts import (
    ApprovalDecided,
    ApprovalRequested,
    Asked,
    Concluded,
    Sealed,
    decode_body,
    text_sha256,
)
from charter.backends import BackendFailure
from charter.compiler import CompiledContract
from charter.db import Connection, Database, write_transaction
from charter.gate import CallRequest, ContractGate, Denied, OperationFailed
from charter.principal import Principal
from charter.server._runs_query import RunQuery, overview, page_body, run_page
from tests.test_quotas import WALLET, Clock, Wallet, wallet_contract

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ADA = Principal("ada", frozenset({"pay:write"}))
BOB = Principal("bob", frozenset({"pay:write"}))
EVE = Principal("eve", frozenset())  # holds no scope: her calls are refused

# -- the reference log ----------------------------------------------------------------------


def _opened(contract: CompiledContract, who: Principal, at: datetime, **more: Any) -> Opened:
    return Opened(
        run_id=uuid.uuid4().hex,
        seq=0,
        at=at.isoformat(timespec="microseconds"),
        intent=None,
        program="",
        program_sha256=text_sha256(""),
        principal=who.id,
        scopes=tuple(sorted(who.scopes)),
        contract=contract.name,
        version=contract.version,
        contract_sha256=contract.sha256,
        clock="",
        seed=0,
        limits={},
        host="test",
        pid=0,
        **more,
    )


def _sealed(run_id: str, status: str, run_status: str, cause: str, **more: Any) -> Sealed:
    return Sealed(
        run_id=run_id,
        seq=0,
        at=now_iso(),
        status=status,
        outcome="{}",
        calls=0,
        wall_ms=1.0,
        cpu_ms=1.0,
        receipts=0,
        in_doubt=(),
        run_status=run_status,  # type: ignore[arg-type]
        cause=cause,
        **more,
    )


class _Run:
    """One program run's gate session over the log, opened at `at` (the overview counts by day)."""

    def __init__(self, log: AuditLog, gate: ContractGate, who: Principal, at: datetime, **more: Any) -> None:
        self.who = who
        self.recorder = log.open_run(_opened(gate.contract, who, at, **more))
        self.run_id = self.recorder.run_id
        self.session = gate.session(self.recorder, who, max_result_bytes=65536)
        self.calls = 0

    def pay(self, amount: str, account: str = "GB01") -> str:
        self.calls += 1
        request = CallRequest(
            run_id=self.run_id,
            sequence=self.calls,
            operation="send_payment",
            arguments={"account": account, "amount": amount, "recipient": "GB99"},
            principal=self.who,
            deadline=time.monotonic() + 60,
        )
        try:
            self.session.call(request)
        except Denied as denied:
            return denied.code
        except OperationFailed as failed:
            return f"failed:{failed.code}"
        return "OK"

    def seal(self, status: str = "completed", run_status: str = "done") -> None:
        self.recorder.seal(_sealed(self.run_id, status, run_status, status))


@dataclass
class Reference:
    log: AuditLog
    runs: dict[str, str]  # label -> run id
    approval_id: str


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    home = tmp_path_factory.mktemp("reference")
    log = AuditLog(home / "audit.db")
    wallet = wallet_contract(home)
    purse = wallet_contract(home, WALLET.replace("contract: wallet", "contract: purse"))
    backend = Wallet()
    gate = ContractGate(wallet, backend, clock=Clock(NOW - timedelta(hours=3)))
    runs: dict[str, str] = {}

    first = _Run(log, gate, ADA, NOW - timedelta(days=3))
    assert first.pay("1500.00") == "OK"
    assert first.pay("600.00") == "QUOTA_EXCEEDED"  # the day's 2,000.00 of GB01: a boundary's denial
    assert first.pay("500.00") == "OK"
    first.seal()
    runs["first"] = first.run_id

    failing = _Run(log, gate, BOB, NOW - timedelta(days=2))
    backend.fail = BackendFailure("INSUFFICIENT_FUNDS", "not enough money")
    assert failing.pay("100.00", "GB02") == "failed:INSUFFICIENT_FUNDS"  # stops counting
    assert failing.pay("50.00", "GB02") == "OK"
    runs["interrupted"] = failing.run_id  # never sealed

    doubt = _Run(log, gate, ADA, NOW - timedelta(days=2))
    backend.fail = BackendFailure("TIMEOUT", "no answer", in_doubt=True)
    assert doubt.pay("70.00", "GB03") == "failed:TIMEOUT"  # in doubt: keeps counting
    doubt.seal("program_error", "failed")
    runs["in_doubt"] = doubt.run_id

    other = _Run(
        log, ContractGate(purse, backend, clock=Clock(NOW - timedelta(hours=2))), BOB, NOW - timedelta(days=20)
    )
    assert other.pay("10.00") == "OK"  # before the overview's 14 days
    other.seal()
    runs["purse"] = other.run_id

    asked = Asked(
        run_id=uuid.uuid4().hex,
        seq=0,
        at=NOW.isoformat(timespec="microseconds"),
        intent="Pay GB01.",
        principal=EVE.id,
        scopes=(),
        contract=wallet.name,
        version=wallet.version,
        contract_sha256=wallet.sha256,
        model="scripted",
        settings={},
        host="test",
        pid=0,
    )
    intent = log.open_run(asked)
    attempt = _Run(log, gate, EVE, NOW, parent=intent.run_id, attempt=1)
    assert attempt.pay("1.00") == "FORBIDDEN_SCOPE"
    attempt.seal("halted", "refused")
    intent.conclude(
        Concluded(
            run_id=intent.run_id,
            seq=0,
            at=now_iso(),
            status="refused",
            answer=None,
            data=None,
            reason="refused",
            attempts=("refused",),
            program_runs=(attempt.run_id,),
            usage={},
            receipts=0,
            cause="FORBIDDEN_SCOPE",
        )
    )
    runs["intent"], runs["attempt"] = intent.run_id, attempt.run_id

    # A run paused for approval, the decision, and the run resuming it.
    paused = log.open_run(_opened(wallet, ADA, NOW - timedelta(days=1)))
    approval_id = uuid.uuid4().hex
    paused.approval_requested(
        ApprovalRequested(
            run_id=paused.run_id,
            seq=0,
            at=now_iso(),
            approval_id=approval_id,
            call=1,
            operation="send_payment",
            args_sha256="0" * 64,
            arguments="{}",
            program_sha256=text_sha256(""),
            contract=wallet.name,
            version=wallet.version,
            contract_sha256=wallet.sha256,
            principal=ADA.id,
            logical_run_id=paused.run_id,
            reason="large payment",
            clause="approval:send_payment",
            boundary=None,
            approver_scope="pay:approve",
            expires=(NOW + timedelta(days=1)).isoformat(timespec="microseconds"),
        )
    )
    paused.seal(_sealed(paused.run_id, "paused", "awaiting_approval", "APPROVAL_REQUIRED", approval_id=approval_id))
    [request_row] = [row for row in log.stored(paused.run_id) if row.kind == "approval_request"]
    decided = log.append_record(
        ApprovalDecided(
            run_id=approval_id,
            seq=0,
            at=now_iso(),
            approval_id=approval_id,
            request_run=paused.run_id,
            request_link=request_row.link,
            call=1,
            operation="send_payment",
            args_sha256="0" * 64,
            decision="approved",
            approver="bob",
            approver_scopes=("pay:approve",),
            reason="fine",
        )
    )
    resumed = log.open_run(
        _opened(
            wallet,
            ADA,
            NOW - timedelta(days=1),
            logical_run_id=paused.run_id,
            resumes=paused.run_id,
            approval_id=approval_id,
            approval_link=decided.link,
        )
    )
    resumed.seal(_sealed(resumed.run_id, "completed", "done", "completed"))
    runs["paused"], runs["resumed"] = paused.run_id, resumed.run_id
    return Reference(log, runs, approval_id)


# -- the replicas -----------------------------------------------------------------------------


@dataclass
class Replica:
    """A copy of the reference in a real AuditLog of one engine, and one of its connections
    (`log.connect()`), held for the test."""

    engine: str
    log: AuditLog
    connection: Connection

    def index(self, reference: AuditLog) -> None:
        """Each receipt of the reference, in log order, inserted as stored and indexed as the
        writer does (PostgreSQL: in the stream "", as `charter db copy` keeps a SQLite log)."""
        with write_transaction(self.connection):
            for row in reference.stored():
                self.connection.execute(
                    "INSERT INTO receipts (log_seq, run_id, seq, kind, body, signature, link) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row.log_seq, row.run_id, row.seq, row.kind, row.body, row.signature, row.link),
                )
                receipt = row.decoded()
                index_receipt(self.connection, receipt, row.log_seq)
                index_quota_receipt(self.connection, receipt)
                index_approval_receipt(self.connection, receipt, row.log_seq)


@pytest.fixture(params=["sqlite", "postgresql"])
def replica(request: pytest.FixtureRequest, tmp_path: Path, reference: Reference) -> Iterator[Replica]:
    if request.param == "sqlite":
        log = AuditLog(tmp_path / "replica" / "audit.db")  # the log's own schema, every index empty
    else:
        log = AuditLog(database=Database.parse(request.getfixturevalue("pg_url"), home=tmp_path / "replica"))
    assert log.database.kind == request.param
    with log.connect() as connection:
        copy = Replica(request.param, log, connection)
        copy.index(reference.log)
        yield copy


def _rows(connection: Connection, table: str, order: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in connection.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()]


def _index_rows(connection: Connection) -> dict[str, list[tuple[Any, ...]]]:
    runs = "run_id, kind, contract, version, contract_sha256, principal, intent, status, cause, denial_code, "
    runs += "denial_operation, opened_at, sealed_at, parent, opened_seq, in_doubt"
    return {
        "runs": [tuple(r) for r in connection.execute(f"SELECT {runs} FROM runs ORDER BY opened_seq").fetchall()],
        "denials": _rows(connection, "denials", "log_seq"),
        "quota_counts": _rows(connection, "quota_counts", "run_id, call, quota"),
        "approvals": _rows(connection, "approvals", "approval_id"),
    }


# -- the tests --------------------------------------------------------------------------------


def test_the_index_functions_build_the_writers_rows_in_either_engine(reference: Reference, replica: Replica) -> None:
    with reference.log.connect() as connection:
        expected = _index_rows(connection)
    assert [len(expected[table]) for table in ("runs", "denials", "approvals")] == [8, 2, 1]
    assert _index_rows(replica.connection) == expected
    # Rebuilt from the receipts over the rows already there (every opening and denial meets its
    # row again: the upserts' conflict paths), the indexes are the same.
    with write_transaction(replica.connection):
        fill_runs_index(replica.connection)
        fill_quota_index(replica.connection)
        fill_approvals_index(replica.connection)
    assert _index_rows(replica.connection) == expected


def test_quota_totals_are_the_logs(reference: Reference, replica: Replica) -> None:
    reader = QuotaReader(reference.log)
    day_ago = (NOW - timedelta(days=1)).isoformat(timespec="microseconds")
    asked = [
        ("wallet", "daily_outflow", '["GB01"]', day_ago),  # 1,500.00 + 500.00; the refused 600.00 never counted
        ("wallet", "daily_outflow", '["GB02"]', day_ago),  # the failed 100.00 stopped counting
        ("wallet", "daily_outflow", '["GB03"]', day_ago),  # the in-doubt 70.00 keeps counting
        ("purse", "daily_outflow", '["GB01"]', day_ago),  # per contract name
        ("wallet", "daily_outflow", '["GB01"]', NOW.isoformat(timespec="microseconds")),  # after every call
    ]
    expected = [reader.total(*question) for question in asked]
    assert expected == [200000, 5000, 7000, 1000, 0]
    assert [quota_total(replica.connection, *question) for question in asked] == expected
    assert [QuotaReader(replica.log).total(*question) for question in asked] == expected  # the gate's reader


FILTERS = [
    RunFilter(),
    RunFilter(contract="wallet"),
    RunFilter(contract="purse", version="1.0.0"),
    RunFilter(status="interrupted"),
    RunFilter(status="refused", cause="FORBIDDEN_SCOPE"),
    RunFilter(principal="bob"),
    RunFilter(code="QUOTA_EXCEEDED"),
    RunFilter(code="FORBIDDEN_SCOPE"),  # the intent run carries its program run's denial
    RunFilter(since=(NOW - timedelta(days=2, hours=1)).isoformat(timespec="microseconds")),
    RunFilter(until=(NOW - timedelta(days=2, hours=1)).isoformat(timespec="microseconds")),
    RunFilter(top_level=True),
    RunFilter(in_doubt=True),
]


@pytest.mark.parametrize("filters", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_runs_list_filters_answer_as_the_log(reference: Reference, replica: Replica, filters: RunFilter) -> None:
    expected = reference.log.list_runs(filters, limit=50)
    assert expected, f"the reference holds runs for {filters}"
    assert list_runs(replica.connection, filters, 50) == expected
    assert replica.log.list_runs(filters, limit=50) == expected
    # Paged two at a time from the second row's cursor.
    assert list_runs(replica.connection, filters, 2, expected[0].cursor) == expected[1:3]


def test_a_run_prefix_a_page_and_an_intents_attempts_answer_as_the_log(reference: Reference, replica: Replica) -> None:
    for label in ("first", "intent"):
        run_id = reference.runs[label]
        prefix = RunFilter(run_prefix=run_id[:6])
        assert list_runs(replica.connection, prefix, 5) == reference.log.list_runs(prefix, limit=5)
    with reference.log.connect() as connection:
        expected = attempts_of(connection, reference.runs["intent"])
    assert [a.run_id for a in expected] == [reference.runs["attempt"]]
    assert attempts_of(replica.connection, reference.runs["intent"]) == expected
    for query in (RunQuery(limit=3), RunQuery(status="awaiting_approval"), RunQuery(contract="wallet", limit=50)):
        page = page_body(run_page(reference.log, query, principal=None))
        assert page_body(run_page(replica.log, query, principal=None)) == page
    paused = page_body(run_page(reference.log, RunQuery(status="awaiting_approval"), principal=None))
    assert paused["runs"][0]["resumed"] == {"run_id": reference.runs["resumed"], "status": "done"}


@pytest.mark.parametrize("principal", [None, "ada", "bob"])
def test_the_overview_counts_as_the_log(reference: Reference, replica: Replica, principal: str | None) -> None:
    expected = overview(reference.log, principal=principal, now=NOW)
    if principal is None:
        by_day = {c.name: c.by for c in expected.days if c.total}
        # The paused run counts as its resume (done); the purse run is older than 14 days.
        assert by_day == {
            "2026-03-07": {"done": 1},
            "2026-03-08": {"interrupted": 1, "failed": 1},
            "2026-03-09": {"done": 2},
            "2026-03-10": {"refused": 1},
        }
        assert [(c.name, c.total) for c in expected.codes] == [("FORBIDDEN_SCOPE", 1), ("QUOTA_EXCEEDED", 1)]
        assert [(c.name, c.detail) for c in expected.boundaries] == [("outflow_capped", "QUOTA_EXCEEDED")]
        assert (expected.unsealed_total, expected.in_doubt_total) == (1, 1)
    assert overview(replica.log, principal=principal, now=NOW) == expected


def test_approval_records_are_found_in_receipt_bodies_in_either_engine(reference: Reference, replica: Replica) -> None:
    approval_id = reference.approval_id
    assert resume_runs(reference.log, approval_id) == [reference.runs["resumed"]]
    assert resume_runs(replica.log, approval_id) == [reference.runs["resumed"]]
    assert resume_runs(replica.log, uuid.uuid4().hex) == []
    assert resolve_approval(replica.log, approval_id[:8]) == approval_id
    with reference.log.connect() as connection:
        expected = _request_seq(connection, approval_id, None)
    assert expected is not None
    assert _request_seq(replica.connection, approval_id, None) == expected
    with reference.log.connect() as connection:
        resumes = _sealed_resumes(connection)
    assert [decode_body(body).run_id for body in resumes] == [reference.runs["resumed"]]
    assert _sealed_resumes(replica.connection) == resumes


def test_the_quota_reader_keeps_one_sqlite_connection_per_thread(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    with log.reader() as first, log.reader() as again:
        assert first is again  # no connection opened per read (~0.5 ms each, on every quota check)
    seen: list[Connection] = []

    def other() -> None:
        with log.reader() as connection:
            seen.append(connection)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(seen) == 1
    assert seen[0] is not first  # a sqlite3 connection is not shared between threads
