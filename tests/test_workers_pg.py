"""`charter serve --workers 2 --database postgresql://...` under failure, on a real PostgreSQL:
each worker signs with its own key; a worker killed with SIGKILL in the middle of governed load;
the database restarted in the middle of load."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from charter.audit.keys import read_public_key
from tests.conftest import ROOT
from tests.test_workers import _HOST, READ, _free_port, kill_a_worker_mid_load, running_deployment


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
