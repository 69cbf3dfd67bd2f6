"""One run, one status: every surface says how a run ended in the same two words.

The surfaces run as real processes (`charter exec`, `charter audit ...`); the HTTP API and
MCP are checked in test_server.py and test_mcp.py, old receipts in test_upgrade.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charter.agent import Charter, ScriptedModel
from charter.audit import Concluded, Sealed
from charter.principal import Principal
from tests.conftest import ALL_ORDER_SCOPES, Governed, charter

EXIT_STATUS = {"done": 0, "refused": 2, "failed": 3}
STATUSES = "done, refused, failed, awaiting_approval, in_doubt, interrupted"
CANCEL_123 = 'orders.cancel_order(id=123, reason="customer asked")\n'

# program, (status, cause) every surface must report
RUNS = {
    "done": ("conclude(orders.get_order(id=101).status)", ("done", "completed")),
    "refused_by_program": ('refuse("not today")', ("refused", "refused")),
    "uncaught_denial": (CANCEL_123 + 'conclude("cancelled")', ("refused", "STATE_VIOLATION")),
    "caught_denial": (
        "try:\n    " + CANCEL_123 + "except ContractViolation as v:\n    conclude(v.code)",
        ("done", "completed"),
    ),
    "halted": (
        "for i in range(20):\n    try:\n        " + CANCEL_123 + "    except ContractViolation:\n        pass",
        ("refused", "STATE_VIOLATION"),
    ),
    "program_error": ("raise ValueError('no')", ("failed", "program_error")),
    "syntax_error": ("conclude('unclosed'", ("failed", "syntax_error")),
}


@pytest.fixture
def published(charter_home: Path) -> None:
    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    from examples.orders import backend

    backend.seed()


def test_every_surface_reports_the_same_status_and_cause(published: None, tmp_path: Path) -> None:
    run_ids: dict[str, str] = {}
    for label, (program, expected) in RUNS.items():
        source = tmp_path / f"{label}.py"
        source.write_text(program, encoding="utf-8")
        result = charter(
            "exec", str(source), "-c", "orders", "-p", "ada", "-s", "orders:read", "-s", "orders:write", "--json"
        )
        assert result.returncode == EXIT_STATUS[expected[0]], (label, result.stdout, result.stderr)
        answer = json.loads(result.stdout)
        assert (answer["status"], answer["cause"]) == expected, label
        run_ids[label] = answer["run_id"]

    listed = {r["run_id"]: (r["status"], r["cause"]) for r in json.loads(charter("audit", "list", "--json").stdout)}
    for label, run_id in run_ids.items():
        assert listed[run_id] == RUNS[label][1], label
    refused = json.loads(charter("audit", "list", "--status", "refused", "--json").stdout)
    want = {run_ids[k] for k in ("refused_by_program", "uncaught_denial", "halted")}
    assert {r["run_id"] for r in refused} >= want
    assert {r["status"] for r in refused} == {"refused"}
    by_cause = json.loads(charter("audit", "list", "--cause", "STATE_VIOLATION", "--json").stdout)
    assert {r["run_id"] for r in by_cause} >= {run_ids["uncaught_denial"], run_ids["halted"]}

    uncaught = run_ids["uncaught_denial"]
    shown = json.loads(charter("audit", "show", uncaught, "--json").stdout)
    assert (shown["status"], shown["cause"]) == ("refused", "STATE_VIOLATION")
    seal = shown["receipts"][-1]
    # Stored once, in the seal; the sandbox's own tag keeps its field and meaning.
    assert (seal["kind"], seal["status"], seal["run_status"], seal["cause"]) == (
        "seal",
        "program_error",
        "refused",
        "STATE_VIOLATION",
    )
    assert "status: refused (cause STATE_VIOLATION)" in charter("audit", "show", uncaught).stdout
    bundle = tmp_path / "run.jsonl"
    assert charter("audit", "export", uncaught, "-o", str(bundle)).returncode == 0
    header = json.loads(bundle.read_text(encoding="utf-8").splitlines()[0])
    assert (header["status"], header["cause"]) == ("refused", "STATE_VIOLATION")


@pytest.mark.parametrize("word", ["program_error", "incomplete", "completed", "REFUSED"])
def test_audit_list_accepts_only_the_vocabulary(published: None, word: str) -> None:
    result = charter("audit", "list", "--status", word)
    assert result.returncode == 1
    assert f"--status {word!r} is not a run status; the statuses are {STATUSES}" in result.stderr


def test_an_intent_run_and_its_program_runs_each_say_why(governed: Governed) -> None:
    answers = [
        "```python\n" + CANCEL_123 + 'conclude("cancelled")\n```',
        '```python\nrefuse("Order 123 is dispatched.")\n```',
    ]
    agent = Charter(model=ScriptedModel(answers), runner=governed.runner)
    conclusion = agent.handle(
        "Cancel order 123", contract=governed.contract, principal=Principal("ada", ALL_ORDER_SCOPES)
    )
    assert (conclusion.status, conclusion.cause) == ("refused", "STATE_VIOLATION")
    record = governed.log.run(conclusion.run_id)
    assert isinstance(record.sealed, Concluded)
    assert (record.sealed.status, record.sealed.cause) == ("refused", "STATE_VIOLATION")
    assert (record.status, record.cause) == ("refused", "STATE_VIOLATION")
    programs = [governed.log.run(r) for r in record.sealed.program_runs]
    assert [(p.status, p.cause) for p in programs] == [("refused", "STATE_VIOLATION"), ("refused", "refused")]
    assert all(isinstance(p.sealed, Sealed) and p.sealed.run_status == p.status for p in programs)
