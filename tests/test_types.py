"""The `date` type and `secret: true` params, end to end: the real sandbox, the gate, a real
audit log on SQLite, and the checker's exact errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from charter.audit import AuditLog, Decision, Outcome, RunRecord
from charter.audit.export import export_run
from charter.audit.keys import load_or_create_secret_key
from charter.backends import BackendFailure, InMemoryBackend
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.errors import ContractError
from charter.principal import Principal
from charter.registry import diff_contracts
from charter.replay import replay_run
from charter.runner import Execution, Runner
from charter.sandbox import Sandbox
from tests.conftest import WriteContract, charter

ACCOUNTS = """\
contract: accounts
version: 1.0.0
summary: Bills and a password.
owners: [tests@example.com]
changelog: First.
binding: {python: tests.accounts_backend}
records:
  Bill: {id: str, due: date, paid_on: 'date?', at: datetime}
operations:
  get_bill:
    kind: read
    doc: One bill.
    params: {id: str}
    returns: Bill
  schedule_payment:
    kind: write
    doc: Pay a bill on a day.
    params: {bill: str, 'on': date, also: 'list[date]?'}
    returns: Bill
    scopes: [acct:write]
    guards:
      - id: in_2026
        when: params.on < timestamp("2027-01-01T00:00:00Z") && params.on - duration("24h") >= timestamp("2025-12-31T00:00:00Z")
        message: Payments are scheduled in 2026 only.
  change_password:
    kind: write
    doc: Set the account's password.
    params:
      account: str
      new_password: {type: str, secret: true}
    scopes: [acct:write]
    guards:
      - id: long_password
        when: size(params.new_password) >= 8
        message: A password has at least 8 characters.
"""

SECRET = "correct-horse-battery-staple"
# Programs build the secret from parts, so the recorded program text does not hold it
# (a program that writes it literally records it: see the README's limits).
SECRET_EXPR = '"-".join(["correct", "horse", "battery", "staple"])'
SHORT = "pw-1234"  # fails the guard: 7 characters
SHORT_EXPR = '"-".join(["pw", "1234"])'
BREACHED = "breached-password-99"
BREACHED_EXPR = '"-".join(["breached", "password", "99"])'
RAW = 'import json\nhost = conclude.__globals__["host"]\n'


class Backend:
    """What the accounts backend was asked, and its answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.due: Any = "2026-02-28"

    def get_bill(self, **arguments: Any) -> Any:
        self.calls.append(("get_bill", arguments))
        return {"id": arguments["id"], "due": self.due, "paid_on": None, "at": "2026-01-01T09:00:00Z"}

    def schedule_payment(self, **arguments: Any) -> Any:
        self.calls.append(("schedule_payment", arguments))
        return {"id": arguments["bill"], "due": "2026-02-28", "paid_on": arguments["on"], "at": "2026-01-01T09:00:00Z"}

    def change_password(self, **arguments: Any) -> None:
        self.calls.append(("change_password", arguments))
        if arguments["new_password"] == BREACHED:
            # A backend's own words that quote the value: the gate scrubs them.
            raise BackendFailure("WEAK_PASSWORD", f"password {arguments['new_password']} is in a breach list")


class Accounts:
    def __init__(self, compiled: CompiledContract, runner: Runner, log: AuditLog, backend: Backend) -> None:
        self.compiled, self.runner, self.log, self.backend = compiled, runner, log, backend

    def run(self, program: str) -> Execution:
        principal = Principal("ada", frozenset({"acct:write"}))
        return self.runner.execute(program, contract=self.compiled, principal=principal)

    def decisions(self, run_id: str) -> list[Decision]:
        return [r for r in self.log.run(run_id).receipts if isinstance(r, Decision)]

    def outcomes(self, run_id: str) -> list[Outcome]:
        return [r for r in self.log.run(run_id).receipts if isinstance(r, Outcome)]


@pytest.fixture
def accounts(tmp_path: Path, charter_home: Path, shared_sandbox: Sandbox) -> Accounts:
    path = tmp_path / "accounts.yaml"
    path.write_text(ACCOUNTS, encoding="utf-8")
    compiled = compile_contract(load_contract(path, resolve_bindings=False))
    backend = Backend()
    functions = InMemoryBackend(
        {
            "get_bill": backend.get_bill,
            "schedule_payment": backend.schedule_payment,
            "change_password": backend.change_password,
        }
    )
    log = AuditLog(charter_home / "audit.db")
    return Accounts(compiled, Runner(audit=log, sandbox=shared_sandbox, backend_for=lambda _: functions), log, backend)


# -- date ------------------------------------------------------------------------------------


