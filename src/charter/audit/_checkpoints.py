"""Signed checkpoints of the log's heads, written outside the database.

A log cannot prove from inside itself that nothing was cut from its end: whoever can
delete its last receipts can rewrite its head row too. So the writer also appends, to a
file outside the database, where each stream ended:

    <home>/checkpoints.jsonl    (--checkpoints PATH / $CHARTER_CHECKPOINTS; "none": off)

    {"stream": "", "stream_seq": 812, "log_seq": 812, "link": "9c0f…", "key_id": "3f2a…",
     "at": "2026-11-30T04:12:07.118204+00:00", "signature": "<128 hex>"}

one JSON line per checkpoint, signed (Ed25519 over the canonical JSON of the other fields:
keys sorted, no spaces, UTF-8) by the writer's key, appended with O_APPEND in one write()
of under PIPE_BUF bytes and fsync'd, so writers of several processes share one file and no
line is ever torn by another. A checkpoint is written after 64 commits, or 1 s after the
first commit not yet checkpointed, and when the log is closed (or the process exits):
what is committed after the last checkpoint is not covered (a kill -9 can lose up to 1 s
of that cover, never a receipt).

`charter audit verify --head FILE` then checks, for each stream of FILE, that the log still
holds the receipt of its latest checkpoint (`check_checkpoints`). A log of another name than
audit.db keeps its checkpoints beside it as NAME.checkpoints.jsonl.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from charter.audit._keyring import key_problem
from charter.audit._writer import Head
from charter.audit.keys import PublicKey, SigningKey
from charter.audit.receipts import decode_body
from charter.audit.verify import Finding, Verification
from charter.errors import UsageError

if TYPE_CHECKING:
    from charter.audit.store import AuditLog

__all__ = [
    "CHECKPOINTS_ENV",
    "Checkpoint",
    "CheckpointWriter",
    "check_checkpoints",
    "checkpoint_line",
    "checkpoints_path",
    "current_heads",
    "read_checkpoints",
    "with_findings",
]

CHECKPOINTS_ENV = "CHARTER_CHECKPOINTS"
EVERY_COMMITS = 64
AFTER_SECONDS = 1.0
_SIGNED = ("stream", "stream_seq", "log_seq", "link", "key_id", "at")


def checkpoints_path(log_path: Path, setting: Path | str | None = None) -> Path | None:
    """Where the log at `log_path` appends its checkpoints: `setting`, else $CHARTER_CHECKPOINTS,
    else beside the log (audit.db: checkpoints.jsonl; NAME.db: NAME.checkpoints.jsonl). None
    when the setting is "none" (checkpoints off)."""
    chosen = str(setting) if setting is not None else os.environ.get(CHECKPOINTS_ENV, "")
    if chosen.strip().lower() == "none":
        return None
    if chosen:
        return Path(chosen)
    name = "checkpoints.jsonl" if log_path.name == "audit.db" else f"{log_path.stem}.checkpoints.jsonl"
    return log_path.parent / name


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps({k: fields[k] for k in _SIGNED}, sort_keys=True, separators=(",", ":")).encode("utf-8")


def checkpoint_line(head: Head, key: SigningKey, at: str | None = None) -> str:
    """One signed checkpoint of `head` as a JSON line (with its newline), signed by `key` at
    `at` (ISO-8601; default now)."""
    from charter.audit.store import now_iso

    fields: dict[str, Any] = {
        "stream": head.stream,
        "stream_seq": head.stream_seq,
        "log_seq": head.log_seq,
        "link": head.link,
        "key_id": key.key_id,
        "at": at or now_iso(),
    }
    fields["signature"] = key.sign(_canonical(fields)).hex()
    return json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n"


def _append(path: Path, line: str) -> None:
    """Append `line` in one write() with O_APPEND, then fsync: whole, after every other line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = line.encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(descriptor, data)
        if written != len(data):
            raise OSError(f"wrote {written} of {len(data)} bytes of a checkpoint to {path}")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_open_writers: weakref.WeakSet[CheckpointWriter] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for writer in list(_open_writers):
        writer.close()


