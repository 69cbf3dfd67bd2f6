"""Signed checkpoints outside the log (issue 19): the truncation a log's own head row cannot
reveal, altered or untrusted checkpoint lines, several streams, and when checkpoints are
written. Real SQLite logs, real `charter` processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from charter.audit import AuditLog, verify_log
from charter.audit._checkpoints import CheckpointWriter, check_checkpoints, checkpoint_line, read_checkpoints
from charter.audit._writer import Head
from charter.audit.keys import load_or_create_signing_key
from tests.conftest import ROOT, charter
from tests.test_keyring import write_run


def make_log(home: Path, runs: int) -> AuditLog:
    log = AuditLog(home / "audit.db")
    for day in range(1, runs + 1):
        write_run(log, f"2026-01-{day:02d}T12:00:00+00:00")
    log.close()  # the last checkpoint, as at exit
    return log


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite file (its WAL included), through SQLite's backup API."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def cut_tail(path: Path, keep: int) -> None:
    """The attack the head row alone cannot catch: past the triggers, delete the last receipts
    and rewrite the head row to name the new last one."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER receipts_no_delete")
        db.execute("DELETE FROM receipts WHERE log_seq > ?", (keep,))
        log_seq, link = db.execute("SELECT log_seq, link FROM receipts ORDER BY log_seq DESC LIMIT 1").fetchone()
        db.execute("UPDATE head SET log_seq = ?, link = ?", (log_seq, link))


def test_a_truncated_tail_passes_the_head_row_but_not_the_checkpoints(charter_home: Path) -> None:
    log = make_log(charter_home, 3)
    checkpoints = charter_home / "checkpoints.jsonl"
    [last] = lines(checkpoints)  # one commit a run's durable receipt; written at close
    assert (last["stream"], last["stream_seq"], last["log_seq"]) == ("", 6, 6)
    assert last["link"] == log.stored_at(6).link  # type: ignore[union-attr]
    assert last["key_id"] == log.signing_key.key_id

    copy_db(charter_home / "audit.db", charter_home / "original.db")
    cut_tail(charter_home / "audit.db", keep=4)  # the last run is gone, head rewritten
    plain = charter("audit", "verify")
    assert plain.returncode == 0, plain.stdout  # from inside, the log looks whole
    assert "ok: 4 receipts in 2 runs" in plain.stdout

    checked = charter("audit", "verify", "--head", str(checkpoints))
    assert checked.returncode == 1
    assert (
        f'BROKEN log: truncated: stream "" held receipt 6 (link {str(last["link"])[:16]}…) at checkpoint time '
        f"{last['at']}; the log ends at 4\n"
    ) in checked.stdout
    assert "FAILED (1 problems)" in checked.stdout

    copy_db(charter_home / "original.db", charter_home / "audit.db")
    assert charter("audit", "verify", "--head", str(checkpoints)).returncode == 0


def test_audit_head_prints_signed_heads_that_verify_head_checks(charter_home: Path) -> None:
    make_log(charter_home, 2)
    printed = charter("audit", "head")
    assert printed.returncode == 0, printed.stderr
    head_file = charter_home / "kept-head.json"
    head_file.write_text(printed.stdout, encoding="utf-8")
    [head] = [json.loads(line) for line in printed.stdout.splitlines()]
    assert (head["stream"], head["stream_seq"], head["log_seq"]) == ("", 4, 4)
    assert charter("audit", "verify", "--head", str(head_file)).returncode == 0
    log_seq_link = f"{head['log_seq']}:{head['link']}"
    assert charter("audit", "verify", "--head", log_seq_link).returncode == 0  # the old form still works

    cut_tail(charter_home / "audit.db", keep=2)
    result = charter("audit", "verify", "--head", str(head_file), "--json")
    assert result.returncode == 1
    findings = json.loads(result.stdout)["findings"]
    assert findings == [
        f'log: truncated: stream "" held receipt 4 (link {head["link"][:16]}…) at checkpoint time {head["at"]}; '
        "the log ends at 2"
    ]


def test_an_altered_checkpoint_line_is_reported_and_not_trusted(charter_home: Path) -> None:
    log = make_log(charter_home, 2)
    checkpoints = charter_home / "checkpoints.jsonl"
    key = log.signing_key
    stored = log.stored_at(2)
    assert stored is not None
    # An older checkpoint, then the latest one altered to claim less than the log held.
    older = checkpoint_line(Head("", 2, 2, stored.link, key.key_id), key, at="2026-01-01T12:00:01+00:00")
    latest = lines(checkpoints)[0]
    forged = json.dumps({**latest, "stream_seq": 9, "log_seq": 9}, sort_keys=True, separators=(",", ":"))
    checkpoints.write_text(older + forged + "\n", encoding="utf-8")
    findings = [str(f) for f in check_checkpoints(checkpoints, log, log.trusted_keys())]
    assert findings == [
        f"log: checkpoint line 2 of {checkpoints}: its signature does not verify with key {key.key_id}: "
        "the line was altered"
    ]  # and the forged claim (receipt 9) is not believed: line 1 is the latest trusted checkpoint

    checkpoints.write_text(older + "{not json\n", encoding="utf-8")
    [finding] = check_checkpoints(checkpoints, log, log.trusted_keys())
    assert str(finding).startswith(f"log: checkpoint line 2 of {checkpoints} is not a checkpoint (")