def test_a_date_param_and_a_date_result_round_trip(accounts: Accounts) -> None:
    execution = accounts.run(
        "from datetime import date, datetime\n"
        'bill = accounts.get_bill(id="b1")\n'
        "assert isinstance(bill.due, date) and not isinstance(bill.due, datetime) and isinstance(bill.at, datetime)\n"
        'paid = accounts.schedule_payment(bill="b1", on=bill.due.replace(day=1, month=3), also=[date(2026, 3, 2)])\n'
        "conclude(f'{bill.due.isoformat()} {type(paid.paid_on).__name__} {paid.paid_on - bill.due}', "
        "data={'due': bill.due, 'paid_on': paid.paid_on})\n"
    )
    assert execution.answer == "2026-02-28 date 1 day, 0:00:00"
    assert execution.outcome.data == {"due": "2026-02-28", "paid_on": "2026-03-01"}  # type: ignore[union-attr]
    # The backend gets Python dates, never text
    assert accounts.backend.calls[1] == (
        "schedule_payment",
        {"bill": "b1", "on": dt.date(2026, 3, 1), "also": [dt.date(2026, 3, 2)]},
    )
    scheduled = accounts.decisions(execution.run_id)[1]
    assert scheduled.arguments == '{"also":["2026-03-02"],"bill":"b1","on":"2026-03-01"}'
    assert scheduled.args_sha256 == hashlib.sha256(scheduled.arguments.encode()).hexdigest()
    read = accounts.outcomes(execution.run_id)[0]
    assert read.result == '{"id":"b1","due":"2026-02-28","paid_on":null,"at":"2026-01-01T09:00:00Z"}'


@pytest.mark.parametrize(
    ("arguments", "path"),
    [
        ('{"bill": "b1", "on": "2026-02-30"}', "$.on"),
        ('{"bill": "b1", "on": "2026-03-01T00:00:00Z"}', "$.on"),
        ('{"bill": "b1", "on": "2026-3-1"}', "$.on"),
        ('{"bill": "b1", "on": "2026-03-01", "also": ["2026-03-02", "2026-13-01"]}', "$.also[1]"),
        ('{"bill": "b1", "on": "\\uff12\\uff10\\uff12\\uff16-03-01"}', "$.on"),  # full-width digits
        ('{"bill": "b1", "on": " 2026-03-01"}', "$.on"),
    ],
    ids=["no-such-day", "a-datetime", "not-zero-padded", "list-item", "full-width", "leading-space"],
)
def test_a_date_that_is_not_a_real_iso_calendar_date_is_invalid(accounts: Accounts, arguments: str, path: str) -> None:
    execution = accounts.run(
        RAW + f"try:\n    host.call('schedule_payment', {arguments!r}, 0)\nexcept Exception as error:\n"
        "    conclude(json.loads(error.value)['message'])\n"
    )
    message = f"schedule_payment: Expected `date`, a calendar date written YYYY-MM-DD (e.g. 2026-03-01) - at `{path}`"
    assert execution.answer == message
    denied = accounts.decisions(execution.run_id)[0]
    assert (denied.decision, denied.code, denied.message) == ("DENY", "INVALID_ARGUMENTS", message)
    assert accounts.backend.calls == []


def test_the_proxy_refuses_a_datetime_for_a_date(accounts: Accounts) -> None:
    execution = accounts.run(
        "from datetime import datetime\n"
        "try:\n    accounts.schedule_payment(bill='b1', on=datetime(2026, 3, 1))\n"
        "except ContractViolation as error:\n    conclude(error.code + ' ' + error.reason)\n"
    )
    assert execution.answer == (
        "INVALID_ARGUMENTS accounts.schedule_payment(): on must be a datetime.date (e.g. date(2026, 3, 1)), not datetime"
    )


def test_a_guard_over_a_date_compares_it_as_its_midnight_utc(accounts: Accounts) -> None:
    execution = accounts.run(
        "from datetime import date\n"
        "accounts.schedule_payment(bill='b1', on=date(2026, 1, 1))\n"  # 2026-01-01 - 24h >= 2025-12-31: holds
        "try:\n    accounts.schedule_payment(bill='b1', on=date(2027, 1, 1))\n"
        "except ContractViolation as error:\n    conclude(error.code + ' ' + error.reason)\n"
    )
    assert execution.answer == (
        "GUARD_VIOLATION schedule_payment refused: Payments are scheduled in 2026 only. (guard in_2026)"
    )
    assert [d.code for d in accounts.decisions(execution.run_id)] == ["OK", "GUARD_VIOLATION"]


@pytest.mark.parametrize(
    ("due", "said"),
    [("2026-02-30", "Expected `date` - at `$.due`"), ("2026-02-28T00:00:00Z", "Expected `date` - at `$.due`")],
    ids=["no-such-day", "a-datetime"],
)
def test_a_backend_date_that_is_not_a_calendar_date_is_withheld(accounts: Accounts, due: str, said: str) -> None:
    accounts.backend.due = due
    execution = accounts.run(
        "try:\n    accounts.get_bill(id='b1')\nexcept OperationError as error:\n    conclude(error.code + ' ' + error.message)\n"
    )
    assert execution.answer == (
        f"RESULT_INVALID get_bill returned a value that is not the contract's Bill: {said}. It was withheld from the "
        "program."
    )


