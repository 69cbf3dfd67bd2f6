"""`charter bench gate`: gated calls per second with durable receipts, and verification speed.

Each run is a real program in the real sandbox, every call decided by the contract gate and
recorded as signed receipts in a SQLite WAL file with synchronous=FULL. Two mixes:

- read-heavy: 44 reads and one write (the write reads the entity's state through the
  contract's read operation, checks the lifecycle, and is tied to what it read);
- write-only: 45 writes (each needs its decision durable before it acts and its outcome
  durable before the program sees it: two commits a write).

Each mix is measured one run at a time as a ratio to the bare SQLite commit rate with
synchronous=FULL (one small row a commit) measured interleaved with its runs in the same
process, on the same disk (a few bare commits after each run): the goals are read-heavy >= 1.0x and write-only >= 0.45x.
Peers: the same programs behind the pass-through gate (no rules, no receipts), and, for the
write-only mix, where one write's wall time goes (`write_split`: the two commits, the two
signatures, the sandbox crossing with the guest and backend, and the gate's own checks).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from charter import _profile
from charter.audit import AuditLog, Decision, Opened, Outcome, Sealed, verify_log
from charter.backends import InMemoryBackend
from charter.bench._lookups import run_lookup_bench
from charter.bench._quotas import run_quota_bench
from charter.bench.sandbox import ORDER
from charter.compiler import compile_contract
from charter.compiler.artifact import CompiledContract
from charter.contract.checker import load_contract
from charter.gate import PassThroughGate
from charter.principal import Principal
from charter.runner import Runner
from charter.sandbox import Completed, RunContext, Sandbox

__all__ = ["GOAL_READ_HEAVY", "GOAL_WRITE_ONLY", "run_gate_bench"]

_ROOT = Path(__file__).resolve().parents[3]
_READS = 44
_PROGRAM = f"for i in range({_READS}):\n    orders.get_order(id=7)\norders.confirm_order(id=7)\nconclude('ok')\n"
_CALLS_PER_RUN = _READS + 1
_WRITES = 45
# Each write on its own order (confirm_order is idempotent: the same arguments would be REPLAYED).
_WRITE_PROGRAM = f"for i in range({_WRITES}):\n    orders.confirm_order(id=i + 1)\nconclude('ok')\n"
GOAL_READ_HEAVY = 1.0  # gated calls/s over bare commits/s, one run at a time
GOAL_WRITE_ONLY = 0.45
_BARE_COMMITS = 20  # after each measured run


def _order(id: int) -> dict[str, Any]:
    return {**ORDER, "id": id, "status": "pending"}


def _backend() -> InMemoryBackend:
    return InMemoryBackend({"get_order": _order, "confirm_order": lambda id: {**_order(id), "status": "confirmed"}})


def _in_threads(threads: int, runs_each: int, one_run: Callable[[], None]) -> float:
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


class _BareCommits:
    """Bare SQLite commits with synchronous=FULL in WAL mode, one 400-byte row a commit, on a
    held connection: the ceiling of one-commit-per-receipt designs on this disk."""

    def __init__(self, folder: Path) -> None:
        self._connection = sqlite3.connect(folder / "fsync.db", isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")

    def seconds(self, commits: int) -> float:
        started = time.perf_counter()
        for _ in range(commits):
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.execute("INSERT INTO t VALUES (?)", (os.urandom(400),))
            self._connection.execute("COMMIT")
        return time.perf_counter() - started

    def close(self) -> None:
        self._connection.close()


def _fsync_commits_per_second(folder: Path, commits: int = 1000) -> float:
    """Bare SQLite commits/s with synchronous=FULL (`_BareCommits`), `commits` in a row."""
    bare = _BareCommits(folder)
    try:
        return commits / bare.seconds(commits)
    finally:
        bare.close()


def _against_bare(
    folder: Path, runs: int, calls_per_run: int, one_run: Callable[[], None], log: AuditLog
) -> dict[str, float]:
    """Calls/s of `runs` runs one at a time, and its ratio to the bare commit rate measured
    interleaved with them (after each run, `_BARE_COMMITS` bare commits): this disk's fsync
    time drifts several-fold within seconds on a shared machine, and interleaving gives both
    the same conditions. Each side is timed on its own; their ratio is the figure. Also the
    log's durable commits a call (`log`: the runs' audit log): 1 / that is the ratio's ceiling,
    were everything but the fsync free, whatever the disk does."""
    bare = _BareCommits(folder)
    gated_s = bare_s = 0.0
    commits_before = log.commits
    try:
        for _ in range(runs):
            started = time.perf_counter()
            one_run()
            gated_s += time.perf_counter() - started
            bare_s += bare.seconds(_BARE_COMMITS)
    finally:
        bare.close()
    calls = runs * calls_per_run / gated_s
    commits = runs * _BARE_COMMITS / bare_s
    per_call = (log.commits - commits_before) / (runs * calls_per_run)
    return {
        "calls_per_s": calls,
        "bare_commits_per_s": commits,
        "ratio_to_bare": calls / commits,
        "durable_commits_per_call": per_call,
    }


def _write_only_contract(folder: Path) -> CompiledContract:
    """The orders contract with room for the write-only program's writes (max_writes: 5 there)."""
    text = (_ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    if "max_writes: 5\n" not in text:
        raise RuntimeError("contracts/orders.yaml no longer says max_writes: 5; update the write-only bench")
    path = folder / "orders.yaml"
    path.write_text(text.replace("max_writes: 5\n", f"max_writes: {_WRITES}\n"), encoding="utf-8")
    return compile_contract(load_contract(path))


def _receipt_commit_ms(log: AuditLog) -> float:
    """Wall ms of one durable commit of one real receipt through the log (sign, chain, insert,
    index, fsync): the receipts of the log's last write-only run recorded again, each durably,
    as a new run (sealed, so the log still verifies)."""
    run_id = log.run_ids()[-1]
    receipts = log.run(run_id).receipts
    opened, calls, sealed = receipts[0], receipts[1:-1], receipts[-1]
    assert isinstance(opened, Opened)
    assert isinstance(sealed, Sealed)
    recorder = log.open_run(msgspec.structs.replace(opened, run_id=secrets.token_hex(16)))
    started = time.perf_counter()
    for receipt in calls:
        if isinstance(receipt, Decision):
            fresh = msgspec.structs.replace(receipt, run_id=recorder.run_id, nonce=secrets.token_hex(16))
            recorder.decision(fresh, durable=True)
        elif isinstance(receipt, Outcome):
            recorder.outcome(msgspec.structs.replace(receipt, run_id=recorder.run_id), durable=True)
    elapsed = time.perf_counter() - started
    recorder.seal(msgspec.structs.replace(sealed, run_id=recorder.run_id))
    return elapsed / len(calls) * 1000


def _write_split(
    log: AuditLog, gated: float, passthrough: float, bare_commits: float, profile: dict[str, float]
) -> dict[str, float]:
    """Where one write's wall time goes, ms (write-only mix, one run at a time): its two
    commits at the bare rate (the fsync), what its two real receipt commits cost beyond that
    (signing, chaining, the indexes, the head row), the signatures alone (timed on a receipt of
    the log), the crossing (the pass-through run's time a call: sandbox, guest, backend), and
    the rest: the gate's own work, and waits for a CPU on a shared machine (`cpu_gate_ms` says
    which is which). `profile`: the CPU the profile sections charged, ms a write."""
    body = next(row.body for row in log.stored() if row.kind == "decision")
    key = log.signing_key
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        key.sign(body)
    sign_ms = (time.perf_counter() - started) / rounds * 1000
    wall_ms = 1000 / gated
    fsync_ms = 2 * 1000 / bare_commits
    commits_ms = 2 * _receipt_commit_ms(log)
    crossing_ms = 1000 / passthrough
    split = {
        "wall_ms": wall_ms,
        "two_bare_commits_ms": fsync_ms,
        "two_receipt_commits_ms": commits_ms,
        "two_signatures_ms": 2 * sign_ms,
        "crossing_ms": crossing_ms,
        "gate_ms": wall_ms - commits_ms - crossing_ms,
    }
    split.update({f"cpu_{name.replace('.', '_')}_ms": ms for name, ms in profile.items()})
    return split


def _profiled(one_run: Callable[[], None], runs: int, calls_per_run: int) -> dict[str, float]:
    """CPU ms a call per profile section (gate, backend, audit.sign, audit.commit) over `runs`
    runs, profiling switched on for them alone."""
    was = _profile.ENABLED
    before = _profile.snapshot()["components_s"]
    _profile.ENABLED = True
    try:
        for _ in range(runs):
            one_run()
    finally:
        _profile.ENABLED = was
    after = _profile.snapshot()["components_s"]
    assert isinstance(before, dict)
    assert isinstance(after, dict)
    calls = runs * calls_per_run
    names = ("gate", "backend", "audit.sign", "audit.commit", "guest")
    return {name: (after.get(name, 0.0) - before.get(name, 0.0)) * 1000 / calls for name in names}


def run_gate_bench(runs: int = 40, threads: int = 4) -> dict[str, Any]:
    """Every figure of `charter bench gate` as a JSON-able dict. ValueError unless `runs` and
    `threads` are at least 1: every rate here is calls over the seconds those runs took."""
    if runs < 1 or threads < 1:
        raise ValueError(f"runs and threads must be at least 1 (got {runs}, {threads})")
    contract = compile_contract(load_contract(_ROOT / "contracts" / "orders.yaml"))
    principal = Principal("bench", frozenset({"orders:read", "orders:write"}))
    sandbox = Sandbox(pool_size=max(2, threads), progress=None)
    sandbox.warm(contract)
    results: dict[str, Any] = {"calls_per_run": _CALLS_PER_RUN, "runs": runs, "threads": threads}
    with tempfile.TemporaryDirectory(prefix="charter-bench-gate-") as scratch:
        folder = Path(scratch)
        log = AuditLog(folder / "audit.db")
        runner = Runner(audit=log, sandbox=sandbox, backend_for=lambda _: _backend())
        writes = _write_only_contract(folder)
        sandbox.warm(writes)

        def gated_run(program: str, compiled: CompiledContract) -> Callable[[], None]:
            def one_run() -> None:
                execution = runner.execute(program, contract=compiled, principal=principal)
                if execution.status != "done":
                    raise RuntimeError(f"benchmark run did not complete: {execution.outcome}")

            return one_run

        def ungated_run(program: str, compiled: CompiledContract) -> Callable[[], None]:
            passthrough = PassThroughGate(compiled, _backend())

            def one_run() -> None:
                context = RunContext(principal=principal)
                outcome = sandbox.run(program, contract=compiled, gate=passthrough, context=context)
                if not isinstance(outcome, Completed):
                    raise RuntimeError(f"benchmark run did not complete: {outcome}")

            return one_run

        gated = gated_run(_PROGRAM, contract)
        gated_writes = gated_run(_WRITE_PROGRAM, writes)
        gated()  # warm the gate's compiled rules and the log's connection
        gated_writes()
        results["read_heavy"] = _against_bare(folder, runs, _CALLS_PER_RUN, gated, log)
        results["write_only"] = _against_bare(folder, runs, _WRITES, gated_writes, log)
        plain_writes = _in_threads(1, runs, ungated_run(_WRITE_PROGRAM, writes))
        results["write_only"]["passthrough_calls_per_s"] = runs * _WRITES / plain_writes
        for name, one_run in (("gated", gated), ("passthrough", ungated_run(_PROGRAM, contract))):
            sequential = _in_threads(1, runs, one_run)
            concurrent = _in_threads(threads, max(1, runs // threads), one_run)
            results[name] = {
                "sequential_calls_per_s": runs * _CALLS_PER_RUN / sequential,
                "concurrent_calls_per_s": threads * max(1, runs // threads) * _CALLS_PER_RUN / concurrent,
            }
        results["profile_read_heavy_ms_per_call"] = _profiled(gated, max(2, runs // 4), _CALLS_PER_RUN)
        profile = _profiled(gated_writes, max(2, runs // 4), _WRITES)  # the log's last run: a write-only one
        w = results["write_only"]
        results["write_split"] = _write_split(
            log, w["calls_per_s"], w["passthrough_calls_per_s"], w["bare_commits_per_s"], profile
        )
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
        "read_heavy_ratio_to_bare": GOAL_READ_HEAVY,
        "write_only_ratio_to_bare": GOAL_WRITE_ONLY,
        "verify_receipts_per_s": 20000,
        "met_read_heavy": results["read_heavy"]["ratio_to_bare"] >= GOAL_READ_HEAVY,
        "met_write_only": results["write_only"]["ratio_to_bare"] >= GOAL_WRITE_ONLY,
        "met_verify": results["verify"]["receipts_per_s"] >= 20000,
    }
    return results
