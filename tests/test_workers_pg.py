"""`charter serve --workers 2 --database postgresql://...` under failure, on a real PostgreSQL:
each worker signs with its own key; a worker killed with SIGKILL in the middle of governed load;
the database restarted in the middle of load."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from charter.audit import AuditLog, Outcome
from charter.audit.keys import read_public_key
from charter.audit.store import SEAL_DEFERRED
from charter.bench._procs import children
from charter.db import close_pools
from tests._pg import PgServer
from tests.conftest import ROOT
from tests.test_workers import (
    _HOST,
    READ,
    REFUND,
    SLOW_REFUND,
    Deployment,
    _free_port,
    _refund_allowed,
    _refunds_written,
    _until,
    kill_a_worker_mid_load,
    running_deployment,
)


def test_each_worker_signs_with_its_own_key_listed_in_the_keyring(charter_home: Path, pg_url: str) -> None:
    with running_deployment(charter_home, pg_url) as deployment:
        answered: list[tuple[int, str]] = []

        def client() -> None:
            for _ in range(12):
                status, body, _ = deployment.post(READ)
                answered.append((status, body.get("status", "")))

        for _ in range(5):  # until both workers have signed (the kernel picks the worker)
            threads = [threading.Thread(target=client) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            key_ids = {row.decoded().key_id for row in deployment.log().stored()}
            if len(key_ids) == 2:
                break
        assert set(answered) == {(200, "done")}
        status, report = deployment.verify()
    keys = charter_home / "keys"
    workers = {read_public_key(keys / f"worker-{i}.pub").key_id: f"worker-{i}" for i in (1, 2)}
    # Two signers, worker-1 and worker-2, each a key of the keyring (keys/*.pub: no keyring file)...
    assert key_ids == set(workers), (key_ids, workers)
    assert not (keys / "receipts.key").exists()  # ...and no worker signed with the server's default key
    # ...and the log verifies clean under that keyring.
    assert (status, report["ok"], report["findings"]) == (0, True, [])


def test_workers_list_their_new_keys_in_the_default_local_keyring(charter_home: Path) -> None:
    from charter.audit._keyring import Keyring
    from tests.conftest import charter

    assert charter("keys", "new", "ops").returncode == 0  # makes keys/keyring.yaml
    with running_deployment(charter_home) as deployment:
        status, body, _ = deployment.post(READ)
        assert (status, body["status"]) == (200, "done")
    ring = Keyring.load(charter_home / "keys" / "keyring.yaml")
    listed = {entry.name: entry.key_id for entry in ring.entries}
    for name in ("worker-1", "worker-2"):
        assert listed[name] == read_public_key(charter_home / "keys" / f"{name}.pub").key_id


def test_an_operator_keyring_without_a_workers_key_stops_the_server_naming_the_command(
    charter_home: Path, tmp_path: Path
) -> None:
    import os

    ring = tmp_path / "operator" / "keyring.yaml"
    env = {**os.environ, "CHARTER_HOME": str(charter_home), "CHARTER_KEYRING": str(ring)}
    made = subprocess.run(
        [sys.executable, "-m", "charter", "keys", "new", "worker-1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    result = subprocess.run(
        [sys.executable, "-m", "charter", "serve", f"{_HOST}:{_free_port()}", "--workers", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "charter keys new worker-2" in result.stderr, result.stderr
    assert "Charter API on" not in result.stdout
    assert not (charter_home / "keys" / "worker-2.key").exists()  # nothing made behind the operator's back


def test_a_worker_killed_mid_load_on_postgresql(charter_home: Path, pg_url: str) -> None:
    with running_deployment(charter_home, pg_url) as deployment:
        observed = kill_a_worker_mid_load(deployment)
    print("kill -9 on PostgreSQL:", observed)


# -- the database restarted in the middle of load ------------------------------------------------


@pytest.fixture(scope="module")
def restartable_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this module's own: restarting it disturbs no other test's database."""
    root = Path(tempfile.mkdtemp(prefix="charter-pg-restart-"))
    server = PgServer.start(root)
    yield server
    close_pools()
    server.remove()


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    retry_after: str
    sent: float
    answered: float


