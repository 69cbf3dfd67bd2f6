"""The audit log on a real PostgreSQL server with concurrent writers (design19.md): one stream per
writer, verify's per-stream rules against tampering by the superuser (triggers disabled), the
append-only rule by trigger (the owner) and by privilege (the application's role), writers in
threads and in separate processes, advisory locks, a record written twice, a restarted database."""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from charter.audit import AuditLog, verify_log
from charter.audit._pg_schema import AUDIT_PG_SCHEMA
from charter.audit.receipts import ApprovalDecided, Decision, Opened, Outcome, Sealed, args_digest, text_sha256
from charter.audit.store import Head, now_iso
from charter.audit.verify import Verification
from charter.db import Database, close_pools
from charter.errors import AuditError
from tests._pg import PgServer

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "conclude(str(orders.get_order(id=101).status))"


def opened() -> Opened:
    return Opened(
        run_id=secrets.token_hex(16),
        seq=0,
        at=now_iso(),
        intent="look",
        program=PROGRAM,
        program_sha256=text_sha256(PROGRAM),
        principal="ada",
        scopes=("orders:read",),
        contract="orders",
        version="1.0.0",
        contract_sha256="c" * 64,
        clock="2026-11-29T12:00:00+00:00",
        seed=7,
        limits={},
        host="test",
        pid=1,
    )


def write_run(log: AuditLog, calls: int = 1) -> str:
    """One run: opening, per call an allowed decision and its outcome, a seal (2 + 2*calls receipts)."""
    recorder = log.open_run(opened())
    run_id = recorder.run_id
    for call in range(1, calls + 1):
        shown, digest = args_digest({"id": call})
        recorder.decision(
            Decision(
                run_id=run_id, seq=0, at=now_iso(), call=call, operation="get_order", args_sha256=digest,
                arguments=shown, decision="ALLOW", code="OK", message="allowed", clause=None, boundary=None,
                contract="orders", version="1.0.0", contract_sha256="c" * 64, principal="ada",
                nonce=secrets.token_hex(16), idempotency_key=None, observed=None,
            )
        )  # fmt: skip
        recorder.outcome(
            Outcome(
                run_id=run_id, seq=0, at=now_iso(), call=call, operation="get_order", status="ok", code=None,
                message=None, result='"shipped"', result_sha256="0" * 64,
            ),
            durable=True,
        )  # fmt: skip
    recorder.seal(
        Sealed(
            run_id=run_id, seq=0, at=now_iso(), status="completed", outcome="{}", calls=calls, wall_ms=1.0,
            cpu_ms=1.0, receipts=0, in_doubt=(), run_status="done", cause="completed",
        )
    )  # fmt: skip
    return run_id


def pg_log(url: str, home: Path) -> AuditLog:
    return AuditLog(database=Database.parse(url, home=home))


def verify(log: AuditLog) -> Verification:
    return verify_log(log, log.trusted_keys())


def problems(log: AuditLog) -> str:
    report = verify(log)
    assert not report.ok
    return "\n".join(str(f) for f in report.findings)