def test_stubs_and_prompt_show_dates(accounts: Accounts) -> None:
    stubs, prompt = accounts.compiled.stub_source, accounts.compiled.prompt_context
    assert "from datetime import date, datetime\n" in stubs
    assert "    due: date\n    paid_on: date | None\n    at: datetime\n" in stubs
    assert "def schedule_payment(*, bill: str, on: date, also: list[date] | None = None) -> Bill:" in stubs
    assert "Bill(id: str, due: date, paid_on: date?, at: datetime)" in prompt
    assert "schedule_payment(bill: str, on: date, also: list[date]?) -> Bill" in prompt
    namespace: dict[str, Any] = {}
    exec(compile(stubs, "stubs.py", "exec"), namespace)  # valid Python
    assert namespace["date"] is dt.date


def test_a_contract_without_dates_keeps_its_stub_imports() -> None:
    from tests.conftest import compiled

    assert "from datetime import datetime\n" in compiled("orders").stub_source
    assert "import date," not in compiled("orders").stub_source


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (
            'params.on < "2027-01-01"',
            "guard 'in_2026': type error: No such overload: the operation is not defined for the given operand "
            "types (CEL never converts types; money is an int of cents in guards)",
        ),
    ],
)
def test_a_guard_comparing_a_date_with_text_is_a_check_error(tmp_path: Path, when: str, expected: str) -> None:
    text = ACCOUNTS.replace(
        'when: params.on < timestamp("2027-01-01T00:00:00Z") && params.on - duration("24h") >= '
        'timestamp("2025-12-31T00:00:00Z")',
        f"when: '{when}'",
    )
    path = tmp_path / "accounts.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ContractError) as caught:
        load_contract(path, resolve_bindings=False)
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (23, 15)
    assert problem.message == expected


def test_date_and_datetime_are_different_types_for_diff(write_contract: WriteContract) -> None:
    dated = {"params: {id: int, reason: str}": "params: {id: int, reason: str, since: date}"}
    timed = {"params: {id: int, reason: str}": "params: {id: int, reason: str, since: datetime}"}
    old = load_contract(write_contract(replace=dated, name="old.yaml"), resolve_bindings=False).model
    new = load_contract(write_contract(replace=timed, name="new.yaml"), resolve_bindings=False).model
    assert {(c.kind, c.message) for c in diff_contracts(old, new)} == {
        ("breaking", "type changed from date to datetime")
    }
    assert {(c.kind, c.message) for c in diff_contracts(new, old)} == {
        ("breaking", "type changed from datetime to date")
    }


# -- secret params ---------------------------------------------------------------------------


def _digest(log: AuditLog, value: str) -> str:
    return log.secret_key.digest(value)


def test_a_secret_argument_is_recorded_as_its_keyed_digest(accounts: Accounts) -> None:
    execution = accounts.run(f"accounts.change_password(account='a1', new_password={SECRET_EXPR})\nconclude('done')\n")
    assert execution.answer == "done"
    assert accounts.backend.calls == [("change_password", {"account": "a1", "new_password": SECRET})]
    [decision] = accounts.decisions(execution.run_id)
    digest = _digest(accounts.log, SECRET)
    assert digest.startswith(f"hmac-sha256:{accounts.log.secret_key.key_id}:")
    assert decision.arguments == f'{{"account":"a1","new_password":"{digest}"}}'
    assert decision.args_sha256 == hashlib.sha256(decision.arguments.encode()).hexdigest()
    assert decision.args_sha256 != hashlib.sha256(f'{{"account":"a1","new_password":"{SECRET}"}}'.encode()).hexdigest()
    assert decision.secret_params == ("new_password",)


