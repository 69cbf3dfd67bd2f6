"""`charter bench serve --workers N [--database URL]`: throughput and CPU per request of
`charter serve` with N worker processes, against SQLite with one worker, in one run.

Each configuration gets the same governed load as the serve bench's phase 1 (`clients`
keep-alive clients posting the program mix with an Idempotency-Key each for `seconds`) on
a fresh orders service and `charter serve --workers N` (a fresh CHARTER_HOME; on PostgreSQL
the one database, its audit log checked against every run accepted there so far). CPU per
request is the sum over the supervisor and its workers (/proc/<pid>/stat of each, read at the
window's edges; a worker that ended inside the window is an error), beside the orders
service's and the load generator's. Afterwards each log must verify clean and hold exactly one
sealed run per accepted request. A report, not a scaling goal: the machine's cores are shared
by the load generator, the orders service and the workers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from charter.bench._load import opened_clients, run_load
from charter.bench._procs import children, cpu_seconds, settle
from charter.bench.serve import (
    _HOST,
    _PROGRAMS,
    _judge,
    _latency,
    _per,
    _program_request,
    _rate,
    _Servers,
    _servers,
    _significant,
    _warm,
    audit_check,
)
from charter.server._admission import DEFAULT_MAX_RUNS, DEFAULT_QUEUE

__all__ = ["run_workers_bench"]


def _configurations(workers: list[int], database: str | None) -> list[tuple[str | None, int]]:
    """SQLite with one worker first (the baseline), then each N on `database` (SQLite if None)."""
    chosen: list[tuple[str | None, int]] = [(None, 1)]
    for count in workers:
        if (database, count) not in chosen:
            chosen.append((database, count))
    return chosen


def _process_tree(pid: int) -> list[int]:
    """The supervisor and its workers (or the one `charter serve` process and no worker)."""
    return [pid, *children(pid)]


def _serving(pid: int, workers: int) -> list[int]:
    """The processes that serve: the supervisor's workers, or the one `charter serve` process
    (waiting for the supervisor to have no child process would never end)."""
    return children(pid) if workers > 1 else [pid]


def _measure(servers: _Servers, clients: int, seconds: float) -> tuple[dict[str, Any], list[str]]:
    """The governed load on `servers`: figures and the accepted run ids."""
    connections = opened_clients(_HOST, servers.api_port, clients)
    readings: dict[str, Any] = {}

    def at_start() -> None:
        readings["pids"] = _process_tree(servers.api_pid)
        readings["serve"] = {pid: cpu_seconds(pid) for pid in readings["pids"]}
        readings["service"] = cpu_seconds(servers.service_pid)
        readings["own"] = os.times()

    result = run_load(connections, seconds, _program_request(servers.token, _PROGRAMS), at_start=at_start)
    own = os.times()
    service = cpu_seconds(servers.service_pid)
    serve_cpu, ended = 0.0, []
    for pid, before in readings["serve"].items():
        try:
            serve_cpu += cpu_seconds(pid) - before
        except FileNotFoundError:  # the process ended inside the window: its CPU is lost, and it is an error
            ended.append(pid)
    for connection in connections:
        connection.close()
    judged = _judge(result, _PROGRAMS, refusals=False)
    judged.errors += [f"worker process {pid} ended during the load" for pid in ended]
    accepted = len(judged.accepted_ids)
    attempted = len(result.replies) + len(result.failures)
    own_cpu = (own.user + own.system) - (readings["own"].user + readings["own"].system)
    figures = {
        "seconds": round(result.seconds, 2),
        "processes": len(readings["pids"]),
        "attempted": attempted,
        "accepted": accepted,
        "errors": len(judged.errors),
        "error_samples": judged.errors[:5],
        "write_conflicts": judged.conflicts,
        "requests_per_s": _rate(accepted, attempted, result.seconds),
        "latency_ms": _latency(judged.latencies),
        "cpu_ms_per_request": {
            "charter_serve": _per(serve_cpu * 1000, accepted, 2),
            "orders_service": _per((service - readings["service"]) * 1000, accepted, 2),
            "load_generator": _per(own_cpu * 1000, accepted, 2),
        },
    }
    return figures, judged.accepted_ids


def _ratio(value: float | None, base: float | None) -> float | None:
    return _significant(value / base, 3) if value is not None and base else None


def run_workers_bench(
    workers: list[int],
    *,
    database: str | None = None,
    clients: int = 32,
    seconds: float = 30.0,
    max_runs: int | None = None,
    queue: int | None = None,
    home: Path | None = None,
) -> dict[str, Any]:
    """The figures of each configuration (see the module) as one JSON-able dict:
    {"machine", "clients", "configurations": [{database, workers, governed figures, audit,
    throughput_vs_baseline, cpu_per_request_vs_baseline}]}, the first being SQLite with one
    worker. `database`: a postgresql:// URL for the configurations with `workers` (default:
    SQLite for them too). `home`: a folder to keep each configuration's files in (default: a
    temporary one)."""
    if home is None:
        with tempfile.TemporaryDirectory(prefix="charter-bench-workers-") as scratch:
            return run_workers_bench(
                workers,
                database=database,
                clients=clients,
                seconds=seconds,
                max_runs=max_runs,
                queue=queue,
                home=Path(scratch),
            )
    runs = DEFAULT_MAX_RUNS if max_runs is None else max_runs
    waiting = DEFAULT_QUEUE if queue is None else queue
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_average_1m_before": round(os.getloadavg()[0], 2)},
        "clients": clients,
        "max_runs_per_worker": runs,
        "queue_per_worker": waiting,
        "configurations": [],
    }
    accepted_in: dict[str | None, list[str]] = {}  # per PostgreSQL database: every run accepted there so far
    token_in: dict[str, str] = {}  # the token added to a PostgreSQL database by its first configuration
    for index, (url, count) in enumerate(_configurations(workers, database)):
        # One home for a PostgreSQL database's configurations: its log is checked whole, with the
        # keys its workers signed with (keys/ in the home), so they must all sign with the same ones.
        folder = home / ("postgresql" if url else f"{index}-sqlite-{count}")
        folder.mkdir(parents=True, exist_ok=True)
        token = token_in.get(url) if url is not None else None
        with _servers(folder, runs, waiting, workers=count, database=url, token=token) as servers:
            if url is not None:
                token_in[url] = servers.token
            for pid in _serving(servers.api_pid, count):
                settle(pid)
            expected = []
            for _ in range(count):  # each worker's sandbox and connections warmed (the kernel spreads them)
                expected += _warm(servers, _PROGRAMS)
            for pid in _serving(servers.api_pid, count):
                settle(pid)
            governed, accepted = _measure(servers, clients, seconds)
            expected += accepted
        if url is None:
            audit = audit_check(folder / "audit.db", expected)
        else:
            accepted_in.setdefault(url, []).extend(expected)
            audit = audit_check(folder / "audit.db", accepted_in[url], database=url)
        results["configurations"].append(
            {"database": "postgresql" if url else "sqlite", "workers": count, **governed, "audit": audit}
        )
    base = results["configurations"][0]
    for configuration in results["configurations"]:
        configuration["throughput_vs_baseline"] = _ratio(configuration["requests_per_s"], base["requests_per_s"])
        configuration["cpu_per_request_vs_baseline"] = _ratio(
            configuration["cpu_ms_per_request"]["charter_serve"], base["cpu_ms_per_request"]["charter_serve"]
        )
    return results
