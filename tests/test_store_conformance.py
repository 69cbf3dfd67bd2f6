"""One conformance suite for the stores on both engines: every rule below runs against real
SQLite files and a real PostgreSQL server (tests/_pg.py), through the same store classes.

Immutability of published contracts is enforced by triggers on both engines (SQLite's words),
and on PostgreSQL also by privileges (`charter db grant ROLE`: SELECT and INSERT only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.contract import load_contract
from charter.db import Database, close_pools
from charter.deployment import open_stores
from charter.errors import ChangeRefused, SchemaMismatch, StoreUnavailable, UsageError, VersionConflict
from charter.registry import Registry
from charter.registry.store import REGISTRY_PG_SCHEMA, REGISTRY_SCHEMA
from charter.server import TokenStore
from charter.server._idempotency import (
    IDEMPOTENCY_PG_SCHEMA,
    IDEMPOTENCY_SCHEMA,
    Claimed,
    IdempotencyStore,
    KeyInProgress,
    KeyReused,
    Orphaned,
    ScopeMismatch,
    StoredResponse,
)
from charter.server._token_table import TOKENS_PG_SCHEMA
from charter.server._tokens import token_digest
from charter.ui._sessions import IDLE_SECONDS, SESSIONS_PG_SCHEMA, SESSIONS_SCHEMA, SessionStore
from tests._pg import PgServer
from tests.conftest import ROOT, WriteContract, charter

ENGINES = ["sqlite", "postgresql"]
ORDERS = ROOT / "contracts" / "orders.yaml"


@pytest.fixture(params=ENGINES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A deployment's database: SQLite files in a folder, or a fresh PostgreSQL database."""
    home = tmp_path / "stores"
    if request.param == "sqlite":
        return Database.parse(f"sqlite:{home}")
    return Database.parse(request.getfixturevalue("pg_url"), home=home)


def _publish(registry: Registry, path: Path, **kwargs: bool):  # type: ignore[no-untyped-def]
    return registry.publish(load_contract(path), path.read_text(encoding="utf-8"), **kwargs)


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


# -- the registry ------------------------------------------------------------------------------

IMMUTABLE = [
    ("contract_versions", "sha256 = 'x'", "published contract versions are immutable"),
    ("contract_promotions", "major = 9", "promotions are a history: promote again instead"),
    ("binding_modules", "sha256 = 'x'", "published binding records are immutable"),
]


def test_published_contracts_are_immutable_by_trigger_even_for_the_owner(database: Database, tmp_path: Path) -> None:
    registry = Registry(database=database)
    _publish(registry, ORDERS)
    registry.promote("orders", 1)
    with database.connect("charter.db") as db:
        # binding_modules holds no row for orders (no Python binding): one is written as the owner may
        db.execute("INSERT INTO binding_modules VALUES ('orders', '1.0.0', 'm', 'r', 'p', 's')")
        before = {table: db.execute(f"SELECT * FROM {table}").fetchall() for table, _, _ in IMMUTABLE}
        for table, change, message in IMMUTABLE:
            with pytest.raises(Exception, match=message):
                db.execute(f"UPDATE {table} SET {change}")
            with pytest.raises(Exception, match=message):
                db.execute(f"DELETE FROM {table}")
            if database.is_postgres:
                with pytest.raises(Exception, match=message):
                    db.execute(f"TRUNCATE {table}")
        assert {table: db.execute(f"SELECT * FROM {table}").fetchall() for table, _, _ in IMMUTABLE} == before
    assert [v.version for v in Registry(database=database).versions("orders")] == ["1.0.0"]


