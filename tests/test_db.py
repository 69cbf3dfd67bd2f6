"""charter.db: database URLs, the psycopg adapter and PostgreSQL schema versions, on a real server."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from charter.db import (
    Connection,
    Database,
    PgConnection,
    PgSchema,
    PgStep,
    close_pools,
    pg_ddl,
    pg_versions,
    write_transaction,
)
from charter.db._postgres import pg_sql
from charter.errors import SchemaMismatch, UsageError
from tests._pg import PgServer


def test_urls_parse_to_sqlite_folders_or_postgres(tmp_path: Path) -> None:
    assert Database.parse(f"sqlite:{tmp_path}").home == tmp_path
    assert Database.parse("sqlite:", home=tmp_path).home == tmp_path
    pg = Database.parse("postgresql://app:s3cret@db.internal:5432/charter", home=tmp_path)
    assert pg.is_postgres
    assert pg.home == tmp_path
    assert "s3cret" not in pg.shown
    assert pg.shown == "postgresql://app:***@db.internal:5432/charter"
    with pytest.raises(UsageError, match=r"neither sqlite:FOLDER nor postgresql://.*CHARTER_DATABASE_URL") as caught:
        Database.parse("mysql://root:hunter2@x/y")
    assert "hunter2" not in str(caught.value)


def test_env_chooses_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHARTER_DATABASE_URL", raising=False)
    assert Database.from_env(tmp_path).kind == "sqlite"
    monkeypatch.setenv("CHARTER_DATABASE_URL", "postgresql://x@y/z")
    assert Database.from_env(tmp_path).kind == "postgresql"
    assert Database.from_env(tmp_path, url=f"sqlite:{tmp_path}").kind == "sqlite"


def test_sqlite_style_sql_is_rewritten_for_psycopg() -> None:
    assert (
        pg_sql("SELECT a FROM t WHERE b = ? AND c LIKE ? || '%'")
        == "SELECT a FROM t WHERE b = %s AND c LIKE %s || '%%'"
    )
    assert pg_sql("BEGIN IMMEDIATE") == "BEGIN"


_V1 = PgStep(1, "t", ("CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL)",))
_V2 = PgStep(2, "u", ("ALTER TABLE things ADD COLUMN note TEXT",))


def test_schema_created_then_refused_newer_and_older(pg_url: str) -> None:
    database = Database.parse(pg_url)
    with database.pg_connection() as connection:
        PgSchema("things", (_V1,)).open(connection, database.shown)
        assert pg_versions(connection) == {"things": 1}
        connection.execute("INSERT INTO things VALUES (?, ?)", ("a", 1))
        with pytest.raises(SchemaMismatch, match=r"schema version 1, older than version 2.*charter db upgrade") as old:
            PgSchema("things", (_V1, _V2)).open(connection, database.shown)
        assert (old.value.found, old.value.expected) == (1, 2)
        assert PgSchema("things", (_V1, _V2)).upgrade(connection, database.shown) == (1, 2)
        assert connection.execute("SELECT id, n, note FROM things").fetchall() == [("a", 1, None)]
        with pytest.raises(SchemaMismatch, match=r"schema version 2, newer than version 1") as new:
            PgSchema("things", (_V1,)).open(connection, database.shown)
        assert (new.value.found, new.value.expected) == (2, 1)


def test_a_failed_step_leaves_the_version_and_tables_as_they_were(pg_url: str) -> None:
    database = Database.parse(pg_url)
    broken = PgStep(2, "broken", ("ALTER TABLE things ADD COLUMN note TEXT", "ALTER TABLE nowhere ADD COLUMN x INT"))
    with database.pg_connection() as connection:
        PgSchema("things", (_V1,)).open(connection, database.shown)
        with pytest.raises(Exception, match="nowhere"):
            PgSchema("things", (_V1, broken)).upgrade(connection, database.shown)
        assert pg_versions(connection) == {"things": 1}
        columns = connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'things' ORDER BY column_name"
        ).fetchall()
        assert [c[0] for c in columns] == ["id", "n"]
        assert isinstance(connection, PgConnection)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_one_sql_text_runs_on_both_engines(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:{tmp_path}" if engine == "sqlite" else request.getfixturevalue("pg_url")
    database = Database.parse(url, home=tmp_path)
    with database.connect("things.db") as connection:
        connection.execute("CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        with write_transaction(connection):
            connection.execute("INSERT INTO things VALUES (?, ?) ON CONFLICT (id) DO NOTHING", ("a%", 1))
            connection.execute("INSERT INTO things VALUES (?, ?) ON CONFLICT (id) DO NOTHING", ("a%", 2))
        with pytest.raises(RuntimeError):
            _insert_then_fail(connection)
        rows = connection.execute("SELECT id, n FROM things WHERE id LIKE ? || '%'", ("a",)).fetchall()
        assert [tuple(r) for r in rows] == [("a%", 1)]
        assert connection.execute("SELECT count(*) FROM things").fetchone()[0] == 1


def test_grants_name_only_what_the_application_needs() -> None:
    schema = PgSchema("log", (_V1,), append_only=("receipts",), mutable=("heads",), sequences=("log_seq",))
    assert schema.grants("charter_app") == [
        "GRANT SELECT ON charter_schema TO charter_app",
        "GRANT SELECT, INSERT ON receipts TO charter_app",
        "REVOKE UPDATE, DELETE, TRUNCATE ON receipts FROM charter_app",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON heads TO charter_app",
        "GRANT USAGE, SELECT ON SEQUENCE log_seq TO charter_app",
    ]
    with pytest.raises(ValueError, match="plain identifier"):
        schema.grants("app; DROP TABLE receipts")


def _insert_then_fail(connection: Connection) -> None:
    with write_transaction(connection):
        connection.execute("INSERT INTO things VALUES (?, ?)", ("b", 3))
        raise RuntimeError("rolled back")


def test_processes_creating_one_store_at_once_all_open_it(pg_url: str) -> None:
    """Workers starting together against an empty database: one creates the store, the others
    wait for its advisory lock and then find it at their version (not "older than version 1")."""
    database = Database.parse(pg_url)
    schema = PgSchema("things", (_V1, _V2))
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            with database.pg_connection() as connection:
                start.wait(timeout=60)
                schema.open(connection, database.shown)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.pg_connection() as connection:
        assert pg_versions(connection) == {"things": 2}


def test_sqlite_ddl_is_typed_for_postgres_and_nothing_else_changes() -> None:
    assert pg_ddl(("CREATE TABLE t (a INTEGER NOT NULL, b BLOB, c REAL, intent TEXT, integers_seen INTEGER)",)) == (
        "CREATE TABLE t (a BIGINT NOT NULL, b BYTEA, c DOUBLE PRECISION, intent TEXT, integers_seen BIGINT)",
    )


def test_a_password_never_reaches_a_message_or_a_log_line(
    pg_server: PgServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """libpq quotes a connection string it cannot parse, password included; psycopg_pool logs each
    failed attempt (README-only attack, F7: a password printed six times). And a configuration
    that cannot work (a malformed URL, a missing database) is a usage error naming the cause,
    not "retry in 2 s"."""
    from charter.registry import Registry

    caplog.set_level(logging.DEBUG)
    malformed = Database.parse(f"postgresql://charter:s3cret%zzPW@127.0.0.1:{pg_server.port}/x", home=tmp_path)
    missing = Database.parse(f"postgresql://charter:s3cret@127.0.0.1:{pg_server.port}/no_such_db", home=tmp_path)
    for database, cause in (
        (malformed, "invalid percent-encoded token"),
        (missing, 'database "no_such_db" does not exist'),
    ):
        with pytest.raises(UsageError) as refused:
            Registry(database=database)
        assert cause in str(refused.value)
        assert "fix the URL" in str(refused.value)
    close_pools()
    assert "s3cret" not in caplog.text + str(refused.value)
    assert "***" in caplog.text


def test_the_pool_size_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from charter.db._postgres import pool_size

    for bad in ("0", "1", "-3", "abc", "100000"):
        monkeypatch.setenv("CHARTER_DATABASE_POOL", bad)
        with pytest.raises(
            UsageError, match=r"CHARTER_DATABASE_POOL=.*give the connections per worker process, 2 to 1000"
        ):
            pool_size()
    monkeypatch.setenv("CHARTER_DATABASE_POOL", "4")
    assert pool_size() == 4
