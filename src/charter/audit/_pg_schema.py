"""The audit log's tables in PostgreSQL (`AUDIT_PG_SCHEMA`), beside `store.AUDIT_SCHEMA` for SQLite.

Version 1 is the SQLite log's whole schema (seven SQLite steps) translated, plus what concurrent
writers need (design19.md, "The audit log with concurrent writers"):

- `receipts` gains `stream` and `stream_seq` (the writer's stream and the receipt's place in it,
  as its signed body says); `log_seq` comes from the sequence `receipts_log_seq` (unique, and
  increasing within a stream, since a stream has one writer that commits in order);
  UNIQUE (stream, stream_seq) for every stream but "" (a log copied from SQLite: stream "",
  stream_seq 0 throughout);
- `stream_heads`: one row per stream (its last stream_seq, log_seq and link), updated in the
  same transaction as the stream's receipts, so a truncated stream no longer reaches its head;
  writers never touch another stream's row, so they do not serialize on one row;
- `head`: the stream "" head of a log copied from SQLite, as SQLite keeps it.

Append-only twice: triggers refuse UPDATE, DELETE and TRUNCATE of receipts with the SQLite
triggers' words, and `grants(role)` gives the application's role SELECT and INSERT only on
receipts. The indexes (runs, denials, quota_counts, approvals) are made by the SQLite steps' own
statements, typed for PostgreSQL (`charter.db.pg_ddl`: INTEGER is BIGINT); the index functions
write to them with SQL both engines take.
"""

from __future__ import annotations

from charter.approvals._index import APPROVALS_INDEX_SQL
from charter.audit.index import DENIALS_INDEX_SQL, IN_DOUBT_INDEX_SQL, RUNS_INDEX_SQL
from charter.audit.quotas import QUOTA_INDEX_SQL
from charter.db import PgSchema, PgStep, pg_ddl

__all__ = ["AUDIT_PG_SCHEMA", "LOG_SEQ_SEQUENCE"]

LOG_SEQ_SEQUENCE = "receipts_log_seq"

_APPEND_ONLY_FUNCTION = """CREATE FUNCTION receipts_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'the audit log is append-only: receipts cannot be updated';
    ELSIF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the audit log is append-only: receipts cannot be deleted';
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: receipts cannot be truncated';
END
$$"""

AUDIT_PG_SCHEMA = PgSchema(
    "audit log",
    (
        PgStep(
            1,
            "the SQLite audit log's schema (receipts, head, keys, backend_errors, the runs, denials, quota and "
            "approvals indexes) with one stream per writer: receipts.stream/stream_seq, stream_heads, the "
            "log_seq sequence; triggers refusing UPDATE, DELETE and TRUNCATE of receipts",
            (
                f"CREATE SEQUENCE {LOG_SEQ_SEQUENCE} AS BIGINT START 1",
                """CREATE TABLE receipts (
                    log_seq    BIGINT PRIMARY KEY,
                    run_id     TEXT NOT NULL,
                    seq        BIGINT NOT NULL,
                    kind       TEXT NOT NULL,
                    body       BYTEA NOT NULL,
                    signature  BYTEA NOT NULL,
                    link       TEXT NOT NULL,
                    stream     TEXT NOT NULL DEFAULT '',
                    stream_seq BIGINT NOT NULL DEFAULT 0,
                    UNIQUE (run_id, seq)
                )""",
                "CREATE INDEX receipts_by_kind ON receipts (kind, run_id)",
                "CREATE UNIQUE INDEX receipts_by_stream ON receipts (stream, stream_seq) WHERE stream <> ''",
                """CREATE TABLE stream_heads (
                    stream     TEXT PRIMARY KEY,
                    stream_seq BIGINT NOT NULL,
                    log_seq    BIGINT NOT NULL,
                    link       TEXT NOT NULL,
                    key_id     TEXT NOT NULL,
                    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )""",
                """CREATE TABLE head (
                    one     INTEGER PRIMARY KEY CHECK (one = 1),
                    log_seq BIGINT NOT NULL,
                    link    TEXT NOT NULL
                )""",
                "CREATE TABLE keys (key_id TEXT PRIMARY KEY, public_key BYTEA NOT NULL)",
                _APPEND_ONLY_FUNCTION,
                "CREATE TRIGGER receipts_no_update BEFORE UPDATE ON receipts "
                "FOR EACH ROW EXECUTE FUNCTION receipts_append_only()",
                "CREATE TRIGGER receipts_no_delete BEFORE DELETE ON receipts "
                "FOR EACH ROW EXECUTE FUNCTION receipts_append_only()",
                "CREATE TRIGGER receipts_no_truncate BEFORE TRUNCATE ON receipts "
                "FOR EACH STATEMENT EXECUTE FUNCTION receipts_append_only()",
                """CREATE TABLE backend_errors (
                    run_id         TEXT NOT NULL,
                    call           BIGINT NOT NULL,
                    operation      TEXT NOT NULL,
                    error_type     TEXT NOT NULL,
                    message_sha256 TEXT NOT NULL,
                    message        TEXT NOT NULL,
                    PRIMARY KEY (run_id, call)
                )""",
                # The indexes beside the log: the SQLite steps' own statements (charter.audit.index,
                # .quotas, charter.approvals._index), typed for PostgreSQL, so the two cannot drift.
                *pg_ddl(
                    RUNS_INDEX_SQL + DENIALS_INDEX_SQL + IN_DOUBT_INDEX_SQL + QUOTA_INDEX_SQL + APPROVALS_INDEX_SQL
                ),
            ),
        ),
    ),
    append_only=("receipts",),
    mutable=("stream_heads", "head", "keys", "backend_errors", "runs", "denials", "quota_counts", "approvals"),
    sequences=(LOG_SEQ_SEQUENCE,),
)
