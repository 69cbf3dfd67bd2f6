"""`charter bench serve`: the HTTP API under load, over the HTTP-bound orders contract.

Three processes, as in production: the orders service (SQLite), `charter serve` (the API,
sandbox, gate, audit log; started with CHARTER_PROFILE so SIGUSR1 reports where its CPU
went, and with `--max-runs`/`--queue` when given), and this one, whose client threads post
programs with a bearer token and an Idempotency-Key each (`charter.bench._load`: http.client
connections opened before the window and kept alive). The program mix: half reads, a
quarter refunds of 0.01 (verified first: two reads and a write over HTTP), a quarter
cancellations the contract refuses (a dispatched order: a denial with its state read).

Phases, each measuring issue 17's goals:
1. governed (goal 1, 2): `clients` clients for `seconds`. CPU per accepted request of
   `charter serve` (profile snapshots at the window's edges: process CPU and the split per
   component, the rest "framework (unclaimed)"), of the orders service and of this process;
   requests/s, p50/p99, errors (any non-200, transport error, or run status the program
   cannot end in).
2. direct (goal 2's peer): the same number of clients GET one order from the service.
3. idle (goal 6): after a settling pause, `idle_seconds` without traffic: the server's CPU
   share of one core and its threads' wake-ups per second.
4. overload (goal 5): `overload_clients` clients for `overload_seconds`, the bench mix plus
   one program in five allocating `overload_alloc_mib` MiB: 200s vs 503 `overloaded` (with
   Retry-After, and how fast), anything else an error; the server's peak RSS against base +
   max runs x the run's memory limit. A client told 503 waits its Retry-After (unless told
   not to): 256 threads resending at once would spend the shared cores on the generator and
   on refusals, and time the generator's own GIL queue as refusal latency.
Afterwards the audit log must verify clean and hold exactly the runs of the accepted
requests (their run ids, one each, sealed) and no other program run.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from charter.bench._load import LoadResult, Reply, Request, opened_clients, run_load
from charter.bench._procs import cpu_seconds, peak_rss_bytes, rss_bytes, settle, snapshot_profile, thread_switches
from charter.errors import CharterError

__all__ = ["UNCLAIMED", "BenchFailed", "audit_check", "run_serve_bench"]

_ROOT = Path(__file__).resolve().parents[3]
_MIB = 1 << 20
_HOST = "127.0.0.1"
UNCLAIMED = "framework (unclaimed)"  # process CPU no charter._profile section claims
_SETTLE_SECONDS = 2.0  # before the idle phase: let the last requests' background work finish
_STDERR_LINES = 10  # of a process that exits or does not answer, shown in the error


class BenchFailed(CharterError):
    """The bench could not run: a process it started exited or did not answer (the message
    holds the last lines of its stderr), or a warm-up request failed."""


@dataclass(frozen=True)
class _Program:
    """A program of the mix, the run statuses it may end in, and whether it may fail on a write
    conflict: refunds of one order race each other, and the service refuses a refund whose
    order changed after the gate checked it (412, "nothing was written"), which is correct."""

    text: str
    statuses: frozenset[str]
    may_conflict: bool = False


_CONFLICT = "changed after the gate checked it"

# A refund ends refused once the order's total is refunded (29,996 refunds away); any other
# ending (failed, in_doubt...) is an error.
_PROGRAMS = [
    _Program("o = orders.get_order(id=102)\nconclude(o.status)", frozenset({"done"})),
    _Program(
        'c = orders.verify_refund(id=125)\no = orders.refund_order(id=125, amount=Decimal("0.01"), reason="goodwill")\n'
        "conclude(str(o.refunded))",
        frozenset({"done", "refused"}),
        may_conflict=True,
    ),
    _Program("o = orders.get_order(id=104)\nconclude(o.status)", frozenset({"done"})),
    _Program(
        'try:\n    orders.cancel_order(id=123, reason="bench")\nexcept ContractViolation as denied:\n'
        "    refuse(denied.reason)",
        frozenset({"refused"}),
    ),
]


def _allocating(mib: int) -> _Program:
    """A program that holds `mib` MiB of its linear memory (bytes it writes) while it reads an order."""
    return _Program(
        f"blob = b'x' * ({mib} * 1024 * 1024)\no = orders.get_order(id=102)\nconclude(f'{{len(blob)}} {{o.status}}')",
        frozenset({"done"}),
    )


@dataclass(frozen=True)
class _Servers:
    home: Path
    api_port: int
    api_pid: int
    service_port: int
    service_pid: int
    profile: Path
    token: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((_HOST, 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection(_HOST, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _stderr_tail(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()[-_STDERR_LINES:]
    return "; its stderr ended:\n" + "\n".join(f"  {line}" for line in lines) if lines else " (its stderr is empty)"


def start_orders_service(port: int, env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    """The example orders service on 127.0.0.1:`port`, seeded, its stderr kept in `stderr` (for
    the error should it exit at start: `_wait`)."""
    with stderr.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "examples.orders.service", "--port", str(port), "--seed"],
            cwd=_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )


def _wait(url: str, process: subprocess.Popen[bytes], what: str, stderr: Path) -> None:
    """Until `url` (http://127.0.0.1:PORT/PATH) answers. BenchFailed, with the last lines of
    the process's `stderr` file, if it exits first or does not answer in time."""
    parts = urlsplit(url)
    deadline = time.monotonic() + 180  # the first start may build the sandbox component
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchFailed(f"{what} exited with status {process.returncode} before answering{_stderr_tail(stderr)}")
        try:
            _get(parts.port or 80, parts.path or "/")
            return
        except OSError:
            time.sleep(0.2)
    raise BenchFailed(f"{what} did not answer at {url} within 180 s{_stderr_tail(stderr)}")


# `charter serve` with charter._profile's SIGUSR1 handler installed before the CLI runs, so
# the snapshot works whether or not the server installs it itself (installing twice is harmless).
_SERVE = "from charter._profile import install_signal; install_signal(); from charter.cli import main; main()"


@contextmanager
def _servers(
    home: Path, max_runs: int, queue: int, *, workers: int = 1, database: str | None = None, token: str | None = None
) -> Iterator[_Servers]:
    """The orders service and `charter serve` (with `--workers N` above 1) over the stores in
    `home`, or in the PostgreSQL `database` (the contract published and the token added through
    `charter` itself unless `token` says they are there from an earlier run)."""
    from charter.db import DATABASE_ENV

    profile = home / "profile.json"
    env = {**os.environ, "CHARTER_HOME": str(home), "CHARTER_ORDERS_DB": str(home / "orders.db")}
    env.pop("CHARTER_PROFILE", None)
    env.pop(DATABASE_ENV, None)
    if database is not None:
        env[DATABASE_ENV] = database
    service_port, api_port = _free_port(), _free_port()
    env["CHARTER_SERVICE_ORDERS_URL"] = f"http://{_HOST}:{service_port}"
    if token is None:
        token = _published(home, env)
    limits = ["--max-runs", str(max_runs), "--queue", str(queue)]
    if workers > 1:
        limits += ["--workers", str(workers)]
    # Each process's stderr goes to a file under `home`, for the error if it exits at start.
    service_stderr, api_stderr = home / "orders-service.stderr", home / "charter-serve.stderr"
    service = start_orders_service(service_port, env, service_stderr)
    with api_stderr.open("wb") as errors:
        api = subprocess.Popen(
            [sys.executable, "-c", _SERVE, "serve", f"{_HOST}:{api_port}", *limits],
            cwd=_ROOT,
            env={**env, "CHARTER_PROFILE": str(profile)},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        _wait(f"http://{_HOST}:{service_port}/orders/102", service, "the orders service", service_stderr)
        _wait(f"http://{_HOST}:{api_port}/openapi.json", api, "charter serve", api_stderr)
        yield _Servers(home, api_port, api.pid, service_port, service.pid, profile, token)
    finally:
        for process in (api, service):
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_SCOPES = ["orders:read", "orders:write", "orders:refund"]


def _published(home: Path, env: dict[str, str]) -> str:
    """The orders contract published and a token added where `env` puts the stores (the SQLite
    files under `home`, or the PostgreSQL database of its CHARTER_DATABASE_URL); the token."""
    from charter.contract import load_contract
    from charter.db import DATABASE_ENV, Database
    from charter.registry import Registry
    from charter.server import TokenStore

    path = _ROOT / "contracts" / "orders.yaml"
    database = Database.from_env(home, url=env.get(DATABASE_ENV, ""))
    Registry(database=database).publish(load_contract(path), path.read_text(encoding="utf-8"))
    return TokenStore(home / "tokens.yaml", database=database).add("bench", "bench", _SCOPES)


def _percentile(samples: list[float], share: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _latency(samples: list[float]) -> dict[str, float | None]:
    """p50 and p99 in ms; None (not measured) without samples, never a 0 that could meet a goal."""
    if not samples:
        return {"p50": None, "p99": None}
    return {"p50": round(_percentile(samples, 0.50), 1), "p99": round(_percentile(samples, 0.99), 1)}


def _per(total: float, count: int, digits: int) -> float | None:
    """`total` per one of `count` (a CPU share per request, a rate per second), or None when
    there were none: a figure from zero samples is not measured, not 0."""
    return round(total / count, digits) if count > 0 else None


def _significant(value: float, digits: int) -> float:
    """`value` to `digits` significant digits (within half a unit of the last, 0.5% at 3 digits).
    A small ratio rounded to decimal places loses its precision (0.03748 to 3 places is 0.037,
    1.3% off)."""
    return float(f"{value:.{digits}g}")


def _rate(count: int, attempted: int, seconds: float) -> float | None:
    """`count` a second, or None if nothing was attempted (no client or no time): an empty
    phase is not measured, where requests that all failed are a real 0."""
    return round(count / seconds, 1) if attempted > 0 and seconds > 0 else None


def _program_request(token: str, programs: list[_Program]) -> Any:
    bodies = [
        json.dumps({"contract": "orders", "program": "from decimal import Decimal\n" + p.text}).encode()
        for p in programs
    ]
    auth = f"Bearer {token}"

    def request_for(n: int) -> Request:
        headers = {"Authorization": auth, "Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
        return Request("POST", "/v1/programs", bodies[n % len(bodies)], headers)

    return request_for


@dataclass
class _Judged:
    """Replies sorted: the run ids of 200s (accepted), their latencies, and errors (samples kept)."""

    accepted_ids: list[str]
    latencies: list[float]
    refused: list[Reply]  # 503 overloaded
    errors: list[str]
    statuses: Counter[str]
    conflicts: int = 0


def _judge(result: LoadResult, programs: list[_Program], *, refusals: bool) -> _Judged:
    judged = _Judged([], [], [], [f"transport: {problem}" for _, problem in result.failures], Counter())
    for reply in result.replies:
        if reply.status == 200:
            body = json.loads(reply.body)
            judged.accepted_ids.append(body["run_id"])
            judged.latencies.append(reply.latency_ms)
            judged.statuses[body["status"]] += 1
            program = programs[reply.n % len(programs)]
            if body["status"] in program.statuses:
                continue
            if body["status"] == "failed" and program.may_conflict and _CONFLICT in str(body.get("reason")):
                judged.conflicts += 1
            else:
                judged.errors.append(f"200 with run status {body['status']}: {body.get('reason')}")
        elif refusals and reply.status == 503 and _problem_type(reply.body) == "overloaded":
            judged.refused.append(reply)
        else:
            judged.errors.append(f"{reply.status} {reply.body[:200].decode(errors='replace')}")
    return judged


def _problem_type(body: bytes) -> str:
    try:
        kind = json.loads(body).get("type", "")
    except (ValueError, AttributeError):
        return ""
    return str(kind).rpartition(":")[2]


def _cpu_split(before: dict[str, Any], after: dict[str, Any], accepted: int) -> dict[str, Any]:
    """ms of `charter serve` CPU per accepted request: the process, each component, the rest
    (process None and no components if none was accepted: not measured)."""
    if accepted == 0:
        return {"process": None, "components": {}, "sections_per_request": {}}
    per = 1000.0 / accepted
    process = (after["process_cpu_s"] - before["process_cpu_s"]) * per
    names = sorted(set(after["components_s"]) | set(before["components_s"]))
    components = {n: (after["components_s"].get(n, 0.0) - before["components_s"].get(n, 0.0)) * per for n in names}
    counts = {n: (after["counts"].get(n, 0) - before["counts"].get(n, 0)) / max(accepted, 1) for n in names}
    components[UNCLAIMED] = process - sum(components.values())
    return {
        "process": round(process, 2),
        "components": {n: round(v, 3) for n, v in components.items()},
        "sections_per_request": {n: round(v, 2) for n, v in counts.items()},
    }


def audit_check(log_path: Path, expected_run_ids: list[str], *, database: str | None = None) -> dict[str, Any]:
    """The audit log (at `log_path`, or in the PostgreSQL `database`) against the accepted
    requests: it must verify clean and hold exactly one sealed program run per expected run id
    and no other program run. `one_run_per_accepted_request` is False on any run missing,
    unexpected, unsealed, or an id accepted twice."""
    from charter.audit import AuditLog, Opened, verify_log
    from charter.db import Database

    # On PostgreSQL the home still holds the keys the workers signed with (keys/).
    where = Database.parse(database, home=log_path.parent) if database is not None else None
    log = AuditLog(database=where) if where is not None else AuditLog(log_path)
    runs = [r for r in log.runs() if isinstance(r.opened, Opened)]
    logged = Counter(r.run_id for r in runs)
    expected = Counter(expected_run_ids)
    missing = sorted((expected - logged).elements())
    unexpected = sorted((logged - expected).elements())
    unsealed = sum(1 for r in runs if r.sealed is None)
    repeated = sorted(i for i, n in expected.items() if n > 1)
    report = verify_log(log, log.trusted_keys())
    return {
        "program_runs": len(runs),
        "expected_runs": len(expected_run_ids),
        "missing": len(missing),
        "unexpected": len(unexpected),
        "unsealed": unsealed,
        "accepted_twice": len(repeated),
        "samples": (missing + unexpected + repeated)[:5],
        "one_run_per_accepted_request": not (missing or unexpected or unsealed or repeated),
        "verified": report.ok,
        "receipts": report.receipts,
        "findings": [str(f) for f in report.findings[:5]],
        "in_doubt": len(report.in_doubt),
    }


def _warm(servers: _Servers, programs: list[_Program]) -> list[str]:
    """One request per program (sandbox pool, connections, caches), their run ids."""
    request_for = _program_request(servers.token, programs)
    client = opened_clients(_HOST, servers.api_port, 1)[0]
    ids = []
    try:
        for n in range(len(programs)):
            status, body, _ = client.send(request_for(n))
            if status != 200:
                raise BenchFailed(f"a warm-up request failed: {status} {body[:300].decode(errors='replace')}")
            ids.append(json.loads(body)["run_id"])
    finally:
        client.close()
    return ids


def _governed(servers: _Servers, clients: int, seconds: float) -> tuple[dict[str, Any], list[str]]:
    """Goal 1 and the governed half of goal 2. Returns the figures and the accepted run ids."""
    connections = opened_clients(_HOST, servers.api_port, clients)
    readings: dict[str, Any] = {}

    def at_start() -> None:
        readings["profile"] = snapshot_profile(servers.api_pid, servers.profile)
        readings["service"] = cpu_seconds(servers.service_pid)
        readings["own"] = os.times()

    result = run_load(connections, seconds, _program_request(servers.token, _PROGRAMS), at_start=at_start)
    own = os.times()
    service = cpu_seconds(servers.service_pid)
    profile = snapshot_profile(servers.api_pid, servers.profile)
    for connection in connections:
        connection.close()
    judged = _judge(result, _PROGRAMS, refusals=False)
    accepted = len(judged.accepted_ids)
    attempted = len(result.replies) + len(result.failures)
    own_cpu = (own.user + own.system) - (readings["own"].user + readings["own"].system)
    p50, p99 = _percentile(judged.latencies, 0.5), _percentile(judged.latencies, 0.99)
    figures = {
        "clients": clients,
        "seconds": round(result.seconds, 2),
        "attempted": attempted,
        "accepted": accepted,
        "errors": len(judged.errors),
        "error_samples": judged.errors[:5],
        "run_statuses": dict(judged.statuses),
        "write_conflicts": judged.conflicts,
        "reconnects": result.reconnects,
        "requests_per_s": _rate(accepted, attempted, result.seconds),
        "latency_ms": _latency(judged.latencies),
        "p99_over_p50": round(p99 / p50, 2) if p50 else None,
        "cpu_ms_per_request": {
            "charter_serve": _cpu_split(readings["profile"], profile, accepted),
            "orders_service": _per((service - readings["service"]) * 1000, accepted, 2),
            "load_generator": _per(own_cpu * 1000, accepted, 2),
        },
    }
    return figures, judged.accepted_ids


def _direct(servers: _Servers, clients: int, seconds: float) -> dict[str, Any]:
    """Goal 2's peer: the same clients calling the orders service directly (GET one order)."""
    connections = opened_clients(_HOST, servers.service_port, clients)
    request = Request("GET", "/orders/102", None, {})
    readings: dict[str, Any] = {}

    def at_start() -> None:
        readings["service"] = cpu_seconds(servers.service_pid)
        readings["own"] = os.times()

    result = run_load(connections, seconds, lambda n: request, at_start=at_start, keep_bodies=False)
    own = os.times()
    service = cpu_seconds(servers.service_pid)
    for connection in connections:
        connection.close()
    ok = [r.latency_ms for r in result.replies if r.status == 200]
    attempted = len(result.replies) + len(result.failures)
    errors = len(result.replies) - len(ok) + len(result.failures)
    own_cpu = (own.user + own.system) - (readings["own"].user + readings["own"].system)
    return {
        "clients": clients,
        "seconds": round(result.seconds, 2),
        "attempted": attempted,
        "requests_per_s": _rate(len(ok), attempted, result.seconds),
        "latency_ms": _latency(ok),
        "errors": errors,
        "cpu_ms_per_request": {
            "orders_service": _per((service - readings["service"]) * 1000, len(ok), 3),
            "load_generator": _per(own_cpu * 1000, len(ok), 3),
        },
    }


def _idle(servers: _Servers, seconds: float) -> dict[str, Any]:
    """Goal 6: the server's CPU share of one core with no traffic, and who wakes up."""
    time.sleep(_SETTLE_SECONDS)
    cpu, switches = cpu_seconds(servers.api_pid), thread_switches(servers.api_pid)
    started = time.perf_counter()
    time.sleep(seconds)
    cpu_after, switches_after = cpu_seconds(servers.api_pid), thread_switches(servers.api_pid)
    elapsed = time.perf_counter() - started
    wakeups = {name: (n - switches.get(name, 0)) / elapsed for name, n in switches_after.items()}
    busiest = sorted(wakeups.items(), key=lambda item: -item[1])[:5]
    return {
        "seconds": round(elapsed, 2),
        "cpu_share_of_core": round((cpu_after - cpu) / elapsed, 4),
        "threads": len(switches_after),
        "wakeups_per_s": round(sum(wakeups.values()), 1),
        "busiest_threads_wakeups_per_s": {name: round(rate, 1) for name, rate in busiest},
    }


def _overload(
    servers: _Servers, clients: int, seconds: float, alloc_mib: int, *, honour_retry_after: bool
) -> tuple[dict[str, Any], list[str], int]:
    """Goal 5: (figures, accepted run ids, peak RSS sampled in the phase)."""
    programs = [*_PROGRAMS, _allocating(alloc_mib)] if alloc_mib else list(_PROGRAMS)
    connections = opened_clients(_HOST, servers.api_port, clients)
    sampled = [0]
    done = threading.Event()

    def sample_rss() -> None:  # 20 readings a second: the kernel's VmHWM is the exact peak
        while not done.wait(0.05):
            sampled[0] = max(sampled[0], rss_bytes(servers.api_pid))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    try:
        request_for = _program_request(servers.token, programs)
        result = run_load(connections, seconds, request_for, honour_retry_after=honour_retry_after)
    finally:
        done.set()
        sampler.join()
        for connection in connections:
            connection.close()
    judged = _judge(result, programs, refusals=True)
    refused_latencies = [r.latency_ms for r in judged.refused]
    retry_after = Counter(r.retry_after for r in judged.refused)
    figures = {
        "clients": clients,
        "seconds": round(result.seconds, 2),
        "allocating_program_mib": alloc_mib,
        "clients_honour_retry_after": honour_retry_after,
        "attempted": len(result.replies) + len(result.failures),
        "answered_200": len(judged.accepted_ids),
        "refused_503": len(judged.refused),
        "errors": len(judged.errors),
        "error_samples": judged.errors[:5],
        "run_statuses": dict(judged.statuses),
        "write_conflicts": judged.conflicts,
        "reconnects": result.reconnects,
        "accepted_latency_ms": _latency(judged.latencies),
        "refused_latency_ms": _latency(refused_latencies),
        # Retry-After must be delta-seconds (RFC 9110 10.2.3; an HTTP-date is allowed but not sent here).
        "refused_without_retry_after": sum(n for v, n in retry_after.items() if v is None or not v.isdigit()),
        "retry_after_values": sorted((v for v in retry_after if v is not None), key=lambda v: (len(v), v)),
    }
    return figures, judged.accepted_ids, sampled[0]


def _met(value: float | None, limit: float, *, at_most: bool) -> bool | None:
    if value is None:
        return None
    return value <= limit if at_most else value >= limit


def _zero(count: int, measured: bool) -> bool | None:
    """A count whose goal is 0 (errors, 503s without Retry-After): met only if something was measured."""
    return count == 0 if measured else None


def _goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 17 this bench measures: its measure, target, value and met. A goal
    measured on nothing (no request accepted, no time, a skipped phase) has value None and met
    None (not measured), never met."""
    governed, overload, idle = results["governed"], results.get("overload"), results.get("idle")
    cpu = governed["cpu_ms_per_request"]["charter_serve"]["process"]
    audit = results["audit"]
    ratio = results["governed_over_direct_throughput"]
    tried = governed["attempted"] > 0
    goals = [
        ("1", "charter serve CPU per request, ms", "<= 10 (stretch 8)", cpu, _met(cpu, 10, at_most=True)),
        ("2", "governed / direct throughput", ">= 0.3", ratio, _met(ratio, 0.3, at_most=False)),
        ("2", "p99 / p50", "<= 3", governed["p99_over_p50"], _met(governed["p99_over_p50"], 3, at_most=True)),
        ("2", "errors", "0", governed["errors"] if tried else None, _zero(governed["errors"], tried)),
        (
            "2",
            "audit verifies, exactly one run per accepted request",
            "yes",
            "yes" if audit["verified"] and audit["one_run_per_accepted_request"] else "NO",
            audit["verified"] and audit["one_run_per_accepted_request"],
        ),
    ]
    # A skipped overload phase (or one that sent nothing) measures none of goal 5.
    over: dict[str, Any] = overload if overload is not None and overload["attempted"] > 0 else {}
    refused = bool(over) and over["refused_503"] > 0
    errors = over["errors"] if over else None
    bare = over["refused_without_retry_after"] if refused else None
    refused_p99 = over["refused_latency_ms"]["p99"] if refused else None
    bound = f"{over['rss_mib']['bound']} (base + max runs x run memory)" if over else "base + max runs x run memory"
    peak = over["rss_mib"]["peak"] if over else None
    goals += [
        ("5", "overload: errors (neither 200 nor 503 overloaded)", "0", errors, _zero(errors or 0, bool(over))),
        ("5", "overload: 503s without Retry-After (seconds)", "0", bare, _zero(bare or 0, refused)),
        # "Quickly": a refusal within 100 ms, against seconds for a run waiting in a queue.
        ("5", "overload: 503 latency p99, ms", "<= 100", refused_p99, _met(refused_p99, 100, at_most=True)),
        (
            "5",
            "overload: peak RSS, MiB",
            f"<= {bound}",
            peak,
            _met(peak, over["rss_mib"]["bound"], at_most=True) if over else None,
        ),
    ]
    share = round(idle["cpu_share_of_core"] * 100, 2) if idle is not None else None
    goals.append(("6", "idle: CPU, % of one core", "< 0.5", share, None if share is None else share < 0.5))
    return [{"goal": g, "measure": m, "target": t, "value": v, "met": ok} for g, m, t, v, ok in goals]


def run_serve_bench(
    clients: int = 32,
    seconds: float = 30.0,
    peer_seconds: float = 5.0,
    *,
    max_runs: int | None = None,
    queue: int | None = None,
    overload_clients: int = 256,
    overload_seconds: float = 10.0,
    overload_alloc_mib: int = 64,
    honour_retry_after: bool = True,
    idle_seconds: float = 10.0,
    home: Path | None = None,
) -> dict[str, Any]:
    """Every figure of the bench as one JSON-able dict (see the module's docstring), with
    "goals": [{goal, measure, target, value, met}]. `overload_clients` or `idle_seconds` 0
    skips that phase. `max_runs`, `queue`: `charter serve`'s flags (default: its defaults).
    `honour_retry_after`: an overload client told 503 waits its Retry-After before trying again
    (False: it resends at once, a retry storm whose cost lands on the same two cores).
    `home`: the CHARTER_HOME to use and keep (default: a temporary one)."""
    from charter.contract import load_contract
    from charter.server._admission import DEFAULT_MAX_RUNS, DEFAULT_QUEUE

    if home is None:
        with tempfile.TemporaryDirectory(prefix="charter-bench-serve-") as scratch:
            return run_serve_bench(
                clients,
                seconds,
                peer_seconds,
                max_runs=max_runs,
                queue=queue,
                overload_clients=overload_clients,
                overload_seconds=overload_seconds,
                overload_alloc_mib=overload_alloc_mib,
                honour_retry_after=honour_retry_after,
                idle_seconds=idle_seconds,
                home=Path(scratch),
            )
    memory_mib = load_contract(_ROOT / "contracts" / "orders.yaml").model.limits.memory_mib
    results: dict[str, Any] = {
        # Others' work on the same cores moves every figure: the load before the bench says how much.
        "machine": {"cpus": os.cpu_count(), "load_average_1m_before": round(os.getloadavg()[0], 2)},
        "load_generator": "threads, one http.client keep-alive connection each, opened before the window",
    }
    runs = DEFAULT_MAX_RUNS if max_runs is None else max_runs
    waiting = DEFAULT_QUEUE if queue is None else queue
    results["server"] = {"max_runs": runs, "queue": waiting}
    with _servers(home, runs, waiting) as servers:
        # A server may build (a baked component in a subprocess) or load at start; none of it is a request's cost.
        results["server"]["settle_seconds_at_start"] = round(settle(servers.api_pid), 1)
        expected = _warm(servers, _PROGRAMS)
        results["server"]["settle_seconds_after_warm_up"] = round(settle(servers.api_pid), 1)
        base_rss = rss_bytes(servers.api_pid)
        results["governed"], accepted = _governed(servers, clients, seconds)
        expected += accepted
        results["direct"] = _direct(servers, clients, peer_seconds)
        if idle_seconds > 0:
            results["idle"] = _idle(servers, idle_seconds)
        if overload_clients > 0:
            overload, accepted, sampled = _overload(
                servers, overload_clients, overload_seconds, overload_alloc_mib, honour_retry_after=honour_retry_after
            )
            expected += accepted
            peak = peak_rss_bytes(servers.api_pid)
            bound = base_rss + runs * memory_mib * _MIB
            overload["rss_mib"] = {
                "base": round(base_rss / _MIB, 1),
                "peak": round(peak / _MIB, 1),
                "peak_sampled_in_phase": round(sampled / _MIB, 1),
                "max_runs": runs,
                "run_memory_limit": memory_mib,
                "bound": round(bound / _MIB, 1),
            }
            results["overload"] = overload
    results["audit"] = audit_check(home / "audit.db", expected)
    direct, governed = results["direct"]["requests_per_s"], results["governed"]["requests_per_s"]
    ratio = governed / direct if governed is not None and direct else None
    results["governed_over_direct_throughput"] = _significant(ratio, 3) if ratio is not None else None
    results["goals"] = _goals(results)
    return results
