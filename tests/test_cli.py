"""The `charter` command, run as a real process against real files and a real registry."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import ROOT, WriteContract, charter


def test_check_ok_and_failing(write_contract: WriteContract) -> None:
    ok = charter("contract", "check", "contracts/orders.yaml", "contracts/invoices.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "contracts/orders.yaml: ok (orders 1.0.0, sha256 " in ok.stdout
    bad = write_contract(replace={"to: cancelled}": "to: canceled}"})
    failed = charter("contract", "check", str(bad))
    assert failed.returncode == 1
    assert (
        f"{bad}:21:50: transition 'cancel' names unknown state 'canceled' (did you mean 'cancelled'?)" in failed.stdout
    )


def test_compile_writes_artifacts(tmp_path: Path) -> None:
    result = charter("contract", "compile", "contracts/orders.yaml", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["contract"] == "orders"
    assert (tmp_path / "out" / "stubs.py").read_text().startswith('"""Typed proxies for contract orders 1.0.0')


def test_publish_list_show_diff(write_contract: WriteContract, charter_home: Path) -> None:
    published = charter("contract", "publish", "contracts/orders.yaml")
    assert published.returncode == 0, published.stderr
    assert "published orders 1.0.0" in published.stdout
    again = charter("contract", "publish", "contracts/orders.yaml")
    assert "already published with this content" in again.stdout
    listing = json.loads(charter("contract", "list", "--json").stdout)
    assert [(v["name"], v["version"]) for v in listing] == [("orders", "1.0.0")]
    shown = charter("contract", "show", "orders@1.0.0")
    assert "## HARD BOUNDARIES" in shown.stdout
    assert (
        "def cancel_order(*, id: int, reason: str) -> Order:" in charter("contract", "show", "orders", "--stubs").stdout
    )
    relaxed = ROOT.joinpath("contracts/orders.yaml").read_text().replace("version: 1.0.0", "version: 1.1.0")
    relaxed = relaxed.replace("cancel: {from: [pending, confirmed]", "cancel: {from: [pending, confirmed, dispatched]")
    relaxed_file = ROOT / ".charter" / "test-relaxed.yaml"  # below the checkout so its binding resolves
    relaxed_file.parent.mkdir(exist_ok=True)
    relaxed_file.write_text(relaxed)
    try:
        diff = json.loads(charter("contract", "diff", "orders@1.0.0", str(relaxed_file), "--json").stdout)
        assert diff == [
            {
                "kind": "relaxation",
                "where": "entities.Order.lifecycle.transitions.cancel",
                "message": "'cancel' is now also allowed from dispatched",
            }
        ]
        refused = charter("contract", "publish", str(relaxed_file))
        assert refused.returncode == 1
        assert "--allow-relaxation" in refused.stderr
        assert charter("contract", "publish", str(relaxed_file), "--allow-relaxation").returncode == 0
    finally:
        relaxed_file.unlink()
    assert [v["version"] for v in json.loads(charter("contract", "list", "--json").stdout)] == ["1.0.0", "1.1.0"]


def test_show_unknown_contract_fails_clearly() -> None:
    result = charter("contract", "show", "nothing")
    assert result.returncode == 1
    assert "error: no contract named 'nothing' is published" in result.stderr


def test_schema_is_json() -> None:
    result = charter("contract", "schema")
    schema = json.loads(result.stdout)
    assert schema["title"] == "Charter contract"
    assert "operations" in schema["properties"]


