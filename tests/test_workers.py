"""`charter serve --workers 2` as a real process tree on loopback (the orders service, the
supervisor, its workers), real HTTP, a real audit log: requests spread over the workers, a
worker killed with SIGKILL in the middle of governed load, and 503 with Retry-After when a
store's database cannot be reached."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.audit import AuditLog, Decision, Opened, RunRecord
from charter.bench._procs import children
from charter.bench.serve import _wait, start_orders_service
from charter.errors import AuditError, StoreUnavailable
from charter.principal import Principal
from charter.sandbox import Sandbox
from charter.server import IdempotencyStore, create_app, serving
from tests.charter_service import charter_service
from tests.conftest import ROOT

_HOST = "127.0.0.1"
READ = "o = orders.get_order(id=102)\nconclude(o.status)"
REFUND = (
    "from decimal import Decimal\n"
    "c = orders.verify_refund(id=125)\n"
    'o = orders.refund_order(id=125, amount=Decimal("0.01"), reason="goodwill")\nconclude(str(o.refunded))'
)
# A refund, then a second or so of work: a run the test can find open (its write made, no seal yet).
SLOW_REFUND = REFUND.replace("conclude(", "x = 0\nfor i in range(3_000_000):\n    x += i\nconclude(")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((_HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Deployment:
    home: Path
    port: int
    token: str
    serve: subprocess.Popen[bytes]
    workers: list[int]
    database: str | None = None  # a PostgreSQL URL (`--database`); None: SQLite files in `home`
    service: int = 0  # the orders service's pid

    def post(self, program: str, key: str | None = None, timeout: float = 60) -> tuple[int, dict[str, Any], str]:
        """(status, JSON body, Retry-After) of POST /v1/programs on a new connection."""
        connection = http.client.HTTPConnection(_HOST, self.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        try:
            body = json.dumps({"contract": "orders", "program": program})
            connection.request("POST", "/v1/programs", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}"), response.getheader("Retry-After") or ""
        finally:
            connection.close()

    def log(self) -> AuditLog:
        if self.database is not None:
            from charter.db import Database

            return AuditLog(database=Database.parse(self.database, home=self.home))
        return AuditLog(self.home / "audit.db")

    def env(self) -> dict[str, str]:
        """The environment of a `charter` command against this deployment's stores."""
        env = {**os.environ, "CHARTER_HOME": str(self.home)}
        if self.database is not None:
            env["CHARTER_DATABASE_URL"] = self.database
        return env

    def verify(self) -> tuple[int, dict[str, Any]]:
        """`charter audit verify --json` of this deployment's log: (exit status, report)."""
        verified = subprocess.run(
            [sys.executable, "-m", "charter", "audit", "verify", "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=self.env(),
            check=False,
        )
        return verified.returncode, json.loads(verified.stdout)


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_deployment(home: Path, database: str | None = None, workers: int = 2) -> Iterator[Deployment]:
    """The orders service and `charter serve --workers N --lease 1` (with `--database` if given) on
    loopback, the orders contract published and a token added where the stores are; both stopped after."""
    from charter.contract import load_contract
    from charter.db import Database
    from charter.deployment import open_stores

    path = ROOT / "contracts" / "orders.yaml"
    chosen = Database.parse(database, home=home) if database else Database.from_env(home)
    stores = open_stores(chosen, tokens=home / "tokens.yaml")
    try:
        stores.registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
        token = stores.tokens.add("load", "load", ["orders:read", "orders:write", "orders:refund"])
    finally:
        stores.close()
    service_port, port = _free_port(), _free_port()
    env = {
        **os.environ,
        "CHARTER_HOME": str(home),
        "CHARTER_ORDERS_DB": str(home / "orders.db"),
        "CHARTER_SERVICE_ORDERS_URL": f"http://{_HOST}:{service_port}",
    }
    service = start_orders_service(service_port, env, home / "orders.stderr")
    command = [sys.executable, "-m", "charter", "serve", f"{_HOST}:{port}", "--workers", str(workers), "--lease", "1"]
    with (home / "serve.stderr").open("wb") as errors:
        # --lease 1: a killed worker's Idempotency-Keys are orphaned one second after it stopped renewing them.
        serve = subprocess.Popen(
            [*command, *(["--database", database] if database else [])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        _wait(f"http://{_HOST}:{service_port}/orders/102", service, "the orders service", home / "orders.stderr")
        _wait(f"http://{_HOST}:{port}/openapi.json", serve, f"charter serve --workers {workers}", home / "serve.stderr")
        _until(lambda: len(children(serve.pid)) == workers, f"{workers} workers")
        yield Deployment(home, port, token, serve, sorted(children(serve.pid)), database, service.pid)
    finally:
        for process in (serve, service):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def deployment(charter_home: Path) -> Iterator[Deployment]:
    with running_deployment(charter_home) as running:
        yield running


def _opened_pids(log: AuditLog, run_ids: set[str]) -> dict[str, int]:
    return {r.run_id: r.opened.pid for r in log.runs() if r.run_id in run_ids and isinstance(r.opened, Opened)}


def test_requests_spread_over_both_workers_and_sigterm_stops_every_one(deployment: Deployment) -> None:
    run_ids: set[str] = set()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(8):
            status, body, _ = deployment.post(READ)
            assert (status, body["status"]) == (200, "done"), body
            with lock:
                run_ids.add(body["run_id"])

    for _ in range(5):  # until both have served, 32 requests at a time (the kernel picks the worker)
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if set(_opened_pids(deployment.log(), run_ids).values()) == set(deployment.workers):
            break
    pids = _opened_pids(deployment.log(), run_ids)
    assert len(pids) == len(run_ids)
    # Each run's Opened receipt names the process that ran it: both workers served.
    assert set(pids.values()) == set(deployment.workers)
    assert deployment.serve.pid not in pids.values()  # the supervisor serves nothing itself

    deployment.serve.send_signal(signal.SIGTERM)
    assert deployment.serve.wait(60) == 0
    for pid in deployment.workers:  # every worker stopped with it, none left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_stop_when_their_supervisor_is_killed(deployment: Deployment) -> None:
    """kill -9 of the supervisor: its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG) and
    stop, instead of serving on, unsupervised, on the port (README-only attack, F8)."""
    deployment.serve.kill()
    deployment.serve.wait(60)

    def gone(pid: int) -> bool:  # exited: no such process, or a zombie its new parent has not reaped
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        return state == "Z"

    _until(lambda: all(gone(pid) for pid in deployment.workers), "the workers to stop after their supervisor")


@dataclass
class _Key:
    """One governed request and every answer its retries got."""

    key: str
    program: str
    sent_at: float
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    transport_errors: int = 0
    conflicts: int = 0  # 409: the first request with the key still running (or its claim not yet orphaned)

    @property
    def final(self) -> tuple[int, dict[str, Any]] | None:
        return self.answers[-1] if self.answers else None


def _send_until_answered(deployment: Deployment, request: _Key, give_up_at: float) -> None:
    """Send `request` until it gets an answer other than 409 in progress or 503, as a client with
    an Idempotency-Key does: a dropped connection (its worker killed) is retried with the same key."""
    while time.monotonic() < give_up_at:
        try:
            status, body, retry_after = deployment.post(request.program, request.key)
        except (OSError, http.client.HTTPException):
            request.transport_errors += 1
            time.sleep(0.2)
            continue
        if status == 409 and body.get("type") == "urn:charter:problem:idempotency-in-progress":
            request.conflicts += 1
            time.sleep(float(retry_after or 1))
            continue
        request.answers.append((status, body))
        return


def _refund_allowed(receipt: object) -> bool:
    return isinstance(receipt, Decision) and (receipt.operation, receipt.decision) == ("refund_order", "ALLOW")


def _refunds_written(home: Path) -> tuple[list[str], Decimal]:
    """The orders service's writes: each Idempotency-Key it applied, and order 125's refunded total."""
    with sqlite3.connect(home / "orders.db") as db:
        keys = [row[0] for row in db.execute("SELECT key FROM idempotency")]
        refunded = Decimal(db.execute("SELECT refunded FROM orders WHERE id = 125").fetchone()[0])
    return keys, refunded


def test_a_worker_killed_mid_load_loses_no_decision_and_duplicates_no_write(deployment: Deployment) -> None:
    kill_a_worker_mid_load(deployment)


def kill_a_worker_mid_load(deployment: Deployment) -> dict[str, int]:
    """SIGKILL the worker running a slow refund while four clients send refunds with
    Idempotency-Keys; assert every guarantee (the others keep serving, no write without an ALLOW
    decision, no duplicate write, the killed runs interrupted in verify, its keys resolved).
    Returns the counts observed (requests, retried after the kill, interrupted runs, writes)."""
    with sqlite3.connect(deployment.home / "orders.db") as db:
        seeded = Decimal(db.execute("SELECT refunded FROM orders WHERE id = 125").fetchone()[0])
    keys: list[_Key] = []
    lock = threading.Lock()
    stop = threading.Event()
    give_up_at = time.monotonic() + 240

    def client(program: str) -> None:
        while not stop.is_set():
            request = _Key(uuid.uuid4().hex, program, time.monotonic())
            with lock:
                keys.append(request)
            _send_until_answered(deployment, request, give_up_at)

    threads = [threading.Thread(target=client, args=(p,)) for p in (REFUND, REFUND, SLOW_REFUND, SLOW_REFUND)]
    for thread in threads:
        thread.start()
    try:
        # The victim: a worker with a slow refund open (its write made, its run not sealed).
        victim: list[RunRecord] = []

        def slow_run_open() -> bool:
            log = deployment.log()
            open_slow = [r for r in log.runs() if r.sealed is None and "range(" in getattr(r.opened, "program", "")]
            for run in open_slow:  # runs() leaves the decisions out: read the run whole
                whole = log.run(run.run_id)
                if whole.sealed is None and any(_refund_allowed(receipt) for receipt in whole.receipts):
                    victim[:] = [whole]
                    return True
            return False

        _until(slow_run_open, "a slow refund open in a worker")
        assert isinstance(victim[0].opened, Opened)
        killed = victim[0].opened.pid
        assert killed in deployment.workers
        os.kill(killed, signal.SIGKILL)
        killed_at = time.monotonic()
        # The supervisor starts a worker in its place; the other kept serving meanwhile.
        _until(lambda: len(set(children(deployment.serve.pid)) - set(deployment.workers)) == 1, "a new worker")
        time.sleep(3)  # load on the survivor and the new worker
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    # Every request was answered in the end (none stuck), each with a 200.
    unanswered = [k.key for k in keys if k.final is None]
    assert not unanswered, unanswered
    assert {k.final[0] for k in keys if k.final} == {200}, [k.final for k in keys if k.final and k.final[0] != 200]
    after = [k for k in keys if k.sent_at > killed_at]
    assert after, "no request was sent after the kill"
    # A retried key never started a second run: every answer a key got names one run, each key its own.
    runs_of = {k.key: {body["run_id"] for _, body in k.answers} for k in keys}
    assert all(len(ids) == 1 for ids in runs_of.values()), runs_of
    answered_runs = [next(iter(ids)) for ids in runs_of.values()]
    assert len(set(answered_runs)) == len(answered_runs)

    log = deployment.log()
    runs = {r.run_id: r for r in log.runs()}
    unsealed = {run_id for run_id, r in runs.items() if r.sealed is None}
    killed_runs = {run_id for run_id in unsealed if isinstance(runs[run_id].opened, Opened)}
    assert victim[0].run_id in killed_runs
    assert {getattr(runs[run_id].opened, "pid", None) for run_id in unsealed} == {killed}
    # The killed run's request was retried with its key and resolved from the log after the
    # lease: an answer (in doubt: its write may have happened), not a permanent 409.
    retried = [k for k in keys if k.transport_errors and k.final and k.final[1]["run_id"] in killed_runs]
    assert retried, [(k.key, k.transport_errors, k.final) for k in keys if k.transport_errors]
    assert all(k.final and k.final[1]["status"] == "in_doubt" for k in retried), [k.final for k in retried]

    # 0 actions without a decision receipt: every write the service applied carries the
    # Idempotency-Key of an ALLOW decision in the log, for a run some request was answered with.
    allowed = {
        receipt.idempotency_key: receipt.run_id
        for receipt in (row.decoded() for row in log.stored())
        if isinstance(receipt, Decision) and _refund_allowed(receipt)
    }
    written, refunded = _refunds_written(deployment.home)
    assert written
    assert set(written) <= set(allowed), set(written) - set(allowed)
    # 0 duplicate writes: one refund per run that wrote, and the order's total moved once per write.
    writers = [allowed[key] for key in written]
    assert len(writers) == len(set(writers))
    assert set(writers) <= set(answered_runs)
    assert refunded - seeded == Decimal("0.01") * len(written)

    # verify: the log is intact and names the killed worker's open runs as interrupted.
    status, report = deployment.verify()
    assert (status, report["ok"], report["findings"]) == (0, True, [])
    assert set(report["interrupted"]) == killed_runs
    return {
        "requests": len(keys),
        "retried": len(retried),
        "interrupted": len(killed_runs),
        "writes": len(written),
        "conflicts": sum(k.conflicts for k in keys),
    }


# -- a store's database down: 503 with Retry-After, never a 500 ---------------------------------


PROGRAM = {"contract": "orders", "program": 'conclude("hello")'}


def _unavailable_service(charter_home: Path, shared_sandbox: Sandbox, error: Exception) -> Any:
    """A real service whose runs meet `error`: what a store raises when PostgreSQL is down."""
    _, service, store = charter_service(charter_home, shared_sandbox, "orders", lambda _: "")

    def down(*_: object, **__: object) -> None:
        raise error

    service.execute = down
    return service, store


@pytest.mark.parametrize(
    ("error", "kind", "seconds"),
    [
        (StoreUnavailable("the idempotency store at postgresql://charter@db/charter is unreachable"), "store", "2"),
        (StoreUnavailable("down", retry_after=7), "store", "7"),
    ],
)
def test_a_store_that_cannot_be_reached_is_503_with_retry_after(
    charter_home: Path, shared_sandbox: Sandbox, error: Exception, kind: str, seconds: str
) -> None:
    service, store = _unavailable_service(charter_home, shared_sandbox, error)
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    with serving(app, name="charter-api") as url, httpx.Client(base_url=url, timeout=60) as client:
        headers = {"Authorization": f"Bearer {token}"}
        plain = client.post("/v1/programs", json=PROGRAM, headers=headers)
        keyed = client.post("/v1/programs", json=PROGRAM, headers=headers | {"Idempotency-Key": "k1"})
        again = client.post("/v1/programs", json=PROGRAM, headers=headers | {"Idempotency-Key": "k1"})
    for response in (plain, keyed, again):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["Retry-After"] == seconds
        body = response.json()
        assert body["type"] == f"urn:charter:problem:{kind}-unavailable"
        assert body["detail"] == str(error)
    # The key was released: its retry ran again (and met the store down again), not 409 in progress.


def test_an_audit_log_that_cannot_be_written_because_its_database_is_down_is_503_with_retry_after(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    try:
        raise StoreUnavailable("the audit log's database is down", retry_after=5)
    except StoreUnavailable as cause:
        error = AuditError(f"the audit log could not be written: {cause}")
        error.__cause__ = cause
    service, store = _unavailable_service(charter_home, shared_sandbox, error)
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    with serving(app, name="charter-api") as url, httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/programs", json=PROGRAM, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"  # the store's own estimate, through the AuditError
    assert response.json()["type"] == "urn:charter:problem:audit-unavailable"


def test_a_run_that_started_before_the_log_went_away_keeps_its_idempotency_key(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    """The audit log's database went away after the run opened (its program may have acted): the
    503 names the run, and a retry with the same key gets that run's answer from the log, never a
    second run. It once released the key, and the retry ran a refund a second time (found by the
    README-only attack)."""
    _, service, store = charter_service(charter_home, shared_sandbox, "orders", lambda _: "")
    execute = service.execute

    def ran_then_lost_the_log(*args: Any, **kwargs: Any) -> Any:
        ended = execute(*args, **kwargs)  # the run opens, runs and is sealed in the log...
        error = AuditError("the audit log could not be written: the database is down")
        error.opened_run = ended.run_id  # ...and the server meets the outage as it answers
        raise error

    service.execute = ran_then_lost_the_log
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    with serving(app, name="charter-api") as url, httpx.Client(base_url=url, timeout=60) as client:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "refund-1"}
        first = client.post("/v1/programs", json=PROGRAM, headers=headers)
        retry = client.post("/v1/programs", json=PROGRAM, headers=headers)
    assert first.status_code == 503, first.text
    assert "never a second run" in first.json()["detail"]
    assert retry.status_code == 200, retry.text
    assert retry.json()["run_id"] == first.json()["run_id"]  # the first run's answer, from the log
    assert len(service.audit.run_ids()) == 1  # and no second run


def test_a_runner_names_the_opened_run_in_an_audit_error(charter_home: Path, shared_sandbox: Sandbox) -> None:
    """Runner.execute marks an AuditError raised after the opening with the run's id (the server
    keeps the key of such a run); one raised before it opened names none."""
    from charter.audit._writer import Writer
    from charter.runner import Runner

    _, service, _ = charter_service(charter_home, shared_sandbox, "orders", lambda _: "")
    runner = Runner(audit=service.audit, sandbox=shared_sandbox)
    contract = service.contract("orders")
    original = Writer.submit
    calls = {"n": 0}

    def failing(self: Writer, items: Any, *, wait: bool = True) -> None:
        calls["n"] += 1
        if calls["n"] > 1:  # the opening is written; every later durable receipt fails
            raise AuditError("the audit log could not be written: the database is down")
        original(self, items, wait=wait)

    Writer.submit = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(AuditError) as caught:
            runner.execute('conclude("hello")', contract=contract, principal=Principal("ada", frozenset()))
    finally:
        Writer.submit = original  # type: ignore[method-assign]
    assert caught.value.opened_run is not None
    assert len(caught.value.opened_run) == 32


def test_an_mcp_tool_meeting_a_store_down_answers_the_problem_with_retry_after(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from charter.server._mcp import http_app

    service, store = _unavailable_service(charter_home, shared_sandbox, StoreUnavailable("down", retry_after=3))
    token = store.add("upstream", "upstream-ai", ["orders:read"])
    with serving(http_app(service, store, _HOST), name="charter-mcp") as url:

        async def call() -> Any:
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
            ):
                return await client.call_tool("execute_program", PROGRAM)

        result = anyio.run(call)
    assert result.is_error
    body = json.loads(result.content[0].text)
    assert (body["type"], body["status"], body["retry_after"], body["detail"]) == (
        "urn:charter:problem:store-unavailable",
        503,
        3,
        "down",
    )
    assert "retry_after seconds" in body["title"]


def test_workers_out_of_range_is_a_usage_error(charter_home: Path) -> None:
    from tests.conftest import charter

    result = charter("serve", f"{_HOST}:{_free_port()}", "--workers", "0")
    assert result.returncode == 1
    assert "--workers 0 is out of range: give the worker processes to start, 1 to 64" in result.stderr


def test_a_worker_that_cannot_start_stops_the_server_with_its_reason(charter_home: Path) -> None:
    """A store newer than this release (a later release upgraded it): every worker would fail
    alike: the stores are opened once, in a child, before any worker, and the server exits 1
    with the reason instead of starting (and restarting) workers."""
    from charter.registry import Registry
    from charter.registry.store import REGISTRY_SCHEMA

    Registry(charter_home / "charter.db")
    newer = REGISTRY_SCHEMA.version + 1
    with sqlite3.connect(charter_home / "charter.db") as db:
        db.execute(f"PRAGMA user_version = {newer}")
    result = subprocess.run(
        [sys.executable, "-m", "charter", "serve", f"{_HOST}:{_free_port()}", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"is at schema version {newer}, newer than version {newer - 1}" in result.stderr
    assert "Charter API on" not in result.stdout  # the stores are opened once before any worker starts
    assert "starting it again" not in result.stderr


def test_the_workers_bench_measures_each_configuration_against_sqlite_with_one(tmp_path: Path) -> None:
    from charter.bench import run_workers_bench

    results = run_workers_bench([2], clients=2, seconds=1.0, home=tmp_path)
    json.dumps(results)  # --json prints it whole
    base, two = results["configurations"]
    assert [(c["database"], c["workers"], c["processes"]) for c in (base, two)] == [("sqlite", 1, 1), ("sqlite", 2, 3)]
    for configuration in (base, two):
        assert configuration["errors"] == 0, configuration["error_samples"]
        assert configuration["accepted"] > 0
        assert configuration["cpu_ms_per_request"]["charter_serve"] > 0
        audit = configuration["audit"]
        assert audit["verified"], audit
        assert audit["one_run_per_accepted_request"], audit
    assert (base["throughput_vs_baseline"], base["cpu_per_request_vs_baseline"]) == (1.0, 1.0)
    assert two["throughput_vs_baseline"] == pytest.approx(two["requests_per_s"] / base["requests_per_s"], rel=0.005)


def test_a_sqlite_store_held_by_another_process_past_its_busy_timeout_is_503_not_500(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    """Many workers on SQLite files: one writer at a time per file. A request whose store stays
    locked past the 30 s busy timeout (here: a writer that never commits) is told to retry."""
    _, service, store = charter_service(charter_home, shared_sandbox, "orders", lambda _: "")
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    holder = sqlite3.connect(charter_home / "idempotency.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, held
    try:
        with serving(app, name="charter-api") as url, httpx.Client(base_url=url, timeout=120) as client:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "held"}
            response = client.post("/v1/programs", json=PROGRAM, headers=headers)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "2"
    body = response.json()
    assert body["type"] == "urn:charter:problem:store-unavailable"
    assert "database is locked" in body["detail"]
    assert not [r for r in service.audit.runs() if isinstance(r.opened, Opened)]  # nothing ran


def test_the_workers_bench_on_postgresql_two_workers_one_clean_log(tmp_path: Path, pg_url: str) -> None:
    """`charter bench serve --workers 2 --database postgresql://...`: both workers write one log
    (a stream each), which verifies with exactly one run per accepted request."""
    from charter.bench import run_workers_bench

    results = run_workers_bench([2], database=pg_url, clients=2, seconds=1.0, home=tmp_path)
    base, two = results["configurations"]
    assert [(c["database"], c["workers"]) for c in (base, two)] == [("sqlite", 1), ("postgresql", 2)]
    assert two["errors"] == 0, two["error_samples"]
    assert two["accepted"] > 0
    assert two["audit"]["verified"], two["audit"]
    assert two["audit"]["one_run_per_accepted_request"], two["audit"]