def test_checkpoints_by_an_unknown_or_revoked_key_are_reported(charter_home: Path, tmp_path: Path) -> None:
    log = make_log(charter_home, 1)
    checkpoints = charter_home / "checkpoints.jsonl"
    stored = log.stored_at(2)
    assert stored is not None
    head = Head("", 2, 2, stored.link, "")
    stranger = load_or_create_signing_key(tmp_path / "elsewhere", "stranger")
    checkpoints.write_text(checkpoint_line(head, stranger, at="2026-06-01T00:00:00+00:00"), encoding="utf-8")
    [finding] = check_checkpoints(checkpoints, log, log.trusted_keys())
    assert str(finding) == (
        f"log: checkpoint line 1 of {checkpoints}: signed by unknown key {stranger.key_id}, which is not among "
        "the trusted keys (`charter keys list`)"
    )

    assert charter("keys", "revoke", "receipts", "--not-after", "2026-05-01T00:00:00Z").returncode == 0
    own = log.signing_key
    checkpoints.write_text(checkpoint_line(head, own, at="2026-06-01T00:00:00+00:00"), encoding="utf-8")
    result = charter("audit", "verify", "--head", str(checkpoints))
    assert result.returncode == 1
    assert (
        f"BROKEN log: checkpoint line 1 of {checkpoints}: signed by key {own.key_id} (receipts) after it was "
        "revoked (not after 2026-05-01T00:00:00+00:00)"
    ) in result.stdout


def test_each_stream_is_checked_against_its_own_latest_checkpoint(charter_home: Path) -> None:
    log = make_log(charter_home, 3)
    key = log.signing_key
    checkpoints = charter_home / "streams.jsonl"

    def line(stream: str, n: int, link: str) -> str:
        return checkpoint_line(Head(stream, n, n, link, key.key_id), key, at=f"2026-02-01T00:00:{n:02d}+00:00")

    link = {n: log.stored_at(n).link for n in range(1, 7)}  # type: ignore[union-attr]
    # Two streams, interleaved as two writers append to one file; the latest of "" is 4, not the last line.
    checkpoints.write_text(
        line("", 2, link[2]) + line("host-b:7:0badcafe", 5, "e" * 64) + line("", 4, link[4]) + line("", 3, link[3]),
        encoding="utf-8",
    )
    findings = [str(f) for f in check_checkpoints(checkpoints, log, log.trusted_keys())]
    assert findings == [
        f'log: stream "host-b:7:0badcafe" is missing: it held receipt 5 (link {"e" * 16}…) at checkpoint time '
        "2026-02-01T00:00:05+00:00"
    ]  # stream "" is held at its latest checkpoint (4)

    # The latest checkpoint of "" names a receipt the log holds with another link: rewritten.
    checkpoints.write_text(line("", 2, link[2]) + line("", 5, link[4]), encoding="utf-8")
    assert [str(f) for f in check_checkpoints(checkpoints, log, log.trusted_keys())] == [
        f'log: stream "" receipt 5 is not the one it held at checkpoint time 2026-02-01T00:00:05+00:00 '
        f"(link {link[4][:16]}…, the log's is {link[5][:16]}…): the log was rewritten"
    ]
    checkpoints_read, problems = read_checkpoints(checkpoints)
    assert ([c.line for c in checkpoints_read], problems) == ([1, 2], [])


def wait_for(condition: object, what: str) -> None:
    """Poll (not a timing assertion: the deadline only bounds a hang)."""
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.02)


def test_a_checkpoint_after_every_n_commits_and_after_a_quiet_delay(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "keys")
    path = tmp_path / "checkpoints.jsonl"
    writer = CheckpointWriter(path, key, every=3, after=3600)
    heads = [Head("", n, n, f"{n:064x}", key.key_id) for n in range(1, 8)]
    for head in heads[:2]:
        writer.record(head)
    time.sleep(0.2)
    assert not path.exists()  # 2 commits, an hour's delay: nothing yet
    writer.record(heads[2])
    wait_for(lambda: path.exists() and len(lines(path)) == 1, "a checkpoint after 3 commits")
    assert lines(path)[0]["stream_seq"] == 3
    writer.record(heads[3])
    writer.close()  # at close: the last head
    assert [c["stream_seq"] for c in lines(path)] == [3, 4]
    writer.close()  # nothing new: no line
    assert len(lines(path)) == 2

    quiet = CheckpointWriter(path, key, every=1000, after=0.05)
    quiet.record(heads[6])
    wait_for(lambda: len(lines(path)) == 3, "a checkpoint after the quiet delay, without close")
    assert lines(path)[2]["stream_seq"] == 7


def test_a_process_that_exits_leaves_its_last_checkpoint(charter_home: Path) -> None:
    script = textwrap.dedent(
        """
        from pathlib import Path
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from charter.audit import AuditLog
        from tests.test_keyring import write_run
        log = AuditLog(Path(os.environ["CHARTER_HOME"]) / "audit.db")
        for day in range(1, 4):
            write_run(log, f"2026-01-0{day}T00:00:00+00:00")
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    log = AuditLog(charter_home / "audit.db")
    assert lines(charter_home / "checkpoints.jsonl")[-1]["link"] == log.stored_at(6).link  # type: ignore[union-attr]
    report = verify_log(log, log.trusted_keys())
    assert report.ok


def test_checkpoints_go_where_configured_or_nowhere(
    charter_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHARTER_CHECKPOINTS", "none")
    make_log(charter_home, 1)
    assert not (charter_home / "checkpoints.jsonl").exists()

    elsewhere = tmp_path / "witness" / "heads.jsonl"
    monkeypatch.setenv("CHARTER_CHECKPOINTS", str(elsewhere))
    make_log(charter_home, 1)
    assert [c["stream_seq"] for c in lines(elsewhere)] == [4]

    monkeypatch.delenv("CHARTER_CHECKPOINTS")
    other = AuditLog(tmp_path / "other.db", checkpoints=None)
    write_run(other, "2026-01-01T00:00:00+00:00")
    other.close()
    assert [c["stream_seq"] for c in lines(tmp_path / "other.checkpoints.jsonl")] == [2]
