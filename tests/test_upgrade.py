"""Upgrades keep the record: the stores and the audit log written by release 0.1.0
(tests/data/release_0_1, written by commit 1e5a6f9) upgrade, verify with the same head,
show, list and replay under this release; stores from a later release are refused.

Every command runs as a real `charter` process on a copy of the fixture.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from charter.audit import AuditLog, Decision
from charter.audit.store import AUDIT_SCHEMA
from charter.errors import SchemaMismatch
from charter.migrations import Schema, Step, read_version
from charter.principal import Principal
from charter.registry import Registry
from charter.registry.store import REGISTRY_SCHEMA
from charter.server import IdempotencyStore
from charter.server._idempotency import IDEMPOTENCY_SCHEMA
from charter.server._runs_query import parse_run_query
from charter.server._service import CharterService
from tests.conftest import ROOT, charter

FIXTURE = ROOT / "tests" / "data" / "release_0_1"
MANIFEST: dict[str, Any] = json.loads((FIXTURE / "manifest.json").read_text(encoding="utf-8"))
RUNS = {r["label"]: r for r in MANIFEST["runs"]}
STORES = {"charter.db": REGISTRY_SCHEMA, "audit.db": AUDIT_SCHEMA, "idempotency.db": IDEMPOTENCY_SCHEMA}

# What each run of release 0.1.0 is in the one status vocabulary (status, cause).
EXPECTED = {
    "done": ("done", "completed"),
    "uncaught_denial": ("refused", "STATE_VIOLATION"),  # 0.1.0's audit list said program_error
    "caught_denial_concluded": ("done", "completed"),
    "caught_denial_refused": ("refused", "refused"),
    "program_error": ("failed", "program_error"),
    "syntax_error": ("failed", "syntax_error"),
    "timeout": ("failed", "timeout"),
    "memory_limit": ("failed", "memory_limit"),
    "call_limit": ("failed", "call_limit"),
    "halted": ("refused", "STATE_VIOLATION"),  # the gate ended it after limits.max_denials denials
    "in_doubt_http_write": ("done", "completed"),  # the program caught the in-doubt error and concluded
    "invoices_done": ("done", "completed"),
    "invoices_uncaught_guard": ("refused", "GUARD_VIOLATION"),
    "killed": ("interrupted", "never_sealed"),
    "intent_done": ("done", "completed"),
    "intent_refused": ("refused", "refused"),  # 0.1.0 kept no cause: the last attempt's ending
    "intent_failed": ("failed", "api_error"),
    "http_program": ("done", "completed"),
}


@pytest.fixture
def home(charter_home: Path) -> Path:
    """A copy of the fixture as this test's CHARTER_HOME."""
    shutil.copytree(FIXTURE, charter_home, ignore=shutil.ignore_patterns("*-shm", "*-wal", "_make.py"))
    return charter_home


def upgraded(home: Path) -> Path:
    result = charter("db", "upgrade", "--home", str(home))
    assert result.returncode == 0, result.stderr
    return home


def rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def columns(create_table: str) -> list[tuple[Any, ...]]:
    """The columns (name, type, not null, default, key) a CREATE TABLE statement makes."""
    with closing(sqlite3.connect(":memory:")) as db:
        db.execute(create_table)
        [table] = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchone()
        return [tuple(c[1:]) for c in db.execute(f"PRAGMA table_info({table})")]


def test_the_fixture_covers_every_kind_of_run(home: Path) -> None:
    assert set(RUNS) == set(EXPECTED)
    assert MANIFEST["written_by"] == "1e5a6f9"
    assert {read_version(home / name) for name in STORES} == {0}  # 0.1.0 kept no version