class CheckpointWriter:
    """Writes a writer's heads to the checkpoint file; `record` is the Writer's on_commit.

    After `every` commits the next checkpoint is written at once; otherwise `after` seconds
    after the first commit not yet checkpointed; and at `close` (also called at process exit).
    Lines are written by a thread of its own (started on a commit, ended when idle), so a
    commit never waits for the file's fsync. A failure to write is reported on stderr once and
    retried: the receipts are committed whatever happens to their checkpoint."""

    def __init__(
        self, path: Path, key: SigningKey, *, every: int = EVERY_COMMITS, after: float = AFTER_SECONDS
    ) -> None:
        self.path = path
        self._key = key
        self._every = every
        self._after = after
        self._lock = threading.Condition(threading.Lock())  # guards the fields below
        self._pending: dict[str, Head] = {}  # by stream: the newest head not yet checkpointed
        self._written: dict[str, Head] = {}
        self._commits = 0  # commits since the last checkpoint
        self._since = 0.0  # monotonic time of the first commit not yet checkpointed
        self._thread: threading.Thread | None = None
        self._file_lock = threading.Lock()  # one writer of lines at a time (the thread, close)
        self.error: OSError | None = None
        self.written = 0  # checkpoint lines written
        _open_writers.add(self)

    def record(self, head: Head) -> None:
        """The Writer's on_commit: note `head`; never raises, never waits for the file."""
        with self._lock:
            if self._written.get(head.stream) == head:
                return
            if not self._pending:
                self._since = time.monotonic()
            self._pending[head.stream] = head
            self._commits += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="charter-checkpoints", daemon=True)
                self._thread.start()
            elif self._commits >= self._every:
                self._lock.notify_all()

    def _run(self) -> None:
        """Write checkpoints while commits keep coming; end when none is pending."""
        while True:
            with self._lock:
                while self._pending and self._commits < self._every:
                    left = self._since + self._after - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                heads = self._take()
                if not heads:
                    self._thread = None
                    return
            self._write(heads)

    def _take(self) -> dict[str, Head]:
        heads, self._pending, self._commits = self._pending, {}, 0
        return heads

    def _write(self, heads: dict[str, Head]) -> None:
        with self._file_lock:
            for stream, head in heads.items():
                try:
                    _append(self.path, checkpoint_line(head, self._key))
                except OSError as error:
                    if self.error is None:
                        print(f"charter: could not write a checkpoint to {self.path}: {error}", file=sys.stderr)
                    self.error = error
                    with self._lock:  # retried after the delay, unless a newer head came meanwhile
                        if stream not in self._pending:
                            self._pending[stream] = head
                            self._since = time.monotonic()
                    continue
                with self._lock:
                    self._written[stream] = head
                    self.written += 1

    def flush(self) -> None:
        """Write the pending checkpoint now, if there is one."""
        with self._lock:
            heads = self._take()
        if heads:
            self._write(heads)

    def close(self) -> None:
        """Write the last checkpoint. Further commits still start checkpoints again."""
        self.flush()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One line of a checkpoint file, as read (`line`: its 1-based line number)."""

    stream: str
    stream_seq: int
    log_seq: int
    link: str
    key_id: str
    at: str
    signature: str
    line: int


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    stream: str
    stream_seq: int
    log_seq: int
    link: str
    key_id: str
    at: str
    signature: str


def read_checkpoints(path: Path) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints of a file (a checkpoint file, or `charter audit head` output), and a
    problem for each line that is not one. Raises UsageError if the file cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--head {path}: no such file; give a checkpoint file or LOG_SEQ:LINK") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--head {path}: cannot be read as a checkpoint file: {error}") from None
    checkpoints: list[Checkpoint] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = msgspec.json.decode(raw, type=_Line)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            problems.append(f"checkpoint line {number} of {path} is not a checkpoint ({error})")
            continue
        checkpoints.append(Checkpoint(**msgspec.structs.asdict(line), line=number))
    if not checkpoints and not problems:
        problems.append(f"{path} holds no checkpoint")
    return checkpoints, problems


def _signature_problem(checkpoint: Checkpoint, keys: Mapping[str, PublicKey]) -> str | None:
    untrusted = key_problem(keys, checkpoint.key_id, checkpoint.at)
    if untrusted is not None:
        return untrusted
    key = keys[checkpoint.key_id]
    fields = {k: getattr(checkpoint, k) for k in _SIGNED}
    try:
        signature = bytes.fromhex(checkpoint.signature)
    except ValueError:
        signature = b""
    if not key.verifies(signature, _canonical(fields)):
        return f"its signature does not verify with key {checkpoint.key_id}: the line was altered"
    return None


@dataclass(slots=True)
class _Stream:
    """What the log holds of one stream: its receipts' links at the positions asked for, and
    its last receipt (`end`)."""

    links: dict[int, str]
    end: Head


def _streams(log: AuditLog, wanted: Mapping[str, set[int]]) -> dict[str, _Stream]:
    """One pass over the log: each stream's links at the `wanted` positions and its last
    receipt. A receipt's stream is its body's `stream` ("" when it has none); its position is
    its log_seq in stream "" (the one chain of a SQLite log), its stream_seq in any other."""
    streams: dict[str, _Stream] = {}
    for row in log.stored():
        try:
            body = decode_body(row.body)
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError):
            continue  # verify reports it
        stream = str(getattr(body, "stream", "") or "")
        position = int(getattr(body, "stream_seq", 0) or 0) if stream else row.log_seq
        head = Head(stream, position, row.log_seq, row.link, body.key_id)
        held = streams.get(stream)
        if held is None:
            held = streams[stream] = _Stream({}, head)
        elif position > held.end.stream_seq:
            held.end = head
        if position in wanted.get(stream, ()):
            held.links[position] = row.link
    return streams


def _pg_streams(log: AuditLog, wanted: Mapping[str, set[int]]) -> dict[str, _Stream]:
    """`_streams` for the streams `wanted` of a PostgreSQL log, without reading the whole log:
    a receipt is looked up by (stream, stream_seq) (the UNIQUE index of writer streams) or, in
    the stream "" of a log copied from SQLite, by log_seq; a writer stream ends at its last
    receipt (the same index, read backwards: what the log holds, whatever its head row says),
    the stream "" at the head row. A stream with no receipt is left out (missing)."""
    streams: dict[str, _Stream] = {}
    with log.connect() as connection:
        for stream, positions in wanted.items():
            if stream:
                row = connection.execute(
                    "SELECT r.stream_seq, r.log_seq, r.link, k.key_id FROM receipts r "
                    "LEFT JOIN stream_heads k ON k.stream = r.stream "
                    "WHERE r.stream = ? ORDER BY r.stream_seq DESC LIMIT 1",
                    (stream,),
                ).fetchone()
                if row is None:
                    continue
                end = Head(stream, int(row[0]), int(row[1]), str(row[2]), str(row[3] or ""))
                at = "SELECT link FROM receipts WHERE stream = ? AND stream_seq = ?"
            else:
                row = connection.execute("SELECT log_seq, link FROM head WHERE one = 1").fetchone()
                if row is None:
                    continue
                end = Head("", int(row[0]), int(row[0]), str(row[1]), "")
                at = "SELECT link FROM receipts WHERE stream = ? AND log_seq = ?"
            links: dict[int, str] = {}
            for position in positions:
                found = connection.execute(at, (stream, position)).fetchone()
                if found is not None:
                    links[position] = str(found[0])
            streams[stream] = _Stream(links, end)
    return streams


def _name(stream: str) -> str:
    return json.dumps(stream)


def check_checkpoints(path: Path, log: AuditLog, keys: Mapping[str, PublicKey]) -> list[Finding]:
    """Findings for a checkpoint file against the log: each line's signature (under `keys`: an
    altered line, an unknown or revoked key), and for each stream the receipt its latest valid
    checkpoint names: missing stream, truncated, or rewritten. Raises UsageError if the file
    cannot be read."""
    checkpoints, problems = read_checkpoints(path)
    findings = [Finding(None, None, p) for p in problems]
    latest: dict[str, Checkpoint] = {}
    for checkpoint in checkpoints:
        problem = _signature_problem(checkpoint, keys)
        if problem is not None:
            findings.append(Finding(None, None, f"checkpoint line {checkpoint.line} of {path}: {problem}"))
            continue
        kept = latest.get(checkpoint.stream)
        if kept is None or checkpoint.stream_seq >= kept.stream_seq:
            latest[checkpoint.stream] = checkpoint
    wanted = {stream: {c.stream_seq} for stream, c in latest.items()}
    if not latest:
        held: dict[str, _Stream] = {}
    elif log.database.is_postgres:
        held = _pg_streams(log, wanted)
    else:
        held = _streams(log, wanted)
    for stream, checkpoint in sorted(latest.items()):
        findings.extend(_check_one(checkpoint, held.get(stream)))
    return findings


def _check_one(checkpoint: Checkpoint, held: _Stream | None) -> Iterable[Finding]:
    stream, n, link, at = _name(checkpoint.stream), checkpoint.stream_seq, checkpoint.link, checkpoint.at
    if held is None:
        yield Finding(
            None, None, f"stream {stream} is missing: it held receipt {n} (link {link[:16]}…) at checkpoint time {at}"
        )
        return
    found = held.links.get(n)
    if found == link:
        return
    if n > held.end.stream_seq:
        yield Finding(
            None,
            None,
            f"truncated: stream {stream} held receipt {n} (link {link[:16]}…) at checkpoint time {at}; "
            f"the log ends at {held.end.stream_seq}",
        )
    elif found is None:
        yield Finding(
            None,
            None,
            f"stream {stream} has no receipt {n}, which it held (link {link[:16]}…) at checkpoint time {at}: "
            "receipts were removed",
        )
    else:
        yield Finding(
            None,
            None,
            f"stream {stream} receipt {n} is not the one it held at checkpoint time {at} (link {link[:16]}…, "
            f"the log's is {found[:16]}…): the log was rewritten",
        )


def current_heads(log: AuditLog) -> list[Head]:
    """Where each stream of the log ends now (its last receipt, signed by `key_id`), streams
    in name order. PostgreSQL: the head rows (`AuditLog.heads`: the stream "" head row and
    `stream_heads`), not a pass over the whole log."""
    if log.database.is_postgres:
        return sorted(log.heads(), key=lambda head: head.stream)
    return [held.end for _, held in sorted(_streams(log, {}).items())]


def with_findings(report: Verification, findings: list[Finding]) -> Verification:
    """`report` with the checkpoint findings added. A log cut short or rewritten is no basis for
    saying which runs were interrupted or in doubt, so then every run is left undiagnosed."""
    if findings:
        report.findings.extend(findings)
        report.undiagnosed = sorted({*report.undiagnosed, *report.incomplete, *(r for r, _, _ in report.in_doubt)})
        report.incomplete = []
        report.in_doubt = []
    return report
