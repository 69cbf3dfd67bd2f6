"""The HTTP API on a real uvicorn server on loopback, over the real orders service."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from charter.agent._model import ModelRequest
from charter.audit import AuditLog
from charter.contract import load_contract
from charter.registry import Registry
from charter.sandbox import Sandbox
from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving
from tests.charter_service import charter_service
from tests.conftest import ROOT
from tests.tiny_service import tiny_service


def scripted(request: ModelRequest) -> str:
    """The Runtime Agent's model for these tests: a program chosen by the intent's words."""
    asked = request.messages[0].text
    if "slow" in asked:
        program = "import time\nx = 0\nfor i in range(3_000_000):\n    x += i\nconclude(str(x))"
    elif "Cancel order" in asked:
        number = int(asked.split("Cancel order ")[1].split()[0].strip(".\"'"))
        program = f'o = orders.cancel_order(id={number}, reason="asked")\nconclude(f"Order {{o.id}} is {{o.status}}.")'
    else:
        program = 'refuse("I can only cancel orders.")'
    return f"```python\n{program}\n```"


@dataclass
class Api:
    url: str
    tokens: dict[str, str]  # name -> bearer token
    log: AuditLog

    def client(self, who: str | None = "ada") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture
def api(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Api]:
    from examples.orders import backend

    backend.seed()
    log, service, store = charter_service(charter_home, shared_sandbox, "orders", scripted)
    tokens = {
        "ada": store.add("ada", "ada", ["orders:read", "orders:write"]),
        "bob": store.add("bob", "bob", ["orders:read"]),
        "auditor": store.add("auditor", "auditor", ["audit:read"]),
    }
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    with serving(app, name="charter-api") as url:
        yield Api(url, tokens, log)


CANCEL_101 = 'o = orders.cancel_order(id=101, reason="asked")\nconclude(o.status)'


def problem(response: httpx.Response, status: int, kind: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["type"] == f"urn:charter:problem:{kind}"
    assert body["status"] == status
    return body


def test_an_intent_gets_its_conclusion_and_run_id_and_never_the_program(api: Api) -> None:
    with api.client() as client:
        response = client.post("/v1/intents", json={"contract": "orders", "intent": "Cancel order 101"})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["answer"], body["attempts"]) == ("done", "Order 101 is cancelled.", 1)
    assert "program" not in response.text
    assert api.log.run(body["run_id"]).opened.principal == "ada"


def test_a_program_runs_governed_with_the_tokens_scopes(api: Api) -> None:
    with api.client("bob") as client:  # bob may read, not write
        response = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101})
    body = response.json()
    assert body["status"] == "refused"
    assert "orders:write" in body["reason"]
    from examples.orders import backend

    assert backend.get_order(id=101)["status"] == "pending"


def test_an_uncaught_denial_is_refused_with_its_code_in_the_answer_and_the_run_view(api: Api) -> None:
    program = 'orders.cancel_order(id=123, reason="asked")\nconclude("cancelled")'
    with api.client() as client:
        answer = client.post("/v1/programs", json={"contract": "orders", "program": program}).json()
        view = client.get(f"/v1/runs/{answer['run_id']}").json()
    with api.client("auditor") as client:
        audited = client.get(f"/v1/runs/{answer['run_id']}").json()
    assert (answer["status"], answer["cause"]) == ("refused", "STATE_VIOLATION")
    assert (view["status"], view["cause"]) == ("refused", "STATE_VIOLATION")
    # Each call names the run that made it: a chain resumed after an approval spans several runs.
    denied = {"call": 1, "operation": "cancel_order", "decision": "DENY", "code": "STATE_VIOLATION"}
    assert view["calls"] == [denied | {"run_id": answer["run_id"]}]
    last = audited["receipts"][-1]
    assert (last["run_status"], last["cause"]) == ("refused", "STATE_VIOLATION")


def test_a_run_shows_its_conclusion_receipts_and_verification(api: Api) -> None:
    with api.client() as client:
        run_id = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101}).json()["run_id"]
        view = client.get(f"/v1/runs/{run_id}").json()
    with api.client("auditor") as client:
        audited = client.get(f"/v1/runs/{run_id}").json()
    assert (view["status"], view["answer"], view["kind"], view["principal"]) == ("done", "cancelled", "program", "ada")
    assert view["calls"] == [
        {"call": 1, "operation": "cancel_order", "decision": "ALLOW", "code": "OK", "run_id": run_id}
    ]
    assert view["receipts"] is None  # the signed record is for audit:read
    assert [r["kind"] for r in audited["receipts"]] == ["open", "decision", "outcome", "seal"]
    for seen in (view, audited):
        assert seen["verification"]["ok"] is True
        assert seen["verification"]["findings"] == []


def test_an_intent_runs_own_principal_sees_its_conclusion_not_the_record(api: Api) -> None:
    with api.client() as client:  # ada holds no audit:read
        run_id = client.post("/v1/intents", json={"contract": "orders", "intent": "Cancel order 101"}).json()["run_id"]
        own = client.get(f"/v1/runs/{run_id}")
    with api.client("auditor") as client:
        audited = client.get(f"/v1/runs/{run_id}").json()
    view = own.json()
    assert (view["kind"], view["status"], view["answer"], view["intent"]) == (
        "intent",
        "done",
        "Order 101 is cancelled.",
        "Cancel order 101",
    )
    assert view["receipts"] is None
    assert len(view["program_runs"]) == 1
    assert view["verification"]["ok"] is True
    # What the record holds and the caller does not see: the model's response, the program,
    # prompt hashes, the server's host and pid.
    kinds = {r["kind"]: r for r in audited["receipts"]}
    assert {"ask", "attempt", "conclude"} <= set(kinds)
    attempt, asked = kinds["attempt"], kinds["ask"]
    withheld = [attempt["response"], attempt["program"], asked["host"], f'"pid":{asked["pid"]}', '"pid"', '"host"']
    withheld += [v for k, v in attempt.items() if "sha256" in k and isinstance(v, str)]
    compact = own.text.replace(" ", "")
    assert not [w for w in withheld if w and w.replace(" ", "") in compact]


def test_runs_are_private_to_their_principal_unless_audit_read(api: Api) -> None:
    with api.client() as client:
        run_id = client.post("/v1/programs", json={"contract": "orders", "program": "conclude('hi')"}).json()["run_id"]
    missing = "f" * 32
    with api.client("bob") as client:
        # Another principal's run is answered exactly as a run that does not exist.
        others = problem(client.get(f"/v1/runs/{run_id}"), 404, "run-not-found")
        absent = problem(client.get(f"/v1/runs/{missing}"), 404, "run-not-found")
        assert str(others["detail"]).replace(run_id, missing) == absent["detail"]
        assert "ada" not in str(others["detail"]).replace(
            run_id, ""
        )  # the owner is not named (a hex id may hold "ada")
        assert "audit.db" not in str(absent["detail"])
        problem(client.get(f"/v1/runs/{run_id[:8]}"), 404, "run-not-found")  # no prefix searches
    with api.client("auditor") as client:
        assert client.get(f"/v1/runs/{run_id}").json()["answer"] == "hi"


def test_a_backends_error_text_is_shown_only_to_audit_read(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.orders import backend

    secret = "database password is hunter2"
    current = msgspec.to_builtins(backend.get_order(id=101))
    answers = {("GET", "/orders/101"): (200, current), ("POST", "/orders/101/cancel"): (500, {"detail": secret})}
    with tiny_service(answers) as url:
        monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", url)  # read when the server's backend is built
        with api.client() as client:
            ran = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101})
            own = client.get(f"/v1/runs/{ran.json()['run_id']}")
    assert ran.status_code == 200
    assert "hunter2" not in ran.text  # the caller's answer
    assert ran.json()["status"] == "failed"  # the program did not catch the OperationError
    assert "hunter2" not in own.text  # its own principal sees the run, not the withheld text
    assert own.json()["backend_errors"] is None
    with api.client("auditor") as client:
        audited = client.get(f"/v1/runs/{ran.json()['run_id']}").json()
    [kept] = audited["backend_errors"]
    assert (kept["call"], kept["operation"], kept["error_type"], kept["message"]) == (
        1,
        "cancel_order",
        "HTTP 500",
        secret,
    )


def test_an_unexpected_servers_error_text_is_not_sent(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(CharterService, "execute", broken)
    with api.client() as client:
        response = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101})
    body = problem(response, 500, "internal")
    assert body["detail"] == "the server failed (RuntimeError); its log has the detail"
    assert "hunter2" not in response.text


def test_contracts_are_listed_with_their_operational_model(api: Api) -> None:
    with api.client("bob") as client:
        listing = client.get("/v1/contracts").json()
        detail = client.get("/v1/contracts/orders/1.0.0").json()
        latest = client.get("/v1/contracts/orders/latest").json()
        missing = client.get("/v1/contracts/orders/9.9.9")
        unknown = client.get("/v1/contracts/ordrs/latest")
    assert [(c["name"], c["latest"]) for c in listing] == [("orders", "1.0.0")]
    assert detail == latest
    assert "def cancel_order" in detail["stubs"]
    assert "Never cancel an order in picking, packed, or dispatched state." in detail["prompt_context"]
    problem(missing, 404, "contract-not-found")
    body = problem(unknown, 404, "contract-not-found")
    assert "orders" in str(body["detail"])  # did you mean


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer chr_not-a-token", "Basic YWRhOmFkYQ=="])
def test_no_token_no_run(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    with httpx.Client(base_url=api.url, headers=headers) as client:
        response = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101})
        listing = client.get("/v1/contracts")
    problem(response, 401, "unauthenticated")
    problem(listing, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    # RFC 6750 section 3: a bearer token that was sent and is not known is an invalid_token challenge.
    unknown_bearer = header is not None and header.startswith("Bearer")
    assert ('error="invalid_token"' in response.headers["www-authenticate"]) is unknown_bearer
    assert api.log.run_ids() == []  # nothing was recorded, so nothing ran
    from examples.orders import backend

    assert backend.get_order(id=101)["status"] == "pending"


def test_a_revoked_token_stops_working_without_a_restart(api: Api, charter_home: Path) -> None:
    TokenStore(charter_home / "tokens.yaml").revoke("bob")
    with api.client("bob") as client:
        problem(client.get("/v1/contracts"), 401, "unauthenticated")


def test_the_token_file_holds_only_hashes(api: Api, charter_home: Path) -> None:
    text = (charter_home / "tokens.yaml").read_text(encoding="utf-8")
    assert all(token not in text for token in api.tokens.values())
    assert (charter_home / "tokens.yaml").stat().st_mode & 0o077 == 0


# -- idempotency ------------------------------------------------------------------------------


def test_the_same_key_and_body_returns_the_first_result_without_running_again(api: Api) -> None:
    with api.client() as client:
        headers = {"Idempotency-Key": "cancel-101"}
        first = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101}, headers=headers)
        again = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len(api.log.run_ids()) == 1


def test_the_same_key_with_another_body_is_refused(api: Api) -> None:
    with api.client() as client:
        headers = {"Idempotency-Key": "k"}
        client.post("/v1/programs", json={"contract": "orders", "program": "conclude('a')"}, headers=headers)
        other = client.post("/v1/programs", json={"contract": "orders", "program": "conclude('b')"}, headers=headers)
    problem(other, 422, "idempotency-key-reused")
    assert len(api.log.run_ids()) == 1


def test_keys_belong_to_their_principal(api: Api) -> None:
    for who in ("ada", "bob"):
        with api.client(who) as client:
            body = {"contract": "orders", "program": "conclude('x')"}
            assert client.post("/v1/programs", json=body, headers={"Idempotency-Key": "shared"}).status_code == 200
    assert len(api.log.run_ids()) == 2


def test_a_concurrent_duplicate_gets_409(api: Api) -> None:
    body = {"contract": "orders", "intent": "a slow sum"}
    responses: list[httpx.Response] = []

    def post() -> None:
        with api.client() as client:
            responses.append(client.post("/v1/intents", json=body, headers={"Idempotency-Key": "slow"}))

    first = threading.Thread(target=post)
    first.start()
    # Wait until the first request holds the key (its intent run is open), then duplicate it.
    for _ in range(500):
        if api.log.run_ids():
            break
        threading.Event().wait(0.01)
    post()
    first.join(60)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409]
    in_progress = next(r for r in responses if r.status_code == 409)
    problem(in_progress, 409, "idempotency-in-progress")
    assert in_progress.headers["retry-after"] == "1"  # the retry that comes after it gets the first answer
    from charter.audit import Asked

    assert len([r for r in api.log.runs() if isinstance(r.opened, Asked)]) == 1  # one intent run, not two


# -- bad input changes nothing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"contract": "orders"}, "body.program: Field required"),
        ({"contract": "orders", "program": ""}, "body.program: String should have at least 1 character"),
        ({"contract": "orders", "program": "x", "extra": 1}, "body.extra: Extra inputs are not permitted"),
        ({"contract": 7, "program": "x"}, "body.contract: Input should be a valid string"),
    ],
)
def test_malformed_requests_get_a_problem_naming_the_field(api: Api, body: object, words: str) -> None:
    with api.client() as client:
        response = client.post("/v1/programs", json=body)
    assert words in str(problem(response, 422, "invalid-request")["detail"])
    assert api.log.run_ids() == []


def test_an_oversize_body_is_refused_before_it_is_read(api: Api) -> None:
    with api.client() as client:
        response = client.post("/v1/programs", content=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
    problem(response, 413, "payload-too-large")


def test_unknown_paths_and_methods_are_problems(api: Api) -> None:
    with api.client() as client:
        problem(client.get("/v1/nothing"), 404, "not-found")
        not_allowed = problem(client.delete("/v1/contracts"), 405, "method-not-allowed")
        assert not_allowed["detail"] == "Method Not Allowed"


def test_intents_without_a_model_are_unavailable_but_programs_run(charter_home: Path) -> None:
    registry = Registry()
    path = ROOT / "contracts" / "orders.yaml"
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    service = CharterService.create(registry=registry, audit=AuditLog(charter_home / "a.db"), agent=None)
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "i.db"))
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        intent = client.post("/v1/intents", json={"contract": "orders", "intent": "Cancel order 101"})
        program = client.post("/v1/programs", json={"contract": "orders", "program": "conclude('ok')"})
    problem(intent, 503, "intents-unavailable")
    assert program.json()["status"] == "done"


# -- the OpenAPI document ---------------------------------------------------------------------


def test_the_served_openapi_document_is_the_one_in_the_repo(api: Api) -> None:
    import json
    import os

    served = httpx.get(f"{api.url}/openapi.json").json()
    kept = ROOT / "openapi.json"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        kept.write_text(json.dumps(served, indent=2) + "\n", encoding="utf-8")
    assert served == json.loads(kept.read_text(encoding="utf-8")), "run UPDATE_SNAPSHOTS=1 pytest to refresh"


# -- the API against its own OpenAPI document ---------------------------------------------------


@schemathesis.check
def problem_json(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every error is application/problem+json with a stable `type` and its own status."""
    if response.status_code >= 400:
        content_type = {k.lower(): v for k, v in response.headers.items()}["content-type"]
        assert content_type == ["application/problem+json"], (response.status_code, content_type)
        body = response.json()
        assert body["type"].startswith("urn:charter:problem:"), body
        assert body["status"] == response.status_code, body


def test_schemathesis_finds_no_server_error(api: Api) -> None:
    # schemathesis's own pytest plugin does not load under this pytest, so the operations are
    # driven through its Python API: every operation, generated requests, real HTTP. Valid
    # requests (with a token) must conform to the document; invalid ones (with or without a
    # token) must be problems, never a 5xx.
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    checked = []
    token = {"Authorization": f"Bearer {api.tokens['ada']}"}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            # Authenticated, so generated requests get past the token check and into the service.
            checks = [not_a_server_error, status_code_conformance, response_schema_conformance, problem_json]
            case.call_and_validate(base_url=api.url, headers=token, checks=checks)

        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), authenticated=st.booleans())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def hostile(case: schemathesis.Case, authenticated: bool) -> None:
            headers = token if authenticated else {}
            case.call_and_validate(base_url=api.url, headers=headers, checks=[not_a_server_error, problem_json])

        fuzz()
        hostile()
        checked.append(operation.label)
    assert len(checked) == 10