def test_a_denied_secret_is_neither_recorded_nor_echoed(accounts: Accounts, charter_home: Path) -> None:
    program = (
        RAW
        + "said = []\n"
        + f"try:\n    accounts.change_password(account='a1', new_password={SHORT_EXPR})\n"
        + "except ContractViolation as error:\n    said.append(error.code + ' ' + error.reason)\n"
        # the raw import: a call whose arguments fail their check (an unknown field beside the secret)
        + f"call = json.dumps({{'account': 'a1', 'new_password': {SECRET_EXPR}, 'extra': 1}})\n"
        + "try:\n    host.call('change_password', call, 0)\n"
        + "except Exception as error:\n    said.append(json.loads(error.value)['message'])\n"
        + f"try:\n    accounts.change_password(account='a1', new_password={BREACHED_EXPR})\n"
        + "except OperationError as error:\n    said.append(error.code + ' ' + error.message)\n"
        + "conclude(' | '.join(said))\n"
    )
    execution = accounts.run(program)
    assert execution.answer == (
        "GUARD_VIOLATION change_password refused: A password has at least 8 characters. (guard long_password) | "
        "change_password: Object contains unknown field `extra` | "
        "WEAK_PASSWORD password [secret] is in a breach list"
    )
    guard, invalid, allowed = accounts.decisions(execution.run_id)
    assert (guard.code, guard.secret_params) == ("GUARD_VIOLATION", ("new_password",))
    assert guard.arguments == f'{{"account":"a1","new_password":"{_digest(accounts.log, SHORT)}"}}'
    assert (invalid.code, invalid.arguments, invalid.secret_params) == ("INVALID_ARGUMENTS", None, ("new_password",))
    masked = f'{{"account":"a1","extra":1,"new_password":"{_digest(accounts.log, SECRET)}"}}'
    assert invalid.args_sha256 == hashlib.sha256(masked.encode()).hexdigest()
    assert allowed.code == "OK"
    [failed] = accounts.outcomes(execution.run_id)
    assert (failed.status, failed.message) == ("failed", "password [secret] is in a breach list")

    # Nothing in the log's bytes, its export, or `audit show` holds a secret value
    values = [v.encode() for v in (SECRET, SHORT, BREACHED)]
    for file in charter_home.glob("audit.db*"):  # the database, its WAL and shared memory
        raw = file.read_bytes()
        assert not any(v in raw for v in values), file
    bundle = "\n".join(export_run(accounts.log, execution.run_id)).encode()
    assert b"hmac-sha256:" in bundle
    assert not any(v in bundle for v in values)
    shown = charter("audit", "show", execution.run_id)
    assert shown.returncode == 0, shown.stderr
    assert "change_password(" in shown.stdout
    assert "[secret: new_password]" in shown.stdout
    assert not any(v.decode() in shown.stdout for v in values)


def test_replay_compares_masked_secrets_with_the_logs_key_and_says_when_it_cannot(
    accounts: Accounts, shared_sandbox: Sandbox, tmp_path: Path
) -> None:
    program = (
        f"accounts.change_password(account='a1', new_password={SECRET_EXPR})\n"
        f"try:\n    accounts.change_password(account='a1', new_password={SHORT_EXPR})\n"
        "except ContractViolation:\n    pass\nconclude('done')\n"
    )
    execution = accounts.run(program)
    record = accounts.log.run(execution.run_id)
    report = replay_run(record, accounts.compiled, shared_sandbox, secret_key=accounts.log.existing_secret_key())
    assert report.identical
    assert report.notes == ()

    without = replay_run(record, accounts.compiled, shared_sandbox, secret_key=None)
    assert without.identical
    missing = "were not compared: the log's secret key (keys/secrets.key) is not available"
    assert without.notes == (
        f"call 1 (change_password): secret params new_password {missing}",
        f"call 2 (change_password): secret params new_password {missing}",
    )

    other = load_or_create_secret_key(tmp_path / "other-keys")
    wrong = replay_run(record, accounts.compiled, shared_sandbox, secret_key=other)
    assert wrong.identical
    assert wrong.notes[0] == (
        "call 1 (change_password): secret params new_password were not compared: they were recorded with secret "
        f"key {accounts.log.secret_key.key_id}, not this log's {other.key_id}"
    )

    # Another non-secret argument is still a divergence without the key
    changed = msgspec_replace_program(record, program.replace("account='a1'", "account='a2'", 1))
    diverged = replay_run(changed, accounts.compiled, shared_sandbox, secret_key=None)
    assert diverged.divergences[0] == "call 1 (change_password) has other arguments than the recorded call"


def msgspec_replace_program(record: RunRecord, program: str) -> RunRecord:
    """The record with another program text (what a replay of a changed program would run)."""
    return dataclasses.replace(record, opened=msgspec.structs.replace(record.opened, program=program))


def test_a_replayed_secret_that_differs_is_a_divergence(accounts: Accounts, shared_sandbox: Sandbox) -> None:
    program = f"accounts.change_password(account='a1', new_password={SECRET_EXPR})\nconclude('done')\n"
    record = accounts.log.run(accounts.run(program).run_id)
    changed = msgspec_replace_program(record, program.replace('"staple"', '"stapler"'))
    report = replay_run(changed, accounts.compiled, shared_sandbox, secret_key=accounts.log.existing_secret_key())
    assert len(report.divergences) == 1
    assert report.divergences[0].startswith("call 1 is change_password with arguments ")


def test_prompt_and_stubs_mark_secret_params(accounts: Accounts) -> None:
    assert "change_password(account: str, new_password: secret str) -> None" in accounts.compiled.prompt_context
    stubs = accounts.compiled.stub_source
    assert "def change_password(*, account: str, new_password: str) -> None:" in stubs
    assert (
        '        `new_password` is secret: pass the request\'s input, `inputs["new_password"]`, never a value '
        "written in the program (its text is recorded).\n" in stubs
    )
    assert "secret" not in stubs.split("def change_password")[0]  # other operations say nothing of it