def test_the_database_restarted_mid_load_is_503_then_interrupted_seals_and_the_same_workers_serve(
    charter_home: Path, restartable_pg: PgServer
) -> None:
    url = restartable_pg.new_database()
    stop = threading.Event()
    answers: list[_Answer] = []
    failures: list[str] = []  # a transport error or a timeout: a hang or a dropped request
    lock = threading.Lock()
    with running_deployment(charter_home, url) as deployment:
        pids = set(deployment.workers)

        def client(program: str) -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    # The client's bound: an answer within 30 s, during the outage too.
                    status, body, retry_after = deployment.post(program, uuid.uuid4().hex, timeout=30)
                except (OSError, http.client.HTTPException) as error:
                    with lock:
                        failures.append(f"{type(error).__name__}: {error}")
                    continue
                with lock:
                    answers.append(_Answer(status, body, retry_after, sent, time.monotonic()))
                if status == 503:
                    time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(p,)) for p in (REFUND, READ, SLOW_REFUND, SLOW_REFUND)]
        for thread in threads:
            thread.start()
        try:
            _until(lambda: len([a for a in answers if a.status == 200]) >= 6, "load served before the outage")
            # The orders service paused with a refund in it: that run's write is decided (durably)
            # and sent, its outcome not yet known.
            os.kill(deployment.service, signal.SIGSTOP)
            try:
                for _ in range(60):
                    time.sleep(0.3)
                    if _refunds_awaiting(deployment):
                        break
                    os.kill(deployment.service, signal.SIGCONT)
                    time.sleep(0.2)
                    os.kill(deployment.service, signal.SIGSTOP)
                awaiting = _refunds_awaiting(deployment)
                in_flight = _open_runs(deployment)
                down_at = time.monotonic()
                restartable_pg.stop()
            finally:
                # The calls return while the database is down: their outcomes cannot be written.
                os.kill(deployment.service, signal.SIGCONT)
            time.sleep(4)  # down: the slow runs end (their seals cannot be written), new requests arrive
            restartable_pg._start()  # the same data directory and port: the workers' URL holds
            up_at = time.monotonic()
            after = len(answers)
            _until(lambda: len([a for a in answers[after:] if a.status == 200]) >= 6, "served after the outage")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert set(children(deployment.serve.pid)) == pids  # the same workers: none restarted
        assert deployment.serve.poll() is None

        log = deployment.log()
        # Every seal kept during the outage is written once the database is back.
        _until(lambda: not _open_runs_in(log), "the kept seals written", timeout=30)
        status, report = deployment.verify()
        sealed = {run_id: log.run(run_id).sealed for run_id in in_flight}
        allowed = {
            receipt.idempotency_key: receipt.run_id
            for receipt in (row.decoded() for row in log.stored())
            if _refund_allowed(receipt)
        }
        unrecorded = {
            a.body["run_id"]: log.run(a.body["run_id"]).sealed
            for a in answers
            if "its result could not be recorded" in str(a.body.get("reason"))
        }

    statuses = Counter(a.status for a in answers)
    unavailable = [a for a in answers if a.status == 503]
    interrupted = {run_id for run_id, seal in sealed.items() if seal is not None and seal.run_status == "interrupted"}
    print(
        f"database restarted mid-load: {len(answers)} answers {dict(statuses)}, {len(failures)} transport errors, "
        f"{len(in_flight)} runs in flight, {len(interrupted)} sealed interrupted, "
        f"in doubt {[seal.in_doubt for seal in sealed.values() if seal is not None]}, "
        f"verify in doubt {report['in_doubt']}, results unrecorded {len(unrecorded)}"
    )
    # Never a 500, never a hang past the client's 30 s, never a dropped connection.
    assert not failures, failures
    assert set(statuses) <= {200, 503}, statuses
    # A failed run is the orders service's own conflict (two refunds of one order at once), or a
    # refund made whose result could not be recorded during the outage (withheld from the program).
    expected = ("changed after the gate checked it", "its result could not be recorded")
    failed = [a.body.get("reason") or "" for a in answers if a.status == 200 and a.body["status"] != "done"]
    others = [reason for reason in failed if not any(words in reason for words in expected)]
    assert not others, others
    # The outage answered 503 with Retry-After, only to requests that met it.
    assert unavailable
    assert all(a.retry_after.isdigit() and int(a.retry_after) > 0 for a in unavailable)
    assert {a.body["type"] for a in unavailable} <= {
        "urn:charter:problem:store-unavailable",
        "urn:charter:problem:audit-unavailable",
    }
    late = [a.body.get("detail") for a in unavailable if a.sent > up_at or a.answered < down_at]
    assert not late, late
    # The runs in flight are all sealed now: those that ended during the outage as interrupted,
    # their seal written by the worker once the database was back (a deferred seal).
    assert all(seal is not None for seal in sealed.values()), sealed
    assert interrupted
    # The refund sent before the outage and answered during it: its outcome could not be
    # written, so its run's seal lists it in doubt (the write may have happened), and verify too.
    assert awaiting
    in_doubt = {(run_id, call) for run_id, seal in sealed.items() if seal is not None for call in seal.in_doubt}
    assert awaiting <= in_doubt, (awaiting, in_doubt)
    assert {(doubt["run_id"], doubt["call"]) for doubt in report["in_doubt"]} == in_doubt
    # A refund made whose result could not be recorded is in doubt in its seal too (never "failed").
    assert all(seal is not None and seal.in_doubt for seal in unrecorded.values()), unrecorded
    assert all(getattr(sealed[run_id], "cause", None) == SEAL_DEFERRED for run_id in interrupted)
    # 0 actions without a decision receipt, 0 duplicate writes: every refund the orders service
    # applied carries the Idempotency-Key of an ALLOW decision in the log, one write per run.
    written, _ = _refunds_written(charter_home)
    assert written
    assert set(written) <= set(allowed), set(written) - set(allowed)
    assert len({allowed[key] for key in written}) == len(written)
    # ... and the log verifies clean: every stream intact, no run left open.
    assert (status, report["ok"], report["findings"], report["interrupted"]) == (0, True, [], [])
    assert {doubt["operation"] for doubt in report["in_doubt"]} <= {"refund_order", "verify_refund", "get_order"}


def _refunds_awaiting(deployment: Deployment) -> set[tuple[str, int]]:
    """(run, call) of each refund an open run was allowed and has no outcome for yet."""
    log = deployment.log()
    awaiting = set()
    for run_id in _open_runs(deployment):
        receipts = log.run(run_id).receipts
        allowed = {r.call for r in receipts if _refund_allowed(r)}
        answered = {r.call for r in receipts if isinstance(r, Outcome)}
        awaiting |= {(run_id, call) for call in allowed - answered}
    return awaiting


def _open_runs(deployment: Deployment) -> list[str]:
    return [r.run_id for r in deployment.log().runs() if r.sealed is None]


def _open_runs_in(log: AuditLog) -> list[str]:
    return [r.run_id for r in log.runs() if r.sealed is None]