def _stamp(path: Path, version: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS other_release (x)")
        connection.execute(f"PRAGMA user_version = {version}")
        connection.commit()


# Every command that opens a store, with the stores of another release: none may print a traceback.
_STORE_COMMANDS = [
    ("contract", "list"),
    ("contract", "list", "--json"),
    ("contract", "show", "shop"),
    ("contract", "show", "shop", "--source"),
    ("contract", "publish", "{contract}"),
    ("contract", "diff", "shop@1", "{contract}"),
    ("contract", "promote", "shop@1"),
    ("exec", "-c", "shop", "{program}"),
    ("audit", "list"),
    ("audit", "show", "run_x"),
    ("audit", "verify"),
    ("audit", "export", "run_x", "-o", "{tmp}/bundle.jsonl"),
    ("audit", "replay", "run_x"),
]


@pytest.mark.parametrize("version", [99, -3])
def test_no_command_prints_a_traceback_for_a_store_of_another_schema_version(
    write_contract: WriteContract, charter_home: Path, tmp_path: Path, version: int
) -> None:
    contract = write_contract()
    program = tmp_path / "program.py"
    program.write_text("conclude('ok')\n", encoding="utf-8")
    for store in ("charter.db", "audit.db", "idempotency.db"):
        _stamp(charter_home / store, version)
    for command in _STORE_COMMANDS:
        args = [a.format(contract=contract, program=program, tmp=tmp_path) for a in command]
        result = charter(*args)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.returncode == 1, (args, result.returncode, result.stderr)
        assert result.stderr.startswith("error: "), (args, result.stderr)
        assert "schema version" in result.stderr, (args, result.stderr)


def test_an_os_error_on_a_path_the_user_gave_is_an_error_line(write_contract: WriteContract, tmp_path: Path) -> None:
    assert charter("contract", "publish", str(write_contract())).returncode == 0
    program = tmp_path / "program.py"
    program.write_text("conclude('ok')\n", encoding="utf-8")
    ran = charter("exec", "-c", "shop", str(program))
    run_id = re.search(r"run ([0-9a-f]{32})", ran.stdout)
    assert run_id is not None, ran.stdout + ran.stderr
    for args in (
        ("audit", "export", run_id.group(1), "-o", "/proc/nope/x"),
        ("contract", "compile", str(ROOT / "contracts" / "orders.yaml"), "--out", "/proc/nope/out"),
    ):
        result = charter(*args)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: "), (args, result.stderr)


def test_diff_refuses_two_different_contracts(write_contract: WriteContract) -> None:
    result = charter("contract", "diff", str(write_contract()), str(ROOT / "contracts" / "orders.yaml"))
    assert result.returncode == 1, result.stdout
    assert "is contract 'shop' but" in result.stderr
    assert "is contract 'orders'" in result.stderr
    assert "change(s)" not in result.stdout


@pytest.mark.parametrize(
    ("versions", "code", "state"),
    [
        ((None, None, None), 0, "absent"),
        ((99, None, None), 1, "newer than this release"),
        ((1, None, None), 2, "older: run `charter db upgrade`"),
        ((-1, 1, None), 1, "invalid"),  # the newer/invalid store wins over the pending upgrade
    ],
)
def test_db_status_exit_code_gates_ci(
    charter_home: Path, versions: tuple[int | None, ...], code: int, state: str
) -> None:
    from charter.audit.store import AUDIT_SCHEMA
    from charter.registry.store import REGISTRY_SCHEMA

    for store, version in zip(("charter.db", "audit.db", "idempotency.db"), versions, strict=True):
        if version is not None:
            current = {"charter.db": REGISTRY_SCHEMA.version, "audit.db": AUDIT_SCHEMA.version}[store]
            _stamp(charter_home / store, current - 1 if version == 1 else version)  # 1: one below the current
    result = charter("db", "status", "--json")
    assert result.returncode == code, result.stdout + result.stderr
    states = [row["state"] for row in json.loads(result.stdout)]
    assert any(s.startswith(state) for s in states), states


# -- untrusted text for a terminal (charter.cli._output.terminal_text) -------------------------


@pytest.mark.parametrize(
    ("raw", "one_line", "in_lines"),
    [
        ("plain é ß 漢字 [bold]x[/bold]", "plain é ß 漢字 [bold]x[/bold]", "plain é ß 漢字 [bold]x[/bold]"),
        ("\x1b[2J\x07\x7f", "\\x1b[2J\\x07\\x7f", "\\x1b[2J\\x07\\x7f"),
        ("\x9b31m\x85", "\\x9b31m\\x85", "\\x9b31m\\x85"),  # C1: CSI, NEL
        (
            "a\u202ab\u202ec\u2066d\u2069",
            "a<U+202A>b<U+202E>c<U+2066>d<U+2069>",
            "a<U+202A>b<U+202E>c<U+2066>d<U+2069>",
        ),
        (
            "\u200e\u200f\u061c\u200b\ufeff",
            "<U+200E><U+200F><U+061C><U+200B><U+FEFF>",
            "<U+200E><U+200F><U+061C><U+200B><U+FEFF>",
        ),
        ("a\nb\tc\r\u2028", "a\\x0ab\\x09c\\x0d<U+2028>", "a\nb\tc\\x0d<U+2028>"),
    ],
)
def test_terminal_text_shows_what_a_terminal_would_act_on(raw: str, one_line: str, in_lines: str) -> None:
    from charter.cli._output import terminal_text

    assert terminal_text(raw) == one_line
    assert terminal_text(raw, lines=True) == in_lines


def test_print_json_escapes_c1_and_bidi_and_decodes_to_the_same_data(capsys: pytest.CaptureFixture[str]) -> None:
    from charter.cli._output import print_json

    data = {"reason": "x\x1b\x9b\u202e\u2066é\n", "n": [1, "\u200f"]}
    print_json(data)
    text = capsys.readouterr().out
    assert [c for c in text if c in "\x1b\x9b\u202e\u2066\u200f"] == []
    assert "\\u009b\\u202e\\u2066é" in text
    assert json.loads(text) == data


def test_source_lines_number_lines_as_python_does() -> None:
    from charter.cli._output import source_lines

    # A form feed or U+2028 inside a line must not shift the numbering the guest reports.
    assert source_lines("a = 1\r\nb = '\x0c\u2028'\rc\n") == ["a = 1", "b = '\x0c\u2028'", "c"]
