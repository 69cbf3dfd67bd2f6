"""`charter bench serve`'s table: every figure, then each goal of issue 17 with met / not met."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from charter.cli._output import out, say
from charter.cli.sandbox import add_plain_row

__all__ = ["print_serve_bench", "print_workers_bench"]


def _met(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "NOT MET"


def _n(value: float | None, spec: str) -> str:
    """A figure formatted, or "-" where nothing was measured (None)."""
    return "-" if value is None else format(value, spec)


def _pair(values: dict[str, float | None], spec: str, first: str = "p50", second: str = "p99") -> str:
    return f"{_n(values[first], spec)} / {_n(values[second], spec)}"


def _figures(results: dict[str, Any]) -> list[tuple[str, str]]:
    governed, direct = results["governed"], results["direct"]
    cpu = governed["cpu_ms_per_request"]
    split = cpu["charter_serve"]
    audit = results["audit"]
    direct_cpu = direct["cpu_ms_per_request"]
    rows = [
        ("accepted requests", f"{governed['accepted']:,} in {governed['seconds']} s"),
        ("requests/s", _n(governed["requests_per_s"], ",.1f")),
        ("latency p50 / p99, ms", _pair(governed["latency_ms"], ".1f")),
        ("errors", str(governed["errors"])),
        ("refunds that lost a write race (412, nothing written)", str(governed["write_conflicts"])),
        ("charter serve CPU per request, ms", _n(split["process"], ".2f")),
    ]
    for name, ms in sorted(split["components"].items(), key=lambda item: -item[1]):
        rows.append((f"  {name}", f"{ms:.2f}"))
    rows += [
        ("orders service CPU per request, ms", _n(cpu["orders_service"], ".2f")),
        ("load generator CPU per request, ms", _n(cpu["load_generator"], ".2f")),
        (
            "audit log",
            f"{'verified' if audit['verified'] else 'FINDINGS'}, {audit['receipts']:,} receipts, "
            f"{audit['program_runs']:,} runs for {audit['expected_runs']:,} accepted, {audit['in_doubt']} in doubt",
        ),
        ("peer: direct GET on the orders service, requests/s", _n(direct["requests_per_s"], ",.1f")),
        (
            "peer: service / load generator CPU per direct GET, ms",
            _pair(direct_cpu, ".2f", "orders_service", "load_generator"),
        ),
    ]
    if "overload" in results:
        over = results["overload"]
        rss = over["rss_mib"]
        rows += [
            (
                f"overload ({over['clients']} clients, {over['seconds']} s): 200 / 503",
                f"{over['answered_200']:,} / {over['refused_503']:,}",
            ),
            ("overload: 200 latency p50 / p99, ms", _pair(over["accepted_latency_ms"], ".1f")),
            ("overload: 503 latency p50 / p99, ms", _pair(over["refused_latency_ms"], ".1f")),
            (
                "overload: Retry-After values (clients wait it)"
                if over["clients_honour_retry_after"]
                else "overload: Retry-After values (clients resend at once)",
                ", ".join(over["retry_after_values"]) or "-",
            ),
            (
                "server RSS base / peak, MiB",
                f"{rss['base']:.0f} / {rss['peak']:.0f} (bound {rss['bound']}: max runs {rss['max_runs']} x "
                f"{rss['run_memory_limit']} MiB)",
            ),
        ]
    server, machine = results["server"], results["machine"]
    rows += [
        ("charter serve --max-runs / --queue", f"{server['max_runs']} / {server['queue']}"),
        (
            "waited for the server to settle: at start / after warm-up, s",
            f"{server['settle_seconds_at_start']} / {server['settle_seconds_after_warm_up']}",
        ),
        ("machine: CPUs, load average before the bench", f"{machine['cpus']}, {machine['load_average_1m_before']}"),
    ]
    if "idle" in results:
        idle = results["idle"]
        busiest = max(idle["busiest_threads_wakeups_per_s"].values(), default=0.0)
        rows.append(
            (
                f"idle: server wake-ups/s ({idle['threads']} threads)",
                f"{idle['wakeups_per_s']:.1f} (busiest thread {busiest:.1f})",
            )
        )
    return rows


def print_serve_bench(results: dict[str, Any]) -> None:
    """The figures, then the goals table, then samples of any errors."""
    governed = results["governed"]
    table = Table(title=f"charter serve: {governed['clients']} clients for {governed['seconds']} s")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in _figures(results):
        add_plain_row(table, *row)
    out.print(table)
    goals = Table(title="issue 17 goals")
    for column in ("goal", "measure", "target", "value", ""):
        goals.add_column(column)
    for goal in results["goals"]:
        value = "-" if goal["value"] is None else str(goal["value"])
        add_plain_row(goals, goal["goal"], goal["measure"], goal["target"], value, _met(goal["met"]))
    out.print(goals)
    for phase in ("governed", "overload"):
        for sample in results.get(phase, {}).get("error_samples", []):
            say(f"{phase} error: {sample}", "red")


def print_workers_bench(results: dict[str, Any]) -> None:
    """One row per configuration (SQLite with one worker first), ratios against it, then samples of any errors."""
    machine = results["machine"]
    table = Table(
        title=f"charter serve --workers: {results['clients']} clients; {machine['cpus']} CPUs, load average "
        f"{machine['load_average_1m_before']} before"
    )
    for column in (
        "database",
        "workers",
        "requests/s",
        "x baseline",
        "CPU ms/request (all workers)",
        "x baseline",
        "p50 / p99 ms",
        "errors",
        "audit log",
    ):
        table.add_column(column, justify="left" if column in ("database", "audit log") else "right")
    for row in results["configurations"]:
        audit = row["audit"]
        checked = "verified" if audit["verified"] and audit["one_run_per_accepted_request"] else "NOT CLEAN"
        add_plain_row(
            table,
            row["database"],
            str(row["workers"]),
            _n(row["requests_per_s"], ",.1f"),
            _n(row["throughput_vs_baseline"], ".3g"),
            _n(row["cpu_ms_per_request"]["charter_serve"], ".2f"),
            _n(row["cpu_per_request_vs_baseline"], ".3g"),
            _pair(row["latency_ms"], ".1f"),
            str(row["errors"]),
            f"{checked}, {audit['program_runs']:,} runs for {audit['expected_runs']:,} accepted",
        )
    out.print(table)
    for row in results["configurations"]:
        for sample in row["error_samples"]:
            say(f"{row['database']} x {row['workers']} error: {sample}", "red")
