"""What the audit surfaces show of a run: `audit show`/`verify`/`export` and the run view
never present a record that failed its check as true (a forged DENY -> ALLOW), an intent
run's view and bundle hold the program runs it started, and `audit list` reads the runs index.
Real SQLite files edited as an attacker would, real `charter` processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from charter.agent import Charter, Conclusion, ScriptedModel
from charter.audit import AuditLog, verify_bundle
from charter.audit.receipts import link_of
from charter.principal import Principal
from tests.conftest import ALL_ORDER_SCOPES, Governed, charter

CANCEL_123 = 'try:\n    orders.cancel_order(id=123, reason="x")\nexcept ContractViolation as v:\n    refuse(v.reason)'
ADA = Principal("ada", ALL_ORDER_SCOPES)


def forge(log: AuditLog, kind: str, old: str, new: str, *, relink: bool) -> int:
    """Edit one receipt's body past the append-only triggers, as an attacker with write access
    would; with `relink`, its stored link is recomputed so that only its signature and the
    next receipt's prev link tell. Returns the edited receipt's log_seq."""
    with sqlite3.connect(log.path) as db:
        db.execute("DROP TRIGGER IF EXISTS receipts_no_update")
        log_seq, body, signature = db.execute(
            "SELECT log_seq, body, signature FROM receipts WHERE kind = ? ORDER BY log_seq DESC LIMIT 1", (kind,)
        ).fetchone()
        assert old.encode() in body
        forged = body.replace(old.encode(), new.encode())
        link = link_of(forged, signature) if relink else None
        db.execute("UPDATE receipts SET body = ?, link = coalesce(?, link) WHERE log_seq = ?", (forged, link, log_seq))
    return int(log_seq)


# -- fault 7: a forged record is never shown as true, and nothing is concluded from it ----------------


@pytest.mark.parametrize("relink", [False, True])
def test_show_marks_a_forged_allow_and_exits_1(governed: Governed, relink: bool) -> None:
    run_id = governed.run(CANCEL_123).run_id
    edited = forge(governed.log, "decision", '"decision":"DENY"', '"decision":"ALLOW"', relink=relink)

    shown = charter("audit", "show", run_id)
    assert shown.returncode == 1, shown.stdout
    (allow_line,) = [line for line in shown.stdout.splitlines() if "-> ALLOW" in line]
    assert "UNVERIFIED" in allow_line
    assert f"UNVERIFIED receipt {edited}" in shown.stdout
    assert "NOT VERIFIED" in shown.stdout
    assert "OUTCOME UNKNOWN" not in shown.stdout  # no diagnosis drawn from the forged ALLOW

    as_json = charter("audit", "show", run_id, "--json")
    assert as_json.returncode == 1
    view = json.loads(as_json.stdout)
    assert view["verified"] is False
    forged = [r for r in view["receipts"] if r["log_seq"] == edited]
    assert forged[0]["decision"] == "ALLOW"
    assert forged[0]["verified"] is False
    assert all(r["verified"] for r in view["receipts"] if r["log_seq"] < edited)  # the opening is intact


def test_the_run_view_marks_a_forged_receipt(governed: Governed) -> None:
    from charter.registry import Registry
    from charter.server._service import CharterService

    run_id = governed.run(CANCEL_123).run_id
    edited = forge(governed.log, "decision", '"decision":"DENY"', '"decision":"ALLOW"', relink=True)
    service = CharterService.create(registry=Registry(), audit=governed.log, agent=None)
    view = service.run_view(Principal("ada", frozenset({"orders:read"})), run_id)
    assert view["verification"]["ok"] is False
    assert {r["log_seq"]: r["verified"] for r in view["receipts"]}[edited] is False
    assert view["verification"]["in_doubt"] == []


@pytest.mark.parametrize("relink", [False, True])
def test_verify_narrates_nothing_from_a_forged_record(governed: Governed, relink: bool) -> None:
    run_id = governed.run(CANCEL_123).run_id
    forge(governed.log, "decision", '"decision":"DENY"', '"decision":"ALLOW"', relink=relink)

    for args in (("audit", "verify"), ("audit", "verify", run_id), ("audit", "verify", "--every-signature")):
        result = charter(*args)
        assert result.returncode == 1
        assert "BROKEN" in result.stdout
        assert "was allowed; its outcome is unknown" not in result.stdout
        assert "never sealed" not in result.stdout
        assert "not diagnosed" in result.stdout
        report = json.loads(charter(*args, "--json").stdout)
        assert (report["in_doubt"], report["interrupted"], report["undiagnosed"]) == ([], [], [run_id])


def test_a_seal_that_no_longer_decodes_is_no_crash(governed: Governed) -> None:
    run_id = governed.run(CANCEL_123).run_id
    forge(governed.log, "seal", '"kind":"seal"', '"kind":"sealed"', relink=True)

    result = charter("audit", "verify")
    assert result.returncode == 1
    assert "never sealed" not in result.stdout  # its seal is there, altered: not a crash
    assert json.loads(charter("audit", "verify", "--json").stdout)["undiagnosed"] == [run_id]
    shown = charter("audit", "show", run_id)
    assert shown.returncode == 1
    assert "the process ended during the run" not in shown.stdout
    assert "does not decode" in shown.stdout


def test_a_removed_seal_is_found_by_the_one_run_check(governed: Governed) -> None:
    first = governed.run(CANCEL_123).run_id
    governed.run("conclude('later')")
    with sqlite3.connect(governed.log.path) as db:
        db.execute("DROP TRIGGER IF EXISTS receipts_no_delete")
        db.execute("DELETE FROM receipts WHERE run_id = ? AND kind = 'seal'", (first,))
    shown = charter("audit", "show", first)
    assert shown.returncode == 1
    assert "receipts after it were removed" in shown.stdout
    assert "the process ended during the run" not in shown.stdout


# -- fault 8: an intent run's view and bundle hold its program runs ------------------------------------


def denied_intent(governed: Governed) -> Conclusion:
    model = ScriptedModel([f"```python\n{CANCEL_123}\n```"])
    return Charter(model=model, runner=governed.runner).handle(
        "Cancel order 123", contract=governed.contract, principal=ADA
    )


def test_an_intent_runs_bundle_holds_its_program_runs_and_verifies(governed: Governed, tmp_path: Path) -> None:
    conclusion = denied_intent(governed)
    assert conclusion.status == "refused"
    (program_run,) = governed.log.run(conclusion.run_id).program_runs()

    bundle = tmp_path / "intent.jsonl"
    assert charter("audit", "export", conclusion.run_id, "-o", str(bundle)).returncode == 0
    lines = [json.loads(line) for line in bundle.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["program_runs"] == [program_run]
    assert {line["run_id"] for line in lines[1:]} == {conclusion.run_id, program_run}
    denials = [json.loads(line["body"]) for line in lines[1:] if line["kind"] == "decision"]
    assert [(d["decision"], d["code"]) for d in denials] == [("DENY", "STATE_VIOLATION")]
    verified = charter("audit", "verify", "--bundle", str(bundle))
    assert verified.returncode == 0, verified.stdout

    # Leaving the program run out (header count fixed to match) is found.
    kept = [lines[0] | {"receipts": 0}] + [line for line in lines[1:] if line["run_id"] == conclusion.run_id]
    kept[0]["receipts"] = len(kept) - 1
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(json.dumps(line) for line in kept) + "\n", encoding="utf-8")
    report = verify_bundle(cut)
    assert not report.ok
    assert f"its program run {program_run} is not in the bundle" in str(report.findings)


def test_show_of_an_intent_run_shows_its_program_runs_decisions(governed: Governed) -> None:
    conclusion = denied_intent(governed)
    (program_run,) = governed.log.run(conclusion.run_id).program_runs()

    shown = charter("audit", "show", conclusion.run_id)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"ran as program run {program_run}" in shown.stdout
    assert "DENY STATE_VIOLATION" in shown.stdout
    view = json.loads(charter("audit", "show", conclusion.run_id, "--json").stdout)
    (program,) = view["program_runs"]
    assert program["run_id"] == program_run
    assert [(r["decision"], r["code"]) for r in program["receipts"] if r["kind"] == "decision"] == [
        ("DENY", "STATE_VIOLATION")
    ]

    from charter.registry import Registry
    from charter.server._service import CharterService

    service = CharterService.create(registry=Registry(), audit=governed.log, agent=None)
    run_view = service.run_view(ADA, conclusion.run_id)
    (started,) = run_view["programs"]
    assert started["run_id"] == program_run
    assert any(r.get("code") == "STATE_VIOLATION" for r in started["receipts"])


# -- fault 11: audit list reads the runs index, newest first, validated filters, 80 columns ------------

LONG_PRINCIPAL = "alice.with.a.long.principal@example.com"


def test_audit_list_is_newest_first_limited_and_fits_80_columns(governed: Governed) -> None:
    first = governed.run(CANCEL_123, principal=LONG_PRINCIPAL).run_id
    second = governed.run("conclude('hi')").run_id
    third = governed.run("conclude('again')").run_id

    listed = json.loads(charter("audit", "list", "--json").stdout)
    assert [r["run_id"] for r in listed] == [third, second, first]
    assert listed[2]["denial_code"] == "STATE_VIOLATION"
    assert listed[2]["denial_operation"] == "cancel_order"
    limited = json.loads(charter("audit", "list", "--json", "--limit", "2").stdout)
    assert [r["run_id"] for r in limited] == [third, second]
    assert [r.run_id for r in governed.log.list_runs(limit=2, before_cursor=limited[-1]["cursor"])] == [first]

    import os

    env = {**os.environ, "COLUMNS": "80"}
    import subprocess
    import sys

    text = subprocess.run(
        [sys.executable, "-m", "charter", "audit", "list"], capture_output=True, text=True, env=env, check=True
    ).stdout
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    for run_id in (first, second, third):
        assert any(line.startswith(run_id[:12]) for line in lines)
    assert "orders@1.0.0" in text
    assert LONG_PRINCIPAL in text
    assert text.index(third[:12]) < text.index(first[:12])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--status", "denied"), "the statuses are done, refused, failed"),
        (("--since", "last tuesday"), "today, yesterday, or an age: 30m, 24h, 7d"),
        (("--limit", "0"), "--limit 0 is out of range: give a number of runs from 1 to 100000"),
        (("--limit", "9223372036854775808"), "is out of range: give a number of runs from 1 to 100000"),
        (("--since", "99999999999w"), "reaches before the year 1"),
        (("--since", "200000w"), "reaches before the year 1"),
    ],
)
def test_audit_list_rejects_unknown_filter_values(governed: Governed, args: tuple[str, ...], words: str) -> None:
    governed.run("conclude('hi')")
    result = charter("audit", "list", *args)
    assert result.returncode == 1, result.stderr  # one error line, never a traceback
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert words in result.stderr


@pytest.mark.parametrize("relink", [False, True])
def test_replay_refuses_a_record_it_cannot_vouch_for(governed: Governed, relink: bool) -> None:
    run_id = governed.run(CANCEL_123).run_id
    edited = forge(governed.log, "decision", "STATE_VIOLATION", "GUARD_VIOLATION", relink=relink)
    replayed = charter("audit", "replay", run_id)
    assert replayed.returncode == 1
    assert f"has receipts that fail their check (log #{edited}" in replayed.stderr
    assert "conclusion" not in replayed.stdout  # no comparison drawn from the forged record


def test_audit_list_since_takes_relative_and_named_times(governed: Governed) -> None:
    run_id = governed.run("conclude('hi')").run_id
    for since in ("yesterday", "today", "24h", "7d", "30m", "2026-01-01", "2026-01-01T00:00:00+02:00"):
        listed = json.loads(charter("audit", "list", "--json", "--since", since).stdout)
        assert [r["run_id"] for r in listed] == [run_id], since
    assert json.loads(charter("audit", "list", "--json", "--since", "2999-01-01").stdout) == []


def test_show_at_80_columns_wraps_program_lines_behind_the_gutter(governed: Governed) -> None:
    import os
    import subprocess
    import sys

    long_reason = "a reason long enough that no eighty column terminal holds the whole call on one line"
    program = f'orders.get_order(id=101)\nconclude("{long_reason}")'
    run_id = governed.run(program).run_id
    env = {**os.environ, "COLUMNS": "80"}
    text = subprocess.run(
        [sys.executable, "-m", "charter", "audit", "show", run_id], capture_output=True, text=True, env=env, check=True
    ).stdout
    lines = text.splitlines()
    start = lines.index("program:") + 1
    listing = lines[start : lines.index("receipts:")]
    assert listing[0].strip().startswith("1")
    gutter = listing[1].index("conclude")
    assert len(listing) > 2  # the long line wrapped ...
    assert all(line[:gutter].strip() == "" for line in listing[2:])  # ... behind the gutter
    assert "".join(line[gutter:].rstrip() for line in listing[1:]).replace(" ", "") == (
        f'conclude("{long_reason}")'.replace(" ", "")
    )
    assert 'get_order({"id":101})' in text.replace(" ", "") or "get_order(" in text


def test_help_of_every_command_is_conventional() -> None:
    import re

    import typer

    from charter.cli import app

    def walk(command: object, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, [*path, name])
        return found

    noise = re.compile(r"<bool>|<\w+(\[\w+\])?>|\{|\[default: None\]")
    paths = walk(typer.main.get_command(app), [])
    assert len(paths) > 20
    bad = []
    for path in paths:
        result = charter(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        bad += [f"{' '.join(path)}: {line.strip()}" for line in result.stdout.splitlines() if noise.search(line)]
    assert bad == []
