"""Idempotency-Key across crashes: a real `charter serve` killed with SIGKILL mid-run and
restarted, and keys whose owner died, resolved from the audit log; the scope rule of replays."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.audit import AuditLog, Decision, Outcome
from charter.server._api import ProgramRequest
from charter.server._idempotency import request_digest
from tests.conftest import ROOT, charter
from tests.test_server import Api, api, problem  # noqa: F401  (api is a fixture)

CANCEL_THEN_READ = 'o = orders.cancel_order(id=101, reason="crash")\norders.get_order(id=101)\nconclude(o.status)'


class BlockingOrders:
    """A proxy in front of the orders service that counts cancels of order 101 and holds every
    read of it after a cancel (the gate's own read before the cancel passes): the run under
    test blocks after its write returned to the program."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.cancels = 0
        self.reading = threading.Event()
        self.release = threading.Event()

    @contextmanager
    def serving(self) -> Iterator[str]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST" and self.path.startswith("/orders/101/cancel"):
                    proxy.cancels += 1
                if self.command == "GET" and self.path == "/orders/101" and proxy.cancels:
                    proxy.reading.set()
                    proxy.release.wait(120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            self.release.set()
            server.shutdown()
            server.server_close()


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def charter_serve(orders_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real `charter serve` process with a one-second lease, until the block ends."""
    port = free_port()
    env = os.environ | {"CHARTER_SERVICE_ORDERS_URL": orders_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "charter", "serve", f"127.0.0.1:{port}", "--lease", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                if httpx.get(url + "/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "charter serve did not start"
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        if process.stderr:
            process.stderr.close()


def test_a_key_of_a_run_killed_mid_run_answers_in_doubt_with_its_run_id_after_a_restart(
    charter_home: Path, orders_service: str
) -> None:
    from examples.orders import backend

    backend.seed()
    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    token = charter("token", "add", "upstream", "-p", "ada", "-s", "orders:read", "-s", "orders:write").stdout.strip()
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "cancel-101"}
    body = {"contract": "orders", "program": CANCEL_THEN_READ}
    orders = BlockingOrders(orders_service)
    with orders.serving() as proxy:
        with charter_serve(proxy) as (process, url):

            def post() -> None:
                with pytest.raises(httpx.TransportError):  # the server dies under it
                    httpx.post(url + "/v1/programs", json=body, headers=headers, timeout=120)

            first = threading.Thread(target=post, daemon=True)
            first.start()
            assert orders.reading.wait(120), "the run never reached its read"
            # The cancel returned to the program, which now waits on its read: kill the server.
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
            first.join(30)
        log = AuditLog(charter_home / "audit.db")
        [run_id] = log.run_ids()
        record = log.run(run_id)
        assert (record.status, record.sealed) == ("interrupted", None)
        # The write's outcome was durable before the program saw it (fault 4): not in doubt.
        assert [(r.operation, r.status) for r in record.receipts if isinstance(r, Outcome)] == [("cancel_order", "ok")]
        assert backend.get_order(id=101)["status"] == "cancelled"

        with charter_serve(proxy) as (_, url):
            deadline = time.monotonic() + 60
            while True:  # 409 while the dead server's lease lasts (a second at most), then resolved
                retry = httpx.post(url + "/v1/programs", json=body, headers=headers, timeout=60)
                if retry.status_code != 409 or time.monotonic() > deadline:
                    break
                problem(retry, 409, "idempotency-in-progress")
                time.sleep(0.2)
            assert retry.status_code == 200, retry.text
            answer = retry.json()
            assert (answer["run_id"], answer["status"], answer["cause"]) == (run_id, "in_doubt", "never_sealed")
            assert f"/v1/runs/{run_id}" in answer["reason"]
            assert retry.headers["idempotent-replayed"] == "true"
            again = httpx.post(url + "/v1/programs", json=body, headers=headers, timeout=60)
            assert (again.status_code, again.json()) == (200, answer)
            # The interrupted run's view lists its calls, outcomes and calls in doubt from its
            # receipts, as for a sealed run, agreeing with the log and the verification block
            view = httpx.get(url + f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
            assert view.status_code == 200, view.text
            shown = view.json()
            decisions = [r for r in record.receipts if isinstance(r, Decision)]
            assert [(c["call"], c["operation"], c["decision"]) for c in shown["calls"]] == [
                (d.call, d.operation, d.decision) for d in decisions
            ]
            assert [c["operation"] for c in shown["calls"]][:1] == ["cancel_order"]
            assert [(o["call"], o["status"]) for o in shown["outcomes"]] == [
                (r.call, r.status) for r in record.receipts if isinstance(r, Outcome)
            ]
            assert shown["in_doubt"] == [d.call for d in record.in_doubt()]
            assert shown["in_doubt"] == [d["call"] for d in shown["verification"]["in_doubt"]]
    assert orders.cancels == 1  # the write happened once: no retry ran it again
    assert log.run_ids() == [run_id]  # and no second run was opened


# -- keys whose owner died, in-process --------------------------------------------------------


def orphan(charter_home: Path, key: str, program: str, run_id: str, *, principal: str = "ada") -> None:
    """Leave the claim a dead worker would: running, its lease long expired, no response."""
    digest = request_digest(
        "POST", "/v1/programs", ProgramRequest(contract="orders", program=program).model_dump_json().encode()
    )
    with closing(sqlite3.connect(charter_home / "idempotency.db", isolation_level=None)) as db:
        db.execute(
            "INSERT INTO idempotency (principal, key, request_sha256, state, created, run_id, owner, lease_expires, "
            "scopes) VALUES (?, ?, ?, 'running', ?, ?, 'elsewhere:4242:dead', ?, ?)",
            (
                principal,
                key,
                digest,
                time.time() - 60,
                run_id,
                time.time() - 30,
                json.dumps(["orders:read", "orders:write"]),
            ),
        )


CANCEL_101 = 'o = orders.cancel_order(id=101, reason="asked")\nconclude(o.status)'


def test_a_key_whose_run_never_opened_is_taken_over_and_runs_under_its_run_id(api: Api, charter_home: Path) -> None:  # noqa: F811
    orphan(charter_home, "never-opened", CANCEL_101, "ab" * 16)
    with api.client() as client:
        response = client.post(
            "/v1/programs",
            json={"contract": "orders", "program": CANCEL_101},
            headers={"Idempotency-Key": "never-opened"},
        )
    assert response.status_code == 200, response.text
    assert (response.json()["run_id"], response.json()["status"]) == ("ab" * 16, "done")
    assert api.log.run_ids() == ["ab" * 16]
    from examples.orders import backend

    assert backend.get_order(id=101)["status"] == "cancelled"


def test_a_sealed_run_whose_answer_was_never_stored_is_answered_from_its_seal(api: Api, charter_home: Path) -> None:  # noqa: F811
    with api.client() as client:
        first = client.post("/v1/programs", json={"contract": "orders", "program": CANCEL_101}).json()
        orphan(charter_home, "sealed", CANCEL_101, first["run_id"])
        again = client.post(
            "/v1/programs", json={"contract": "orders", "program": CANCEL_101}, headers={"Idempotency-Key": "sealed"}
        )
    assert again.status_code == 200, again.text
    assert again.json() == first
    assert api.log.run_ids() == [first["run_id"]]  # nothing ran again


def test_a_replay_goes_only_to_a_token_with_every_scope_of_the_first(api: Api, charter_home: Path) -> None:  # noqa: F811
    from charter.server import TokenStore

    reader = TokenStore(charter_home / "tokens.yaml").add("ada-reader", "ada", ["orders:read"])
    body = {"contract": "orders", "program": CANCEL_101}
    with api.client() as client:
        first = client.post("/v1/programs", json=body, headers={"Idempotency-Key": "write"})
    assert first.json()["status"] == "done"
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {reader}"}, timeout=60) as client:
        replay = client.post("/v1/programs", json=body, headers={"Idempotency-Key": "write"})
    detail = problem(replay, 403, "idempotency-scope-mismatch")["detail"]
    assert "orders:write" in str(detail)
    assert first.json()["run_id"] not in replay.text
    assert len(api.log.run_ids()) == 1


# -- secret inputs in the request fingerprint ---------------------------------------------------

PW = "hunter2-Tiny"
READS_PW = 'conclude("length " + str(len(inputs["pw"])))'


def _secret_body(pw: str) -> dict[str, Any]:
    return {"contract": "orders", "program": READS_PW, "inputs": {"pw": pw}, "secret_inputs": ["pw"]}


def _store_bytes(charter_home: Path) -> bytes:
    return b"".join(f.read_bytes() for f in charter_home.glob("idempotency.db*"))


def test_a_secret_input_is_fingerprinted_keyed_so_the_store_cannot_be_brute_forced(
    api: Api,  # noqa: F811
    charter_home: Path,
) -> None:
    from charter.server._idempotency import request_fingerprint

    body = _secret_body(PW)
    with api.client() as client:
        first = client.post("/v1/programs", json=body, headers={"Idempotency-Key": "pw"})
        again = client.post("/v1/programs", json=body, headers={"Idempotency-Key": "pw"})
        other = client.post("/v1/programs", json=_secret_body("hunter3-Tiny"), headers={"Idempotency-Key": "pw"})
    assert first.status_code == again.status_code == 200, first.text
    assert (first.json()["answer"], again.headers["idempotent-replayed"]) == ("length 12", "true")
    problem(other, 422, "idempotency-key-reused")  # another secret is another request
    assert len(api.log.run_ids()) == 1

    # Someone with the store's bytes tries the candidate password: its plain sha256 is not there
    raw = ProgramRequest.model_validate(body).model_dump_json().encode()
    candidate = request_digest("POST", "/v1/programs", raw)
    stored = _store_bytes(charter_home)
    assert candidate.encode() not in stored
    assert PW.encode() not in stored
    keyed = request_fingerprint("POST", "/v1/programs", raw, api.log.secret_key)
    assert keyed != candidate
    with closing(sqlite3.connect(charter_home / "idempotency.db")) as db:
        assert db.execute("SELECT request_sha256 FROM idempotency WHERE key = 'pw'").fetchone() == (keyed,)


def test_a_key_stored_before_keyed_fingerprints_still_matches_its_request(
    api: Api,  # noqa: F811
    charter_home: Path,
) -> None:
    body = _secret_body(PW)
    raw = ProgramRequest.model_validate(body).model_dump_json().encode()
    with closing(sqlite3.connect(charter_home / "idempotency.db", isolation_level=None)) as db:
        db.execute(
            "INSERT INTO idempotency (principal, key, request_sha256, state, status, body, created, run_id, scopes) "
            "VALUES ('ada', 'old', ?, 'done', 200, ?, ?, NULL, ?)",
            (
                request_digest("POST", "/v1/programs", raw),  # what an earlier release stored
                b'{"status": "done", "answer": "from before"}',
                time.time(),
                json.dumps(["orders:read", "orders:write"]),
            ),
        )
    with api.client() as client:
        again = client.post("/v1/programs", json=body, headers={"Idempotency-Key": "old"})
        other = client.post("/v1/programs", json=_secret_body("hunter3-Tiny"), headers={"Idempotency-Key": "old"})
    assert (again.status_code, again.json()["answer"]) == (200, "from before")
    assert again.headers["idempotent-replayed"] == "true"
    problem(other, 422, "idempotency-key-reused")
    assert api.log.run_ids() == []


# -- one held connection -------------------------------------------------------------------------


def test_claims_share_one_held_connection_across_threads(charter_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charter.server._idempotency import Claimed, IdempotencyStore, KeyInProgress, StoredResponse

    store = IdempotencyStore(charter_home / "idempotency.db")
    opened: list[object] = []
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(a) or connect(*a, **k))
    outcomes: list[object] = []
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for key in (f"own-{n}", "shared"):
                try:
                    claim = store.claim("ada", key, "digest", run_id=f"{n:032x}", scopes=["orders:read"])
                except KeyInProgress as busy:
                    outcomes.append(busy)
                    continue
                outcomes.append(claim)
                if key != "shared" and isinstance(claim, Claimed):
                    store.complete("ada", key, claim.run_id, StoredResponse(200, b"{}"))
        except BaseException as error:  # a "database is locked" would land here
            errors.append(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert opened == []  # no claim or completion opened a connection of its own
    claimed = [o for o in outcomes if isinstance(o, Claimed)]
    assert len(claimed) == 17  # each thread's own key, and the shared key exactly once
    assert sum(isinstance(o, KeyInProgress) for o in outcomes) == 15
    again = store.claim("ada", "own-3", "digest", run_id="ff" * 16, scopes=["orders:read"])
    assert again == StoredResponse(200, b"{}")