SERVICE = """\
contract: vault
version: 1.0.0
summary: A vault.
owners: [tests@example.com]
changelog: First.
binding: {http: {service: vault, base_url: 'http://127.0.0.1:1'}}
operations:
  set_token:
    kind: write
    doc: Set a token.
    params:
      id: int
      token: {type: str, secret: true}
    scopes: [vault:write]
    binding: {http: {method: POST, path: '/tokens/{id}'}}
"""


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (
            {"token: {type: str, secret: true}": "token: {type: int, secret: true}"},
            ["13:34: param 'set_token.token' is secret, so it must be str or list[str] (a password, a token), not int"],
        ),
        (
            {"token: {type: str, secret: true}": "token: {type: 'list[str]?', secret: true}"},
            [],
        ),
        (
            {
                "id: int\n": "id: {type: int, secret: true}\n",
                "    doc: Set a token.\n": "    doc: Set.\n    entity: T\n    key: id\n",
            },
            [
                "16:31: param 'set_token.id' is secret but the endpoint sends it in the URL's path, which access logs "
                "record; send it in the body (list it under `body:` of a POST, PUT or PATCH)",
                "16:31: param 'set_token.id' is secret, so it must be str or list[str] (a password, a token), not int",
                "16:31: param 'set_token.id' is the operation's key, which messages and receipts name; a key cannot be "
                "secret",
            ],
        ),
        (
            {"path: '/tokens/{id}'": "path: '/tokens/{id}/{token}'"},
            [
                "13:34: param 'set_token.token' is secret but the endpoint sends it in the URL's path, which access "
                "logs record; send it in the body (list it under `body:` of a POST, PUT or PATCH)"
            ],
        ),
        (
            {"path: '/tokens/{id}'": "path: '/tokens/{id}', query: [token]"},
            [
                "13:34: param 'set_token.token' is secret but the endpoint sends it in the URL's query, which access "
                "logs record; send it in the body (list it under `body:` of a POST, PUT or PATCH)"
            ],
        ),
    ],
    ids=["not-text", "optional-list-of-text", "key-and-path", "path", "query"],
)
def test_secret_params_are_checked(tmp_path: Path, replace: dict[str, str], expected: list[str]) -> None:
    text = SERVICE
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    if "entity: T" in text:
        text = text.replace("operations:", "entities:\n  T: {key: id, fields: {id: int}}\noperations:")
    path = tmp_path / "vault.yaml"
    path.write_text(text, encoding="utf-8")
    if not expected:
        assert compile_contract(load_contract(path, resolve_bindings=False)).gate.operations["set_token"].secret == (
            "token",
        )
        return
    with pytest.raises(ContractError) as caught:
        load_contract(path, resolve_bindings=False)
    assert [f"{p.line}:{p.column}: {p.message}" for p in caught.value.problems] == expected