def test_the_application_role_may_not_rewrite_published_contracts(pg_server: PgServer, pg_url: str) -> None:
    owner = Database.parse(pg_url)
    assert charter("db", "upgrade", "--database", pg_url).returncode == 0
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_server.sql(f"CREATE ROLE {role} LOGIN")
    before_grant = charter("db", "grant", role, "--database", pg_url)
    assert before_grant.returncode == 0, before_grant.stderr
    assert "SELECT, INSERT on contract_versions, contract_promotions, binding_modules" in before_grant.stdout
    app = Database.parse(pg_server.url(_database_name(pg_url), role))
    registry = Registry(database=app)  # the role opens, reads and publishes (INSERT) ...
    _publish(registry, ORDERS)
    registry.promote("orders", 1)  # ... and promotes (the identity sequence)
    with app.connect("charter.db") as db:
        for table, change, _ in IMMUTABLE:
            with pytest.raises(Exception, match=f"permission denied for table {table}"):
                db.execute(f"UPDATE {table} SET {change}")
            with pytest.raises(Exception, match=f"permission denied for table {table}"):
                db.execute(f"DELETE FROM {table}")
            with pytest.raises(Exception, match=f"permission denied for table {table}"):
                db.execute(f"TRUNCATE {table}")
    # the mutable stores are the role's to write
    store = IdempotencyStore(database=app)
    assert store.claim("p", "k", "d", run_id="r1", scopes=()) == Claimed("r1")
    TokenStore(database=app).add("ci", "ci-bot", ["orders:read"])
    SessionStore(database=app).create_link("t" * 64, "ci-bot")
    store.close()
    with owner.connect("charter.db") as db:
        assert db.execute("SELECT count(*) FROM contract_versions").fetchone()[0] == 1
    close_pools()


def test_a_role_without_grants_is_told_to_upgrade_and_grant(pg_server: PgServer, pg_url: str) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_server.sql(f"CREATE ROLE {role} LOGIN")
    app = Database.parse(pg_server.url(_database_name(pg_url), role))
    with pytest.raises(
        UsageError, match=r"the registry cannot be opened as this role .*charter db upgrade.*charter db grant"
    ):
        Registry(database=app)  # nothing created yet, and the role may not create it
    assert charter("db", "upgrade", "--database", pg_url).returncode == 0
    with pytest.raises(UsageError, match=r"permission denied for table charter_schema.*charter db grant"):
        IdempotencyStore(database=app)  # created, but not granted


def test_publish_semantics_are_the_same(database: Database, write_contract: WriteContract) -> None:
    registry, other = Registry(database=database), Registry(database=database)
    first = _publish(registry, write_contract())
    assert first.created
    assert [v.version for v in other.versions("shop")] == ["1.0.0"]  # another object sees it at once
    again = _publish(other, write_contract(replace={"contract: shop": "# reformatted\ncontract: shop"}))
    assert (again.created, again.info) == (False, first.info)
    with pytest.raises(VersionConflict, match=r"shop 1.0.0 is already published with other content"):
        _publish(registry, write_contract(replace={"Cancel an order.": "Cancel one order."}))
    _publish(registry, write_contract(replace={"version: 1.0.0": "version: 1.2.0"}))
    with pytest.raises(VersionConflict, match=r"shop 1.1.0 is not newer than 1.2.0"):
        _publish(other, write_contract(replace={"version: 1.0.0": "version: 1.1.0"}))
    breaking = {
        "version: 1.0.0": "version: 1.3.0",
        "params: {id: int, reason: str}": "params: {id: int, reason: str, by: str}",
    }
    with pytest.raises(ChangeRefused, match=r"breaking changes to 1.2.0 without a major version bump"):
        _publish(other, write_contract(replace=breaking))
    assert [v.version for v in other.versions("shop")] == ["1.0.0", "1.2.0"]
    assert other.get("shop").version == "1.2.0"