def test_a_store_of_0_1_is_refused_until_upgraded_and_the_upgrade_is_idempotent(home: Path) -> None:
    refused = charter("audit", "list")
    assert refused.returncode == 1
    assert f"this audit log is at schema version 0, older than version {AUDIT_SCHEMA.version}" in refused.stderr
    assert f"run `charter db upgrade --home {home}`" in refused.stderr
    before = {name: rows(home / name, "sqlite_master") for name in STORES}
    receipts = rows(home / "audit.db", "receipts")

    first = charter("db", "upgrade", "--home", str(home))
    assert first.returncode == 0, first.stderr
    assert f"audit log          {home / 'audit.db'}: version 0 -> {AUDIT_SCHEMA.version}" in first.stdout
    assert {name: read_version(home / name) for name in STORES} == {n: s.version for n, s in STORES.items()}
    for name, schema in STORES.items():
        # Step 1 adopts 0.1 as it is: every object 0.1.0 made is kept unchanged; later steps only add
        # the tables and triggers they name, and columns to the tables they ALTER (whose 0.1 columns stay).
        after = rows(home / name, "sqlite_master")
        later_sql = [sql for step in schema.steps if step.version > 1 for sql in step.sql]
        altered = {sql.split()[2] for sql in later_sql if sql.startswith("ALTER TABLE ") and " ADD COLUMN " in sql}
        changed = set(before[name]) - set(after)
        assert {row[1] for row in changed} <= altered, (name, changed)
        for table in {row[1] for row in changed}:
            [old] = [row for row in changed if row[1] == table]
            [new] = [row for row in after if row[:2] == old[:2]]
            assert columns(new[4])[: len(columns(old[4]))] == columns(old[4]), table  # 0.1's columns, then the new
        added = {
            row[1]
            for row in set(after) - set(before[name])
            # a 0.1 table a later step ALTERed is changed, not added (a later step's own table may be altered too)
            if row[0] in ("table", "trigger")
            and not row[1].startswith("sqlite_")
            and row[1] not in {old[1] for old in before[name]}
        }
        later = " ".join(" ".join(step.sql) for step in schema.steps if step.version > 1)
        assert all(f" {object_name}" in later for object_name in added), (name, added)
        assert len(added) == later.count("CREATE TABLE") + later.count("CREATE TRIGGER"), (name, added)
    assert rows(home / "audit.db", "receipts") == receipts  # never rewritten

    again = charter("db", "upgrade", "--home", str(home))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("nothing to do") == 3
    assert rows(home / "audit.db", "receipts") == receipts
    status = json.loads(charter("db", "status", "--home", str(home), "--json").stdout)
    assert [(s["version"], s["state"]) for s in status] == [(schema.version, "current") for schema in STORES.values()]