def test_making_a_param_secret_is_additive_and_unmaking_it_a_relaxation(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SERVICE, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(SERVICE.replace("token: {type: str, secret: true}", "token: str"), "utf-8")
    secret = load_contract(tmp_path / "a.yaml", resolve_bindings=False).model
    plain = load_contract(tmp_path / "b.yaml", resolve_bindings=False).model
    assert [(c.kind, c.message) for c in diff_contracts(secret, plain)] == [
        ("relaxation", "param 'token' is no longer secret: receipts record its value in plain text")
    ]
    assert [(c.kind, c.message) for c in diff_contracts(plain, secret)] == [("additive", "param 'token' is now secret")]


def test_a_secret_param_changes_the_content_hash(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SERVICE, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(SERVICE.replace("token: {type: str, secret: true}", "token: str"), "utf-8")
    hashes = {
        compile_contract(load_contract(tmp_path / f, resolve_bindings=False)).sha256 for f in ("a.yaml", "b.yaml")
    }
    assert len(hashes) == 2
    assert json.loads(compile_contract(load_contract(tmp_path / "a.yaml", resolve_bindings=False)).canonical)[
        "operations"
    ]["set_token"]["params"]["token"] == {"type": "str", "secret": True}


def test_openapi_format_date_drafts_a_date(tmp_path: Path) -> None:
    from charter.contract.openapi import draft_from_openapi

    text = {"type": "string"}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Bills", "version": "1"},
        "servers": [{"url": "https://bills.example.com"}],
        "paths": {
            "/bills/{id}": {
                "get": {
                    "operationId": "getBill",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": text},
                        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The bill.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Bill"}}},
                        }
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "Bill": {
                    "type": "object",
                    "required": ["id", "due", "at"],
                    "properties": {
                        "id": text,
                        "due": {"type": "string", "format": "date"},
                        "at": {"type": "string", "format": "date-time"},
                        "code": {"type": "string", "format": "uuid"},
                    },
                }
            }
        },
    }
    path = tmp_path / "bills.yaml"
    path.write_text(draft_from_openapi(document).text, encoding="utf-8")
    model = load_contract(path, resolve_bindings=False).model  # the draft checks
    assert dict(model.entities["Bill"].fields) == {"id": "str", "due": "date", "at": "datetime", "code": "str?"}
    assert model.operations["get_bill"].params["since"] == "date?"


def test_dates_travel_to_an_http_service_as_iso_text_in_path_and_query(
    tmp_path: Path, charter_home: Path, shared_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.tiny_service import tiny_service

    path = tmp_path / "bills.yaml"
    path.write_text(
        "contract: bills\nversion: 1.0.0\nsummary: Bills.\nowners: [tests@example.com]\nchangelog: First.\n"
        "binding: {http: {service: bills, base_url: 'http://127.0.0.1:1'}}\n"
        "records:\n  Bill: {id: str, due: date}\n"
        "operations:\n  bills_on:\n    kind: read\n    doc: Bills due on a day.\n"
        "    params: {day: date, since: 'date?'}\n    returns: list[Bill]\n"
        "    binding: {http: {method: GET, path: '/bills/{day}'}}\n",
        encoding="utf-8",
    )
    compiled = compile_contract(load_contract(path))
    answers = {("GET", "/bills/2026-03-01?since=2026-02-01"): (200, [{"id": "b1", "due": "2026-03-01"}])}
    with tiny_service(answers) as url:
        monkeypatch.setenv("CHARTER_SERVICE_BILLS_URL", url)
        runner = Runner(audit=AuditLog(charter_home / "audit.db"), sandbox=shared_sandbox)
        execution = runner.execute(
            "from datetime import date\n"
            "[bill] = bills.bills_on(day=date(2026, 3, 1), since=date(2026, 2, 1))\n"
            "conclude(f'{bill.id} {bill.due!r}')\n",
            contract=compiled,
            principal=Principal("ada", frozenset()),
        )
    assert execution.answer == "b1 datetime.date(2026, 3, 1)"


RECORDED_USES = """\
contract: vault
version: 1.0.0
summary: A vault.
owners: [tests@example.com]
changelog: First.
binding: {python: tests.accounts_backend}
operations:
  list_payees:
    kind: read
    doc: Payees.
    params: {account: str}
    returns: list[str]
  set_pw:
    kind: write
    doc: Set.
    params:
      account: str
      pw: {type: str, secret: true}
    scopes: [vault:write]
    lookups:
      payees: {operation: list_payees, args: {account: params.pw}}
    guards:
      - id: known
        when: size(lookups.payees) > 0 && size(params.pw) >= 8
        message: Known accounts only.
    quotas:
      - {id: q1, count: true, per: [params.account, 'params["pw"]'], window: 24h, max: 3, message: Too many.}
      - {id: q2, sum: size(params.pw), per: [params.account], window: 24h, max: 300, message: Too long.}
"""


def test_a_secret_param_in_a_quota_or_a_lookup_arg_is_refused(tmp_path: Path) -> None:
    # Quota keys and amounts and lookup arguments are recorded as they are; guards give a bool.
    path = tmp_path / "vault.yaml"
    path.write_text(RECORDED_USES, encoding="utf-8")
    with pytest.raises(ContractError) as caught:
        load_contract(path, resolve_bindings=False)
    recorded = "in plain text in each Decision, so its value would be in the audit log"
    assert [f"{p.line}:{p.column}: {p.message}" for p in caught.value.problems] == [
        f"21:56: lookup 'payees' of 'set_pw', arg 'account': `params.pw` reads secret param 'set_pw.pw', but a "
        f"lookup's arguments are recorded {recorded}; pass a param that is not secret",
        f"27:53: quota 'q1': per key `params[\"pw\"]` reads secret param 'set_pw.pw', but a quota's keys are "
        f"recorded {recorded}; key the quota by a param that is not secret",
        f"28:23: quota 'q2': sum `size(params.pw)` reads secret param 'set_pw.pw', but a quota's amounts are "
        f"recorded {recorded}; sum a param that is not secret",
    ]
    fixed = (
        RECORDED_USES.replace("args: {account: params.pw}", "args: {account: params.account}")
        .replace(", 'params[\"pw\"]'", "")
        .replace("sum: size(params.pw)", "sum: size(params.account)")
    )
    path.write_text(fixed, encoding="utf-8")
    assert compile_contract(load_contract(path, resolve_bindings=False)).gate.operations["set_pw"].secret == ("pw",)


# -- secret values in every rendering, and secret inputs passed to params that are not secret ------

VAULT = """\
contract: vault
version: 1.0.0
summary: A vault.
owners: [tests@example.com]
changelog: First.
binding: {python: tests.accounts_backend}
operations:
  set_pattern:
    kind: write
    doc: Set an account's pattern.
    params:
      account: str
      pw: {type: str, secret: true}
    scopes: [vault:write]
    guards:
      - id: matches
        when: params.account.matches(params.pw)
        message: The account must match.
  set_pin:
    kind: write
    doc: Set a PIN.
    params:
      pin: {type: str, secret: true}
    scopes: [vault:write]
  set_owner:
    kind: write
    doc: Set an account's owner and a note.
    params: {account: str, note: str}
    scopes: [vault:write]
  list_payees:
    kind: read
    doc: An account's payees.
    params: {account: str}
    returns: list[str]
  pay:
    kind: write
    doc: Pay from an account.
    params: {account: str}
    scopes: [vault:write]
    lookups:
      payees: {operation: list_payees, args: {account: params.account}}
    guards:
      - id: has_payees
        when: size(lookups.payees) > 0
        message: The account has no payees.
    quotas:
      - {id: q1, count: true, per: [params.account], window: 24h, max: 3, message: Three payments a day.}
"""

MULTILINE = "TopSecretLineOne\nSecondLine(oops"
ESCAPED = "Back\\slash-Secret-é"  # repr() doubles the backslash and an ascii() form escapes é
QUOTED = 'Quote"Tab\tSecret-é'  # JSON escapes the quote, the tab and (ASCII JSON) é
ACCOUNT = "SuperSecretAcct99"


class Vault:
    def __init__(self, tmp_path: Path, charter_home: Path, sandbox: Sandbox) -> None:
        path = tmp_path / "vault.yaml"
        path.write_text(VAULT, encoding="utf-8")
        self.compiled = compile_contract(load_contract(path, resolve_bindings=False))
        self.calls: list[tuple[str, dict[str, Any]]] = []
        functions = InMemoryBackend(
            {
                "set_pattern": self._call("set_pattern"),
                "set_pin": self.set_pin,
                "set_owner": self.set_owner,
                "list_payees": self.list_payees,
                "pay": self._call("pay"),
            }
        )
        self.log = AuditLog(charter_home / "audit.db")
        self.runner = Runner(audit=self.log, sandbox=sandbox, backend_for=lambda _: functions)
        self.home = charter_home

    def _call(self, name: str) -> Any:
        return lambda **arguments: self.calls.append((name, arguments))

    def set_pin(self, **arguments: Any) -> None:
        self.calls.append(("set_pin", arguments))
        if arguments["pin"] == QUOTED:  # the backend's own words, quoting the value as JSON
            raise BackendFailure("BAD_PIN", f"bad pin {json.dumps(arguments['pin'])}")
        int(arguments["pin"])  # ValueError: "invalid literal for int() with base 10: '<repr>'"

    def set_owner(self, **arguments: Any) -> None:
        self.calls.append(("set_owner", arguments))
        raise BackendFailure("NO_SUCH_ACCOUNT", f"no account {arguments['account']}")

    def list_payees(self, **arguments: Any) -> list[str]:
        self.calls.append(("list_payees", arguments))
        return [f"{arguments['account']}-payee"]

    def run(self, program: str, secret: dict[str, str]) -> Execution:
        return self.runner.execute(
            program,
            contract=self.compiled,
            principal=Principal("ada", frozenset({"vault:write"})),
            inputs=secret,
            secret_inputs=tuple(secret),
        )

    def leaks(self, run_id: str, values: list[str]) -> list[str]:
        """Each rendering of `values` found in the log's files, its export, or `audit show`."""
        forms = {f for v in values for f in (v, repr(v)[1:-1], ascii(v)[1:-1], json.dumps(v)[1:-1], *v.splitlines())}
        found = [
            f"{file.name}: {f!r}"
            for file in self.home.glob("audit.db*")
            for f in forms
            if f.encode() in file.read_bytes()
        ]
        bundle = "\n".join(export_run(self.log, run_id))
        shown = charter("audit", "show", run_id)
        assert shown.returncode == 0, shown.stderr
        return (
            found
            + [f"export: {f!r}" for f in forms if f in bundle]
            + [f"show: {f!r}" for f in forms if f in shown.stdout]
        )


@pytest.fixture
def vault(tmp_path: Path, charter_home: Path, shared_sandbox: Sandbox) -> Vault:
    return Vault(tmp_path, charter_home, shared_sandbox)


CATCH = (
    "said = []\n"
    "def attempt(call):\n"
    "    try:\n        call()\n"
    "    except (ContractViolation, OperationError) as error:\n"
    "        said.append(getattr(error, 'reason', None) or error.message)\n"
)


def test_a_guard_error_over_a_multi_line_secret_says_no_line_of_it(vault: Vault) -> None:
    program = CATCH + "attempt(lambda: vault.set_pattern(account='a1', pw=inputs['pw']))\nconclude(' | '.join(said))\n"
    execution = vault.run(program, {"pw": MULTILINE})
    [decision] = [r for r in vault.log.run(execution.run_id).receipts if isinstance(r, Decision)]
    assert decision.code == "GATE_ERROR"
    # The CEL error quotes the regex line by line: for a call that sees a secret, only its type is said
    expected = (
        "set_pattern refused: guard matches could not be evaluated (RuntimeError); the gate does not allow what it "
        "cannot check."
    )
    assert (decision.message, execution.answer) == (expected, expected)
    assert vault.leaks(execution.run_id, [MULTILINE]) == []


def test_a_secret_quoted_escaped_by_a_backend_is_scrubbed_in_every_rendering(vault: Vault) -> None:
    program = (
        CATCH
        + "attempt(lambda: vault.set_pin(pin=inputs['escaped']))\n"
        + "attempt(lambda: vault.set_pin(pin=inputs['quoted']))\n"
        + "conclude(' | '.join(said))\n"
    )
    execution = vault.run(program, {"escaped": ESCAPED, "quoted": QUOTED})
    assert [c[1]["pin"] for c in vault.calls] == [ESCAPED, QUOTED]  # the backend got the real values
    assert execution.answer.endswith(' | bad pin "[secret]"')
    [error] = vault.log.backend_errors(execution.run_id)
    assert (error.error_type, error.message) == ("ValueError", "invalid literal for int() with base 10: '[secret]'")
    assert vault.leaks(execution.run_id, [ESCAPED, QUOTED]) == []


def test_a_secret_input_passed_to_a_param_that_is_not_secret_is_masked(vault: Vault) -> None:
    program = (
        CATCH
        + "attempt(lambda: vault.set_owner(account=inputs['pw'], note='for ' + inputs['pw'] + '!'))\n"
        + "conclude(' | '.join(said))\n"
    )
    execution = vault.run(program, {"pw": ACCOUNT})
    assert vault.calls == [("set_owner", {"account": ACCOUNT, "note": f"for {ACCOUNT}!"})]  # sent as the program chose
    assert execution.answer == "no account [secret]"
    [decision] = [r for r in vault.log.run(execution.run_id).receipts if isinstance(r, Decision)]
    digest = vault.log.secret_key.digest(ACCOUNT)
    assert decision.arguments == f'{{"account":"{digest}","note":"for {digest}!"}}'
    assert decision.args_sha256 == hashlib.sha256(decision.arguments.encode()).hexdigest()
    assert (decision.masked_inputs, decision.secret_params) == (("account", "note"), ())
    [outcome] = [r for r in vault.log.run(execution.run_id).receipts if isinstance(r, Outcome)]
    assert (outcome.code, outcome.message) == ("NO_SUCH_ACCOUNT", "no account [secret]")
    shown = charter("audit", "show", execution.run_id)
    assert "[secret input in: account, note]" in " ".join(shown.stdout.split())
    assert vault.leaks(execution.run_id, [ACCOUNT]) == []


def test_scrubbing_blanks_each_line_of_a_multi_line_secret_down_to_a_threshold() -> None:
    from charter.gate._secrets import MIN_LINE_CHARS, renderings, scrub

    # What the CEL regex error said before guards over secrets stopped quoting errors at all
    said = "error: '[secret]' not a valid regex:\n1: TopSecretLineOne\n2: SecondLine(oops\n   ^"
    assert (
        scrub(said, renderings([MULTILINE])) == "error: '[secret]' not a valid regex:\n1: [secret]\n2: [secret]\n   ^"
    )
    # A line shorter than MIN_LINE_CHARS is left: it would blank unrelated text wherever it occurs
    assert MIN_LINE_CHARS == 4
    assert scrub("ok: abc", renderings(["LongEnoughLine\nabc"])) == "ok: abc"
    assert scrub("a\\nb", renderings(["a\nb"])) == "[secret]"  # the whole value, escaped


def test_a_secret_input_in_a_quota_key_is_refused_and_in_a_lookup_is_masked(vault: Vault) -> None:
    program = CATCH + "attempt(lambda: vault.pay(account=inputs['pw']))\nconclude(' | '.join(said))\n"
    execution = vault.run(program, {"pw": ACCOUNT})
    # The lookup reached the backend (the program chose to send the value); the write did not
    assert vault.calls == [("list_payees", {"account": ACCOUNT})]
    expected = (
        "pay refused: the key of quota q1 holds a secret input of this request; a quota's key is recorded in plain "
        "text, so the gate does not count a secret. Do not mark that input secret, or key the quota by another param."
    )
    assert execution.answer == expected
    [decision] = [r for r in vault.log.run(execution.run_id).receipts if isinstance(r, Decision)]
    digest = vault.log.secret_key.digest(ACCOUNT)
    assert (decision.code, decision.message, decision.masked_inputs) == ("GATE_ERROR", expected, ("account",))
    assert [q.key for q in decision.quotas] == [f'["{digest}"]']
    [lookup] = decision.lookups
    assert (lookup.arguments, lookup.result) == (f'{{"account":"{digest}"}}', f'["{digest}-payee"]')
    assert vault.leaks(execution.run_id, [ACCOUNT]) == []