def test_two_publishers_of_one_version_publish_it_once(database: Database, write_contract: WriteContract) -> None:
    path = write_contract()
    registries = [Registry(database=database) for _ in range(4)]
    start = threading.Barrier(len(registries), timeout=60)
    created: list[bool] = []

    def publish(registry: Registry) -> None:
        start.wait()
        created.append(_publish(registry, path).created)

    threads = [threading.Thread(target=publish, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created) == [False, False, False, True]
    with database.connect("charter.db") as db:
        assert db.execute("SELECT count(*) FROM contract_versions").fetchone()[0] == 1


# -- idempotency keys --------------------------------------------------------------------------


def test_idempotency_semantics(database: Database) -> None:
    first, second = IdempotencyStore(database=database), IdempotencyStore(database=database)
    assert first.claim("alice", "k1", "body-a", run_id="run-1", scopes=["w", "r"]) == Claimed("run-1")
    with pytest.raises(KeyInProgress):  # its owner (another store) is live
        second.claim("alice", "k1", "body-a", run_id="run-2", scopes=["w", "r"])
    with pytest.raises(KeyReused):
        second.claim("alice", "k1", "body-b", run_id="run-2", scopes=["w", "r"])
    first.complete("alice", "k1", "run-1", StoredResponse(200, b'{"ok": true}'))
    assert second.claim("alice", "k1", "body-a", run_id="run-3", scopes=["r", "w"]) == StoredResponse(
        200, b'{"ok": true}'
    )
    assert second.finished("alice", "k1", ["body-a"], scopes=["r", "w"]) == StoredResponse(200, b'{"ok": true}')
    with pytest.raises(ScopeMismatch):
        second.claim("alice", "k1", "body-a", run_id="run-4", scopes=["r"])
    assert second.claim("bob", "k1", "body-a", run_id="run-5", scopes=[]) == Claimed("run-5")  # keys are per principal
    second.release("bob", "k1", "run-5")
    assert first.claim("bob", "k1", "body-z", run_id="run-6", scopes=[]) == Claimed("run-6")  # released: free again
    first.close()
    second.close()


def test_two_stores_racing_from_two_threads_claim_each_key_once(database: Database) -> None:
    stores = [IdempotencyStore(database=database), IdempotencyStore(database=database)]
    keys = [f"key-{i}" for i in range(40)]
    start = threading.Barrier(2, timeout=60)  # a claim that raises fails the test, not hangs it
    outcomes: dict[str, list[str]] = {key: [] for key in keys}

    def claim_all(index: int, store: IdempotencyStore) -> None:
        for key in keys:
            start.wait()
            try:
                result = store.claim("p", key, "d", run_id=f"run-{index}-{key}", scopes=())
                outcomes[key].append(type(result).__name__)
            except KeyInProgress:
                outcomes[key].append("KeyInProgress")

    threads = [threading.Thread(target=claim_all, args=(i, s)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {key: sorted(found) for key, found in outcomes.items()} == {
        key: ["Claimed", "KeyInProgress"] for key in keys
    }
    for store in stores:
        store.close()


_CLAIMER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from charter.db import Database
    from charter.server._idempotency import IdempotencyStore, KeyInProgress

    database = Database.parse(sys.argv[1])
    store = IdempotencyStore(database=database, lease_seconds=float(sys.argv[4]))
    go = Path(sys.argv[2])
    mode = sys.argv[3]
    if mode == "hold":  # claim one key, say so, then hang until killed
        print(type(store.claim("p", "held", "d", run_id="run-held", scopes=())).__name__, flush=True)
        time.sleep(600)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    found = {}
    for i in range(int(mode)):
        try:
            found[f"key-{i}"] = type(store.claim("p", f"key-{i}", "d", run_id=f"run-{os.getpid()}-{i}", scopes=())).__name__
        except KeyInProgress:
            found[f"key-{i}"] = "KeyInProgress"
    print(json.dumps(found), flush=True)
    """
)


def _claimer(database: Database, go: Path, mode: str, lease: float = 30.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CLAIMER, database.url, str(go), mode, str(lease)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_two_processes_racing_claim_each_key_once(database: Database, tmp_path: Path) -> None:
    IdempotencyStore(database=database).close()  # the store exists before the race (created once)
    go = tmp_path / "go"
    processes = [_claimer(database, go, "30") for _ in range(2)]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", process.stderr.read() if process.stderr else ""
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    assert {key: sorted([results[0][key], results[1][key]]) for key in results[0]} == {
        f"key-{i}": ["Claimed", "KeyInProgress"] for i in range(30)
    }


def test_a_killed_owners_key_is_taken_over_once_after_its_lease(database: Database, tmp_path: Path) -> None:
    owner = _claimer(database, tmp_path / "go", "hold", lease=1.0)
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "Claimed"
    stores = [IdempotencyStore(database=database, lease_seconds=1.0) for _ in range(2)]
    with pytest.raises(KeyInProgress):  # its heartbeat keeps the lease live
        stores[0].claim("p", "held", "d", run_id="mine", scopes=())
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=30)
    orphan = _orphaned(stores[0])
    assert orphan.run_id == "run-held"
    assert orphan.owner is not None
    assert f":{owner.pid}:" in orphan.owner
    taken = [store.take_over("p", "held", orphan) for store in stores]
    assert sorted(type(t).__name__ for t in taken) == ["Claimed", "NoneType"]  # one taker
    winner = stores[taken.index(Claimed("run-held"))]
    winner.complete("p", "held", "run-held", StoredResponse(201, b"done"))
    assert stores[1].claim("p", "held", "d", run_id="again", scopes=()) == StoredResponse(201, b"done")
    for store in stores:
        store.close()


def _orphaned(store: IdempotencyStore) -> Orphaned:
    """Claim the key until its dead owner's lease has run out (a lease is 1 s here)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            found = store.claim("p", "held", "d", run_id="mine", scopes=())
        except KeyInProgress:
            assert time.monotonic() < deadline, "the dead owner's lease never ran out"
            time.sleep(0.2)
            continue
        assert isinstance(found, Orphaned)
        return found


# -- review-app sessions -----------------------------------------------------------------------


def test_sessions_create_expire_and_end(database: Database) -> None:
    now = [1_000_000.0]
    store, other = (SessionStore(database=database, clock=lambda: now[0]) for _ in range(2))
    code = store.create_link("t" * 64, "alice")
    assert other.redeem_link(code) == ("t" * 64, "alice")
    assert store.redeem_link(code) is None  # one sign-in per link, across store objects
    session = store.start("t" * 64, "alice")
    assert SessionStore(database=database, clock=lambda: now[0]).get(session.id) is not None
    now[0] += IDLE_SECONDS + 1
    assert store.get(session.id) is None  # idle too long: expired (and deleted)
    now[0] -= IDLE_SECONDS + 1
    assert SessionStore(database=database, clock=lambda: now[0]).get(session.id) is None
    live = store.start("t" * 64, "alice")
    assert store.get(live.id) is not None
    SessionStore(database=database, clock=lambda: now[0]).end(live.id)  # signed out elsewhere
    assert store.get(live.id) is None
    store.close()
    other.close()


# -- API tokens --------------------------------------------------------------------------------


def test_tokens_add_look_up_and_revoke_at_once_everywhere(database: Database) -> None:
    writer, reader = TokenStore(database=database), TokenStore(database=database)
    token = writer.add("ci", "ci-bot", ["orders:write", "orders:read"], {"team": "payments"})
    writer.add("auditor", "audit-bot", ["orders:read"])
    acting = reader.authenticate(token)
    assert acting is not None
    assert (acting.id, sorted(acting.scopes), dict(acting.attributes)) == (
        "ci-bot",
        ["orders:read", "orders:write"],
        {"team": "payments"},
    )
    entry = reader.by_digest(token_digest(token))
    assert entry is not None
    assert entry.name == "ci"
    assert [e.name for e in reader.entries()] == ["ci", "auditor"]
    assert reader.authenticate("chr_not-a-token") is None
    with pytest.raises(UsageError, match="a token named 'ci' exists"):
        reader.add("ci", "someone", [])
    writer.revoke("ci")
    assert reader.authenticate(token) is None  # at once, in another store object
    assert reader.by_digest(token_digest(token)) is None
    assert reader.principal("ci-bot") is None
    with pytest.raises(UsageError, match=r"no token is named 'ci' \(tokens: auditor\)"):
        reader.revoke("ci")


# -- schema versions ---------------------------------------------------------------------------

SCHEMAS = [
    ("registry", "charter.db", REGISTRY_SCHEMA, REGISTRY_PG_SCHEMA, lambda db: Registry(database=db)),
    (
        "idempotency store",
        "idempotency.db",
        IDEMPOTENCY_SCHEMA,
        IDEMPOTENCY_PG_SCHEMA,
        lambda db: IdempotencyStore(database=db),
    ),
    (
        "review-app session store",
        "ui-sessions.db",
        SESSIONS_SCHEMA,
        SESSIONS_PG_SCHEMA,
        lambda db: SessionStore(database=db),
    ),
]


@pytest.mark.parametrize(("store", "filename", "schema", "pg", "opened"), SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_a_store_newer_than_this_release_is_refused_naming_both_versions(
    database: Database,
    store: str,
    filename: str,
    schema,
    pg,
    opened,  # type: ignore[no-untyped-def]
) -> None:
    opened(database)
    current = pg.version if database.is_postgres else schema.version
    with database.connect(filename) as db:
        if database.is_postgres:
            db.execute("UPDATE charter_schema SET version = ? WHERE store = ?", (current + 1, store))
        else:
            db.execute(f"PRAGMA user_version = {current + 1}")
    with pytest.raises(SchemaMismatch, match=rf"schema version {current + 1}, newer than version {current}") as refused:
        opened(database)
    assert (refused.value.found, refused.value.expected) == (current + 1, current)


def test_a_newer_token_table_is_refused_naming_both_versions(pg_url: str) -> None:
    database = Database.parse(pg_url)
    TokenStore(database=database)
    with database.connect("") as db:
        db.execute(
            "UPDATE charter_schema SET version = ? WHERE store = ?", (TOKENS_PG_SCHEMA.version + 1, "API token store")
        )
    with pytest.raises(SchemaMismatch, match=rf"version {TOKENS_PG_SCHEMA.version + 1}, newer than version 1"):
        TokenStore(database=database)


# -- the database down -------------------------------------------------------------------------


def test_stores_raise_store_unavailable_when_postgres_cannot_be_reached(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    database = Database.parse(f"postgresql://charter:s3cret@127.0.0.1:{port}/nowhere", home=tmp_path)
    try:
        with pytest.raises(StoreUnavailable, match=r"the registry cannot reach the database") as refused:
            Registry(database=database)
        assert "charter:***@127.0.0.1" in str(refused.value)
        assert "s3cret" not in str(refused.value)
        assert refused.value.retry_after == 2
    finally:
        close_pools()


# -- the deployment and the CLI ----------------------------------------------------------------


def test_open_stores_on_sqlite_opens_every_store_in_the_home(tmp_path: Path) -> None:
    database = Database.parse(f"sqlite:{tmp_path / 'deployment'}")
    stores = open_stores(database, lease_seconds=5.0)
    stores.tokens.add("ci", "ci-bot", [])
    assert stores.audit.path == tmp_path / "deployment" / "audit.db"
    assert stores.registry.path == tmp_path / "deployment" / "charter.db"
    assert stores.tokens.path == tmp_path / "deployment" / "tokens.yaml"
    assert {p.name for p in (tmp_path / "deployment").iterdir()} >= {
        "charter.db",
        "idempotency.db",
        "ui-sessions.db",
        "tokens.yaml",
    }
    stores.close()


def test_open_stores_on_postgres_puts_every_store_in_the_database(pg_url: str, tmp_path: Path) -> None:
    database = Database.parse(pg_url, home=tmp_path / "deployment")
    stores = open_stores(database, lease_seconds=5.0)
    token = stores.tokens.add("ci", "ci-bot", ["orders:read"])
    assert stores.audit.database == database
    assert stores.audit.signing_key.key_id  # the keys stay in the home folder, not in any database
    with database.connect("") as db:
        tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert db.execute("SELECT principal FROM api_tokens WHERE name = 'ci'").fetchone()[0] == "ci-bot"
    assert {"receipts", "stream_heads", "contract_versions", "idempotency", "api_tokens"} <= tables
    caller = stores.tokens.authenticate(token)
    assert caller is not None
    assert caller.id == "ci-bot"
    # Nothing but keys (and no store file) in the home: every store is a set of tables.
    assert not list((tmp_path / "deployment").glob("*.db"))
    stores.close()
    close_pools()


def test_db_upgrade_status_on_postgres_through_the_cli(pg_url: str) -> None:
    before = charter("db", "status", "--database", pg_url, "--json")
    assert before.returncode == 2  # every store absent: `charter db upgrade` creates them
    assert {row["state"].split(":")[0] for row in json.loads(before.stdout)} == {"absent"}
    upgraded = charter("db", "upgrade", "--database", pg_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "registry" in upgraded.stdout
    assert "created at version 1" in upgraded.stdout
    again = charter("db", "upgrade", "--database", pg_url)
    assert again.stdout.count("nothing to do") == 5
    status = charter("db", "status", "--database", pg_url, "--json")
    assert status.returncode == 0, status.stderr
    assert {row["store"]: (row["version"], row["state"]) for row in json.loads(status.stdout)} == {
        "registry": (1, "current"),
        "audit log": (1, "current"),
        "idempotency store": (1, "current"),
        "review-app session store": (1, "current"),
        "API token store": (1, "current"),
    }
    with Database.parse(pg_url).connect("") as db:
        db.execute("UPDATE charter_schema SET version = 7 WHERE store = 'registry'")
    newer = charter("db", "status", "--database", pg_url)
    assert newer.returncode == 1
    assert "version 7 of 1 (newer than this release)" in newer.stdout
    close_pools()


def test_db_grant_is_refused_on_sqlite_and_for_a_bad_role(pg_url: str, tmp_path: Path) -> None:
    on_sqlite = charter("db", "grant", "app", "--database", f"sqlite:{tmp_path}")
    assert on_sqlite.returncode == 1
    assert "roles and grants are PostgreSQL's" in on_sqlite.stderr
    not_yet = charter("db", "grant", "app", "--database", pg_url)
    assert not_yet.returncode == 1
    assert "run `charter db upgrade --database URL` as the owner first" in not_yet.stderr
    assert charter("db", "upgrade", "--database", pg_url).returncode == 0
    bad = charter("db", "grant", "app; DROP TABLE x", "--database", pg_url)
    assert bad.returncode == 1
    assert "is not a plain identifier" in bad.stderr
    missing = charter("db", "grant", "nobody_at_all", "--database", pg_url)
    assert missing.returncode == 1
    assert 'role "nobody_at_all" does not exist' in missing.stderr


def test_db_status_on_sqlite_with_database_url(tmp_path: Path) -> None:
    Registry(database=Database.parse(f"sqlite:{tmp_path}"))
    status = charter("db", "status", "--database", f"sqlite:{tmp_path}", "--json")
    assert status.returncode == 0, status.stderr
    rows = {row["store"]: row for row in json.loads(status.stdout)}
    assert rows["registry"]["file"] == str(tmp_path / "charter.db")
    assert (rows["registry"]["version"], rows["audit log"]["state"]) == (REGISTRY_SCHEMA.version, "absent")


def test_token_commands_on_postgres(pg_url: str) -> None:
    added = charter("token", "add", "ci", "--principal", "ci-bot", "--scope", "orders:read", "--database", pg_url)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert TokenStore(database=Database.parse(pg_url)).authenticate(token) is not None
    listed = charter("token", "list", "--database", pg_url, "--json")
    assert json.loads(listed.stdout) == [{"name": "ci", "principal": "ci-bot", "scopes": ["orders:read"]}]
    assert charter("token", "revoke", "ci", "--database", pg_url).returncode == 0
    assert TokenStore(database=Database.parse(pg_url)).authenticate(token) is None
    close_pools()


def test_the_database_url_alone_sends_every_command_to_postgres(
    pg_url: str, charter_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHARTER_DATABASE_URL set and no --database: contract publish, token add and audit go to
    PostgreSQL, not to SQLite files in the home (publish wrote a local charter.db once)."""
    monkeypatch.setenv("CHARTER_DATABASE_URL", pg_url)
    published = charter("contract", "publish", "contracts/orders.yaml")
    assert published.returncode == 0, published.stderr
    assert charter("token", "add", "ci", "--principal", "ci-bot", "--scope", "orders:read").returncode == 0
    database = Database.parse(pg_url, home=charter_home)
    assert Registry(database=database).names() == ["orders"]
    assert [e.name for e in TokenStore(database=database).entries()] == ["ci"]
    listed = charter("contract", "list")
    assert listed.returncode == 0
    assert "orders" in listed.stdout
    assert not list(charter_home.glob("*.db"))
    assert not (charter_home / "tokens.yaml").exists()


@pytest.fixture(autouse=True)
def _pools_closed() -> Iterator[None]:
    yield
    close_pools()