def test_the_upgraded_log_verifies_with_the_same_head_and_takes_new_runs(home: Path, tmp_path: Path) -> None:
    upgraded(home)
    # The quota index (schema step 4) is built from the receipts: 0.1 recorded no quotas.
    assert rows(home / "audit.db", "quota_counts") == []
    assert rows(home / "audit.db", "approvals") == []  # step 5: 0.1 paused no run
    head = MANIFEST["head"]
    verified = charter("audit", "verify", "--head", head, "--every-signature", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert (report["ok"], report["head"], report["receipts"], report["findings"]) == (True, head, 80, [])
    assert report["interrupted"] == [RUNS["killed"]["run_id"]]
    assert report["signatures_checked"] == 80  # every 0.1 body decodes strictly and its signature holds

    # The private key of 0.1.0 was not kept: new receipts are signed by a new key, and the old
    # public key stays trusted beside it.
    (home / "keys" / "receipts.pub").rename(home / "keys" / "release-0.1.pub")
    from examples.orders import backend

    backend.seed()
    program = tmp_path / "p.py"
    program.write_text('orders.cancel_order(id=123, reason="asked")\nconclude("cancelled")', encoding="utf-8")
    ran = charter("exec", str(program), "-c", "orders", "-p", "ada", "-s", "orders:write", "--json")
    assert json.loads(ran.stdout)["status"] == "refused", ran.stderr
    after = json.loads(charter("audit", "verify", "--head", head, "--json").stdout)
    assert (after["ok"], after["receipts"], after["findings"]) == (True, 83, [])
    log = AuditLog(home / "audit.db")
    assert [row.decoded().log_prev for row in log.stored()][80] == head.split(":")[1]  # chained to the 0.1 head


def test_every_run_of_0_1_shows_and_lists_with_its_status(home: Path) -> None:
    upgraded(home)
    listed = json.loads(charter("audit", "list", "--json").stdout)
    by_id = {r["run_id"]: (r["status"], r["cause"]) for r in listed}
    for label, run in RUNS.items():
        assert by_id[run["run_id"]] == EXPECTED[label], label

    def show(label: str) -> tuple[str, str]:
        text = charter("audit", "show", RUNS[label]["run_id"])
        assert text.returncode == 0, (label, text.stderr)
        return label, text.stdout

    with ThreadPoolExecutor(4) as pool:
        texts = dict(pool.map(show, RUNS))
    for label, text in texts.items():
        status, cause = EXPECTED[label]
        assert f"status: {status} (cause {cause})" in text, (label, text)
    assert "DENY STATE_VIOLATION" in texts["uncaught_denial"]
    assert "outcome: unknown" in texts["in_doubt_http_write"]
    assert "void_invoice: OUTCOME UNKNOWN" in texts["killed"]
    assert "conclusion: refused:" in texts["intent_refused"]
    body = json.loads(charter("audit", "show", RUNS["uncaught_denial"]["run_id"], "--json").stdout)
    assert (body["status"], body["cause"], body["receipts"][-1]["status"]) == (
        "refused",
        "STATE_VIOLATION",
        "program_error",
    )
    assert body["receipts"][-1]["run_status"] is None  # the 0.1 seal as stored; its status is mapped when read

    refused = json.loads(charter("audit", "list", "--status", "refused", "--json").stdout)
    assert RUNS["uncaught_denial"]["run_id"] in {r["run_id"] for r in refused}
    interrupted = json.loads(charter("audit", "list", "--status", "interrupted", "--json").stdout)
    assert [r["run_id"] for r in interrupted] == [RUNS["killed"]["run_id"]]


def test_every_replayable_run_of_0_1_replays_identically(home: Path) -> None:
    upgraded(home)
    replayable = [label for label, run in RUNS.items() if run["replay_identical"]]
    assert len(replayable) == len(RUNS) - 1  # all but the killed run, whose write is in doubt

    def replay(label: str) -> tuple[str, int, str]:
        result = charter("audit", "replay", RUNS[label]["run_id"])
        return label, result.returncode, result.stdout + result.stderr

    with ThreadPoolExecutor(4) as pool:
        for label, code, output in pool.map(replay, replayable):
            assert code == 0, (label, output)
            assert "replay identical" in output, label


def test_the_0_1_token_file_and_idempotency_store_still_serve(home: Path) -> None:
    upgraded(home)
    listed = charter("token", "list", "--json")
    assert json.loads(listed.stdout) == [{"name": "upstream-ai", "principal": "ada", "scopes": ["orders:read"]}]
    IdempotencyStore(home / "idempotency.db")  # opens at the current version
    [(principal, key, *_)] = rows(home / "idempotency.db", "idempotency")
    assert (principal, key) == ("ada", "fixture-0.1.0")


@pytest.mark.parametrize("name", list(STORES))
def test_a_store_from_a_later_release_is_refused_naming_both_versions(home: Path, name: str) -> None:
    upgraded(home)
    newer = STORES[name].version + 1  # a version no store of this release has
    with sqlite3.connect(home / name) as db:
        db.execute(f"PRAGMA user_version = {newer}")
    store = STORES[name].store
    words = (
        f"this {store} is at schema version {newer}, newer than version {STORES[name].version}, "
        "the newest this release of Charter knows"
    )
    command = {"charter.db": ("contract", "list"), "audit.db": ("audit", "list")}.get(name)
    if command is not None:
        result = charter(*command)
        assert result.returncode == 1
        assert words in result.stderr
    else:
        with pytest.raises(SchemaMismatch, match=words):
            IdempotencyStore(home / name)
    upgrade = charter("db", "upgrade", "--home", str(home))
    assert upgrade.returncode == 1
    assert words in upgrade.stderr
    assert read_version(home / name) == newer  # untouched


def test_a_token_file_from_a_later_release_is_refused(home: Path) -> None:
    tokens = home / "tokens.yaml"
    tokens.write_text("version: 2\n" + tokens.read_text(encoding="utf-8"), encoding="utf-8")
    result = charter("token", "list")
    assert result.returncode == 1
    assert "the token file is format version 2, newer than version 1" in result.stderr


def test_new_stores_are_created_at_the_current_version(charter_home: Path) -> None:
    assert charter("contract", "list").returncode == 0
    assert charter("audit", "list").returncode == 0
    IdempotencyStore(charter_home / "idempotency.db")
    for name, schema in STORES.items():
        assert read_version(charter_home / name) == schema.version, name
    charter("token", "add", "someone", "-p", "ada")
    assert (charter_home / "tokens.yaml").read_text(encoding="utf-8").count("version: 1") == 1


# -- the migration steps themselves -------------------------------------------------------

V1 = Step(1, "things", ("CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY)",))


def test_a_later_step_is_one_entry_and_runs_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        Schema("test store", (V1,)).open(db, path)  # new: created at version 1
        db.execute("INSERT INTO things VALUES (1)")
    broken = Schema(
        "test store",
        (V1, Step(2, "notes", ("CREATE TABLE notes (thing INTEGER)",)), Step(3, "bad", ("CREATE TABLE nonsense (",))),
    )
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        with pytest.raises(SchemaMismatch, match="at schema version 1, older than version 3"):
            broken.open(db, path)
        with pytest.raises(sqlite3.OperationalError):
            broken.upgrade(db, path)
    assert read_version(path) == 1  # the failed step took the steps before it back with it
    assert [r[0] for r in rows(path, "sqlite_master")] == ["table"]  # no `notes`
    fixed = Schema("test store", (V1, Step(2, "notes", ("CREATE TABLE notes (thing INTEGER)",))))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert fixed.upgrade(db, path) == (1, 2)
        fixed.open(db, path)
        assert db.execute("SELECT id FROM things").fetchall() == [(1,)]
    assert read_version(path) == 2


def test_the_denials_index_of_a_0_1_log_is_built_from_its_receipts_and_the_runs_filters_use_it(home: Path) -> None:
    upgraded(home)
    log = AuditLog(home / "audit.db")
    denied = []
    for row in log.stored():
        receipt = row.decoded()
        if isinstance(receipt, Decision) and receipt.decision == "DENY":
            denied.append((row.log_seq, receipt.run_id, receipt.principal, receipt.operation, receipt.code))
    assert len(denied) >= 4  # the fixture's denials: caught, uncaught, a guard, the halted run's
    found = rows(home / "audit.db", "denials")
    assert [(r[0], r[1], r[2], r[5], r[6]) for r in found] == denied  # step 6's backfill: every DENY, in order
    indexes = {r[1] for r in rows(home / "audit.db", "sqlite_master") if r[0] == "index"}
    assert {"runs_by_contract", "runs_by_principal", "runs_by_denial_code", "denials_by_time"} <= indexes

    service = CharterService.create(registry=Registry(), audit=log, agent=None)
    auditor = Principal("auditor", frozenset({"audit:read"}))
    page = service.list_runs(auditor, parse_run_query({"code": "GUARD_VIOLATION"}))
    assert [row.run.run_id for row in page.runs] == [RUNS["invoices_uncaught_guard"]["run_id"]]
    intents = [row for row in service.list_runs(auditor, parse_run_query({"limit": "200"})).runs if row.attempts]
    assert {row.run.run_id for row in intents} >= {RUNS["intent_done"]["run_id"], RUNS["intent_refused"]["run_id"]}
    assert all(a.parent == row.run.run_id for row in intents for a in row.attempts or [])
    view = service.overview(auditor)
    assert [run.run_id for run in view.unsealed] == [RUNS["killed"]["run_id"]]
