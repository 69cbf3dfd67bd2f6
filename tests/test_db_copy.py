"""`charter db copy --from sqlite:FOLDER --to postgresql://...`: a real SQLite deployment (runs made
by the Runner in the real sandbox, a published contract) moved into a real PostgreSQL database;
the copy verifies with the same head, and new runs written to it verify too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import psycopg
import pytest

from charter.audit import AuditLog, verify_log
from charter.audit._copy import _registry_pg_schema
from charter.db import Database
from charter.runner import Runner
from charter.sandbox import Sandbox
from tests.conftest import ROOT, Governed, charter
from tests.test_audit import CANCEL_123, REFUND


def test_a_sqlite_deployment_copied_verifies_with_the_same_head(
    governed: Governed, charter_home: Path, pg_url: str, shared_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    governed.run(REFUND, intent="refund 5 on order 125")
    governed.run(CANCEL_123, intent="cancel 123")
    governed.run("conclude(str(orders.get_order(id=101).status))")
    published = charter("contract", "publish", str(ROOT / "contracts" / "orders.yaml"))
    assert published.returncode == 0, published.stderr
    sqlite_log = governed.log
    before = verify_log(sqlite_log, sqlite_log.trusted_keys())
    assert before.ok, before.findings
    head = sqlite_log.head()
    assert head is not None
    assert head[0] == 13

    copied = charter("db", "copy", "--from", f"sqlite:{charter_home}", "--to", pg_url)
    assert copied.returncode == 0, copied.stderr
    assert f"audit log: 13 receipts, 1 keys, 0 withheld error texts copied into {pg_url}" in copied.stdout
    assert f"head receipt 13, link {head[1]}" in copied.stdout

    # The receipts are byte for byte the SQLite ones.
    with psycopg.connect(pg_url) as db:
        stored = db.execute(
            "SELECT log_seq, run_id, seq, kind, body, signature, link, stream, stream_seq FROM receipts ORDER BY log_seq"
        ).fetchall()
    assert [tuple(r[:7]) for r in stored] == [msgspec.structs.astuple(r) for r in sqlite_log.stored()]
    assert {(r[7], r[8]) for r in stored} == {("", 0)}

    # `charter audit verify` on the copy (CHARTER_DATABASE_URL): clean, the same head.
    verified = charter_env({"CHARTER_DATABASE_URL": pg_url}, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = json.loads(verified.stdout)
    assert shown["ok"] is True
    assert shown["head"] == f"{head[0]}:{head[1]}"
    assert (shown["receipts"], shown["runs"], shown["sealed"]) == (13, 3, 3)

    copy = AuditLog(database=Database.parse(pg_url, home=charter_home))
    assert copy.head() == head
    # The indexes were rebuilt from the receipts: the runs list is the SQLite one.
    assert [(r.run_id, r.status, r.denial_code) for r in copy.list_runs()] == [
        (r.run_id, r.status, r.denial_code) for r in sqlite_log.list_runs()
    ]

    # New runs on the copy: a stream of their own after log_seq 13; the whole log verifies.
    runner = Runner(audit=copy, sandbox=shared_sandbox)
    governed_copy = Governed(runner, copy, governed.contract)
    governed_copy.run("conclude(str(orders.get_order(id=102).status))")
    governed_copy.run(CANCEL_123, intent="cancel 123 again")
    after = verify_log(copy, copy.trusted_keys())
    assert after.ok, after.findings
    assert (after.receipts, after.runs, after.sealed) == (13 + 7, 5, 5)
    new = copy.stream_heads()
    assert len(new) == 1
    [stream] = new.values()
    assert stream.stream_seq == 7  # 4 receipts of the read, 3 of the denied cancel
    assert stream.log_seq > 13
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT min(log_seq) FROM receipts WHERE stream <> ''").fetchone() == (14,)

    # The registry: copied row for row where this build has its PostgreSQL schema.
    if _registry_pg_schema() is None:
        assert "this build has no PostgreSQL registry schema: the registry was not copied" in copied.stdout
    else:
        assert "registry: 1 rows of contract_versions copied" in copied.stdout
        with psycopg.connect(pg_url) as db:
            assert db.execute("SELECT name, version FROM contract_versions").fetchall() == [("orders", "1.0.0")]

    # A second copy into the same (now used) database is refused, and changes nothing.
    again = charter("db", "copy", "--from", f"sqlite:{charter_home}", "--to", pg_url)
    assert again.returncode != 0
    assert "already holds rows in receipts" in again.stdout + again.stderr
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT count(*) FROM receipts").fetchone() == (20,)


def charter_env(extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **extra},
        timeout=120,
        check=False,
    )