def tamper(url: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Edit the log as the database's superuser would: with the append-only triggers disabled."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET session_replication_role = replica")  # user triggers do not fire
        for sql, params in statements:
            db.execute(sql, params)


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(sql, params).fetchall()


@pytest.fixture
def two_streams(pg_url: str, tmp_path: Path) -> tuple[AuditLog, str]:
    """Two writers (two AuditLog objects sharing one keys folder), three runs each, interleaved."""
    first, second = pg_log(pg_url, tmp_path), pg_log(pg_url, tmp_path)
    for _ in range(3):
        write_run(first)
        write_run(second)
    report = verify(first)
    assert report.ok, report.findings
    assert (report.receipts, report.runs, report.sealed) == (24, 6, 6)
    return first, pg_url


def stream_of(log: AuditLog) -> str:
    assert log.stream
    return log.stream


# -- the schema and the streams -------------------------------------------------------------------


def test_each_writer_has_a_stream_chained_on_its_own(two_streams: tuple[AuditLog, str]) -> None:
    log, url = two_streams
    found = rows(url, "SELECT stream, stream_seq, log_seq, body FROM receipts ORDER BY log_seq")
    streams = sorted({r[0] for r in found})
    assert len(streams) == 2
    host = os.uname().nodename
    for stream in streams:
        assert stream.startswith(f"{host}:{os.getpid()}:")
        assert len(stream.rsplit(":", 1)[1]) == 8
        mine = [r for r in found if r[0] == stream]
        assert [r[1] for r in mine] == list(range(1, 13))  # stream_seq 1..12, no gap
        assert [r[2] for r in mine] == sorted(r[2] for r in mine)  # log_seq increasing within it
    # The two streams interleave in log order (the writers alternated runs).
    assert [r[0] for r in found[:8]].count(found[0][0]) == 4
    heads = log.stream_heads()
    assert set(heads) == set(streams)
    for stream, head in heads.items():
        last = max((r for r in found if r[0] == stream), key=lambda r: r[1])
        assert (head.stream_seq, head.log_seq) == (12, last[2])
    assert log.head() is None  # no stream "" (nothing copied from SQLite)
    assert sorted(h.stream for h in log.heads()) == streams
    assert rows(url, "SELECT version FROM charter_schema WHERE store = 'audit log'") == [(1,)]


def test_on_commit_reports_each_commits_head(pg_url: str, tmp_path: Path) -> None:
    log = pg_log(pg_url, tmp_path)
    seen: list[Head] = []
    log.subscribe(seen.append)
    write_run(log)
    assert len(seen) == 4  # each receipt of this run was durable on its own (one commit each)
    assert [h.stream_seq for h in seen] == [1, 2, 3, 4]
    assert seen[-1] == log.stream_heads()[stream_of(log)]
    assert seen[-1].key_id == log.signing_key.key_id


def test_runs_index_and_readers_on_postgres(two_streams: tuple[AuditLog, str]) -> None:
    log, _ = two_streams
    listed = log.list_runs()
    assert len(listed) == 6
    assert all(r.status == "done" for r in listed)
    run_id = listed[0].run_id
    assert log.resolve(run_id[:10]) == run_id
    record = log.run(run_id)
    assert record.status == "done"
    assert len(record.receipts) == 4
    assert len(log.runs()) == len(log.run_ids()) == 6
    single = verify_log(log, log.trusted_keys(), run_id=run_id)
    assert single.ok, single.findings


# -- append-only: trigger and privilege ------------------------------------------------------------


def test_the_owner_is_refused_by_the_triggers(two_streams: tuple[AuditLog, str]) -> None:
    _, url = two_streams
    with psycopg.connect(url, autocommit=True) as db:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: receipts cannot be updated"):
            db.execute("UPDATE receipts SET kind = 'x' WHERE stream_seq = 1")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: receipts cannot be deleted"):
            db.execute("DELETE FROM receipts WHERE stream_seq = 1")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only: receipts cannot be truncated"):
            db.execute("TRUNCATE receipts")
    assert rows(url, "SELECT count(*) FROM receipts") == [(24,)]


def test_the_application_role_has_no_update_or_delete(pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:
    role = f"app_{secrets.token_hex(4)}"
    pg_server.sql(f"CREATE ROLE {role} LOGIN")
    database = pg_url.rsplit("/", 1)[1]
    pg_log(pg_url, tmp_path)  # the owner creates the schema
    with psycopg.connect(pg_url, autocommit=True) as db:
        for statement in AUDIT_PG_SCHEMA.grants(role):
            db.execute(statement)
    app_url = pg_server.url(database, role)
    log = pg_log(app_url, tmp_path)  # the workers connect as the role: writing runs works
    write_run(log)
    assert verify(log).ok
    with psycopg.connect(app_url, autocommit=True) as db:
        for statement in ("UPDATE receipts SET kind = 'x'", "DELETE FROM receipts", "TRUNCATE receipts"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table receipts"):
                db.execute(statement)
    assert rows(pg_url, "SELECT count(*) FROM receipts") == [(4,)]


# -- tampering (the superuser, triggers off) and what verify finds ----------------------------------


def test_a_deleted_middle_receipt_of_a_stream_is_found(two_streams: tuple[AuditLog, str]) -> None:
    log, url = two_streams
    stream = stream_of(log)
    tamper(url, ("DELETE FROM receipts WHERE stream = %s AND stream_seq = 6", (stream,)))
    found = problems(log)
    assert f"it is receipt 7 of stream {stream} where 6 was expected: receipts are missing (deleted)" in found
    assert f"its log_prev link does not name the previous receipt of stream {stream}" in found


def test_reordered_receipts_of_a_stream_are_found(two_streams: tuple[AuditLog, str]) -> None:
    log, url = two_streams
    stream = stream_of(log)
    [(a,), (b,)] = rows(
        url, "SELECT log_seq FROM receipts WHERE stream = %s AND stream_seq IN (5, 6) ORDER BY log_seq", (stream,)
    )
    tamper(
        url,
        ("UPDATE receipts SET log_seq = -1 WHERE log_seq = %s", (a,)),
        ("UPDATE receipts SET log_seq = %s WHERE log_seq = %s", (a, b)),
        ("UPDATE receipts SET log_seq = %s WHERE log_seq = -1", (b,)),
    )
    found = problems(log)
    assert f"column log_seq holds {a} but the signed body says {b}" in found
    assert f"it is receipt 6 of stream {stream} where 5 was expected: receipts are missing (deleted)" in found


def test_an_inserted_receipt_is_found(two_streams: tuple[AuditLog, str]) -> None:
    log, url = two_streams
    stream = stream_of(log)
    # A copy of receipt 2 of the stream, stored again with a fresh log_seq as receipt 13 of a new run.
    [row] = rows(url, "SELECT run_id, kind, body, signature, link FROM receipts WHERE stream = %s AND stream_seq = 2",
                 (stream,))  # fmt: skip
    tamper(
        url,
        (
            "INSERT INTO receipts (log_seq, run_id, seq, kind, body, signature, link, stream, stream_seq) "
            "VALUES (nextval('receipts_log_seq'), %s, 1, %s, %s, %s, %s, %s, 13)",
            ("f" * 32, row[1], row[2], row[3], row[4], stream),
        ),
    )
    found = problems(log)
    assert f"it is receipt 2 of stream {stream} where 13 was expected: receipts are out of order" in found


def test_a_truncated_stream_tail_is_found_by_its_head_row(two_streams: tuple[AuditLog, str]) -> None:
    log, url = two_streams
    stream = stream_of(log)
    tamper(url, ("DELETE FROM receipts WHERE stream = %s AND stream_seq > 9", (stream,)))
    found = problems(log)
    assert f"stream {stream} ends at its receipt 9" in found
    assert "but its head names receipt 12" in found
    assert "receipts were removed from its end (truncated) or the head was altered" in found


def test_a_stream_deleted_but_its_head_row_is_found(two_streams: tuple[AuditLog, str]) -> None:
    log, url = two_streams
    stream = stream_of(log)
    tamper(url, ("DELETE FROM receipts WHERE stream = %s", (stream,)))
    found = problems(log)
    assert f"stream {stream}'s head names its receipt 12" in found
    assert "the log holds no receipt of it: the stream was deleted" in found


def test_a_stream_deleted_with_its_head_row_is_not_found_inside_the_database(
    two_streams: tuple[AuditLog, str],
) -> None:
    """Honest limit: a whole stream removed with its head row leaves a consistent log behind.
    Only the signed checkpoints kept outside the database (H2, `verify --head`) catch it."""
    log, url = two_streams
    stream = stream_of(log)
    tamper(
        url,
        ("DELETE FROM receipts WHERE stream = %s", (stream,)),
        ("DELETE FROM stream_heads WHERE stream = %s", (stream,)),
    )
    report = verify(log)
    assert report.ok, report.findings
    assert (report.receipts, report.runs) == (12, 3)


# -- concurrent writers -----------------------------------------------------------------------------


@pytest.mark.parametrize("writers", [2, 4])
def test_writers_in_threads_interleave_and_every_run_verifies(pg_url: str, tmp_path: Path, writers: int) -> None:
    logs = [pg_log(pg_url, tmp_path) for _ in range(writers)]
    start = threading.Barrier(writers)
    written: list[list[str]] = [[] for _ in logs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(6):
                start.wait()  # every round starts together, so no writer runs ahead of the others
                written[i].append(write_run(logs[i], calls=2))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    check_concurrent_log(logs[0], pg_url, writers, [r for w in written for r in w], receipts_per_run=6)


def check_concurrent_log(log: AuditLog, url: str, writers: int, run_ids: list[str], receipts_per_run: int) -> None:
    report = verify(log)
    assert report.ok, report.findings
    assert report.runs == report.sealed == len(run_ids) == len(set(run_ids))
    assert report.receipts == len(run_ids) * receipts_per_run  # none lost, none twice
    assert sorted(log.run_ids()) == sorted(run_ids)
    found = rows(url, "SELECT stream, stream_seq FROM receipts ORDER BY log_seq")
    assert len({r[0] for r in found}) == writers
    assert len(found) == len({(r[0], r[1]) for r in found})  # no duplicate position in any stream
    switches = sum(1 for a, b in itertools.pairwise(found) if a[0] != b[0])
    assert switches > writers, "the streams did not interleave"


WRITER_PROCESS = """
import sys
from pathlib import Path
from charter.db import Database
from charter.audit import AuditLog
from tests.test_audit_pg import write_run
import time
log = AuditLog(database=Database.parse(sys.argv[1], home=Path(sys.argv[2])))
sys.stdin.readline()  # start together
for written in range(int(sys.argv[3])):
    # In lockstep: run k waits until the other writer sealed k runs, so the two processes' commits
    # interleave however the machine schedules them (one could otherwise finish before the other starts).
    while written and log.stream is not None:
        with log.connect() as connection:
            others = connection.execute(
                "SELECT count(*) FROM receipts WHERE kind = 'seal' AND stream <> ?", (log.stream,)
            ).fetchone()[0]
        if others >= written:
            break
        time.sleep(0.01)
    print(write_run(log, calls=2), flush=True)
"""


def test_two_processes_write_one_log(pg_url: str, tmp_path: Path) -> None:
    assert AuditLog(database=Database.parse(pg_url, home=tmp_path)).signing_key.key_id  # one key pair for both
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_PROCESS, pg_url, str(tmp_path), "8"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    run_ids: list[str] = []
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0
        run_ids += out.split()
    log = pg_log(pg_url, tmp_path)
    check_concurrent_log(log, pg_url, 2, run_ids, receipts_per_run=6)
    pids = {stream.split(":")[1] for stream in log.stream_heads()}
    assert pids == {str(p.pid) for p in processes}


# -- records, locks, a restarted database -----------------------------------------------------------


def decided(approval_id: str) -> ApprovalDecided:
    return ApprovalDecided(
        run_id=approval_id, seq=0, at=now_iso(), approval_id=approval_id, request_run="r" * 32,
        request_link="0" * 64, call=1, operation="send_payment", args_sha256="a" * 64, decision="approved",
        approver="rita", approver_scopes=("payments:approve",), reason="ok",
    )  # fmt: skip


def test_a_record_written_twice_by_two_writers_is_refused_alone(pg_url: str, tmp_path: Path) -> None:
    first, second = pg_log(pg_url, tmp_path), pg_log(pg_url, tmp_path)
    approval_id = secrets.token_hex(16)
    first.append_record(decided(approval_id))
    with pytest.raises(AuditError, match=f"already holds the record {approval_id}"):
        second.append_record(decided(approval_id))
    write_run(second)  # the writer goes on: the refused record left its stream unbroken
    assert rows(pg_url, "SELECT count(*) FROM receipts WHERE run_id = %s", (approval_id,)) == [(1,)]
    heads = second.stream_heads()
    assert heads[stream_of(second)].stream_seq == 4


def test_advisory_locks_exclude_across_logs_and_threads(pg_url: str, tmp_path: Path) -> None:
    first, second = pg_log(pg_url, tmp_path), pg_log(pg_url, tmp_path)
    lock = first.lock(".resume-locks", "approval-1")
    assert lock.acquire(blocking=False)
    try:
        assert not second.lock(".resume-locks", "approval-1").acquire(blocking=False)  # same process
        assert second.lock(".quota-locks", "approval-1").acquire(blocking=False)  # another namespace
        second.lock(".quota-locks", "approval-1").release()
        held = rows(pg_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        assert held == [(1,)]
    finally:
        lock.release()
    assert rows(pg_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    again = second.lock(".resume-locks", "approval-1")
    assert again.acquire(blocking=False)
    again.release()


def test_the_writer_reconnects_after_the_database_restarts(pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:
    log = pg_log(pg_url, tmp_path)
    write_run(log)
    pg_server.restart()
    close_pools()
    write_run(log)  # the held session died: the writer takes a new one, nothing is lost
    report = verify(log)
    assert report.ok, report.findings
    assert (report.runs, report.sealed, report.receipts) == (2, 2, 8)


def test_a_seal_the_stopped_database_refused_is_written_once_it_is_back(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    log = pg_log(pg_url, tmp_path)
    recorder = log.open_run(opened())
    run_id = recorder.run_id
    shown, digest = args_digest({"id": 1})
    allowed = Decision(
        run_id=run_id, seq=0, at=now_iso(), call=1, operation="refund_order", args_sha256=digest, arguments=shown,
        decision="ALLOW", code="OK", message="allowed", clause=None, boundary=None, contract="orders",
        version="1.0.0", contract_sha256="c" * 64, principal="ada", nonce=secrets.token_hex(16),
        idempotency_key=None, observed=None,
    )  # fmt: skip
    recorder.decision(allowed)  # durable: the write goes ahead, then the database stops
    pg_server.stop()
    try:
        with pytest.raises(AuditError, match="could not be written"):  # the gate fails closed
            recorder.decision(msgspec.structs.replace(allowed, call=2, nonce=secrets.token_hex(16)))
        with pytest.raises(AuditError, match="could not be written"):
            recorder.seal(
                Sealed(
                    run_id=run_id, seq=0, at=now_iso(), status="completed", outcome="{}", calls=2, wall_ms=1.0,
                    cpu_ms=1.0, receipts=0, in_doubt=(), run_status="done", cause="completed",
                )
            )  # fmt: skip
        assert log.pending_seals() == [run_id]
    finally:
        pg_server._start()
        close_pools()
    deadline = time.monotonic() + 30
    while log.pending_seals() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.pending_seals() == []
    record = log.run(run_id)
    assert record.sealed is not None
    assert record.status == "interrupted"
    assert record.cause == "audit_unavailable"
    assert isinstance(record.sealed, Sealed)
    assert record.sealed.in_doubt == (1,)  # the write that went ahead; call 2 was refused, never written
    assert [r.seq for r in record.receipts] == [0, 1, 2]
    report = verify(log)
    assert report.ok, report.findings
    assert report.in_doubt == [(run_id, 1, "refund_order")]


def test_verify_while_writers_commit_sees_one_consistent_log(pg_url: str, tmp_path: Path) -> None:
    """log_seq is taken before COMMIT, so a writer may commit a lower log_seq after a higher one is
    visible; verify reads one snapshot and never reports that as a gap or a truncated stream."""
    logs = [pg_log(pg_url, tmp_path) for _ in range(3)]
    write_run(logs[0])  # the key pair exists before the writers start
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(log: AuditLog) -> None:
        try:
            while not stop.is_set():
                write_run(log, calls=1)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    reports = []
    try:
        for _ in range(8):
            reports.append(verify(logs[0]))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert all(report.ok for report in reports), [r.findings for r in reports if not r.ok]
    assert reports[-1].receipts > reports[0].receipts  # the writers were writing throughout
    assert verify(logs[0]).ok


def test_a_duplicate_record_fails_alone_not_the_group_it_was_committed_with(pg_url: str, tmp_path: Path) -> None:
    from charter.audit._writer import Record, _Batch

    log = pg_log(pg_url, tmp_path)
    taken, fresh = secrets.token_hex(16), secrets.token_hex(16)
    pg_log(pg_url, tmp_path).append_record(decided(taken))  # another writer holds it already
    writer = log._ensure_writer()
    duplicate = _Batch([(Record(), msgspec.structs.replace(decided(taken), seq=0, prev=""))])
    other = _Batch([(Record(), msgspec.structs.replace(decided(fresh), seq=0, prev=""))])
    writer._commit([duplicate, other])  # one transaction, two callers' batches
    assert isinstance(duplicate.error, AuditError)
    assert f"already holds the record {taken}" in str(duplicate.error)
    assert other.error is None
    assert rows(pg_url, "SELECT stream_seq FROM receipts WHERE run_id = %s", (fresh,)) == [(1,)]
    assert log.stream_heads()[writer.stream].stream_seq == 1  # the refused one left no gap
