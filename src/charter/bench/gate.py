"""`charter bench gate`: gated calls per second with durable receipts, and verification speed.

Each run is a real program in the real sandbox making 44 reads and one write (the write
reads the entity's state through the contract's read operation, checks the lifecycle,
and is tied to what it read), every call decided by the contract gate and recorded as
signed receipts in a SQLite WAL file with synchronous=FULL. Peers in the same run: the
same programs behind the pass-through gate (no rules, no receipts), and the bare SQLite
commit rate with synchronous=FULL, the ceiling for one-commit-per-receipt designs.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from charter.audit import AuditLog, verify_log
from charter.backends import InMemoryBackend
from charter.bench._lookups import run_lookup_bench
from charter.bench._quotas import run_quota_bench
from charter.bench.sandbox import ORDER
from charter.compiler import compile_contract
from charter.contract.checker import load_contract
from charter.gate import PassThroughGate
from charter.principal import Principal
from charter.runner import Runner
from charter.sandbox import Completed, RunContext, Sandbox

__all__ = ["run_gate_bench"]

_ROOT = Path(__file__).resolve().parents[3]
_READS = 44
_PROGRAM = f"for i in range({_READS}):\n    orders.get_order(id=7)\norders.confirm_order(id=7)\nconclude('ok')\n"
_CALLS_PER_RUN = _READS + 1


def _order(id: int) -> dict[str, Any]:
    return {**ORDER, "id": id, "status": "pending"}


def _backend() -> InMemoryBackend:
    return InMemoryBackend({"get_order": _order, "confirm_order": lambda id: {**_order(id), "status": "confirmed"}})


def _in_threads(threads: int, runs_each: int, one_run: Any) -> float:
    """Seconds for `threads` threads each doing `runs_each` runs."""
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(runs_each):
            one_run()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - started


def _fsync_commits_per_second(folder: Path, commits: int = 1000) -> float:
    connection = sqlite3.connect(folder / "fsync.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE t (x BLOB)")
    started = time.perf_counter()
    for _ in range(commits):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO t VALUES (?)", (os.urandom(400),))
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return commits / elapsed


def run_gate_bench(runs: int = 40, threads: int = 4) -> dict[str, Any]:
    contract = compile_contract(load_contract(_ROOT / "contracts" / "orders.yaml"))
    principal = Principal("bench", frozenset({"orders:read", "orders:write"}))
    sandbox = Sandbox(pool_size=max(2, threads), progress=None)
    sandbox.warm(contract)
    results: dict[str, Any] = {"calls_per_run": _CALLS_PER_RUN, "runs": runs, "threads": threads}
    with tempfile.TemporaryDirectory(prefix="charter-bench-gate-") as scratch:
        folder = Path(scratch)
        log = AuditLog(folder / "audit.db")
        runner = Runner(audit=log, sandbox=sandbox, backend_for=lambda _: _backend())

        def gated() -> None:
            execution = runner.execute(_PROGRAM, contract=contract, principal=principal)
            if execution.status != "done":
                raise RuntimeError(f"benchmark run did not complete: {execution.outcome}")

        passthrough = PassThroughGate(contract, _backend())

        def ungated() -> None:
            outcome = sandbox.run(
                _PROGRAM, contract=contract, gate=passthrough, context=RunContext(principal=principal)
            )
            if not isinstance(outcome, Completed):
                raise RuntimeError(f"benchmark run did not complete: {outcome}")

        gated()  # warm the gate's compiled rules and the log's writer
        for name, one_run in (("gated", gated), ("passthrough", ungated)):
            sequential = _in_threads(1, runs, one_run)
            concurrent = _in_threads(threads, max(1, runs // threads), one_run)
            results[name] = {
                "sequential_calls_per_s": runs * _CALLS_PER_RUN / sequential,
                "concurrent_calls_per_s": threads * max(1, runs // threads) * _CALLS_PER_RUN / concurrent,
            }
        results["sqlite_full_commits_per_s"] = _fsync_commits_per_second(folder)
        results["lookup_guard"] = run_lookup_bench(sandbox, max(4, runs // 2))

        keys = log.trusted_keys()
        for mode, every in (("verify", False), ("verify_every_signature", True)):
            started = time.perf_counter()
            report = verify_log(log, keys, every_signature=every)
            elapsed = time.perf_counter() - started
            if not report.ok:
                raise RuntimeError(f"the benchmark's log does not verify: {report.findings[:3]}")
            results[mode] = {"receipts": report.receipts, "receipts_per_s": report.receipts / elapsed}
    results["quota_check"] = run_quota_bench()  # one quota check at k = 1,000 vs one plain guard
    g, p = results["gated"], results["passthrough"]
    results["gated_share_of_passthrough"] = {
        "sequential": g["sequential_calls_per_s"] / p["sequential_calls_per_s"],
        "concurrent": g["concurrent_calls_per_s"] / p["concurrent_calls_per_s"],
    }
    results["goals"] = {
        "durable_gated_calls_per_s": 2000,
        "verify_receipts_per_s": 20000,
        "met_calls": max(g["sequential_calls_per_s"], g["concurrent_calls_per_s"]) >= 2000,
        "met_verify": results["verify"]["receipts_per_s"] >= 20000,
    }
    return results
