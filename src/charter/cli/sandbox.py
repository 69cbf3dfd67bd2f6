"""`charter sandbox ...` and `charter bench sandbox`."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from charter.cli._output import fail, out, print_json, say
from charter.errors import CharterError

app = typer.Typer(help="Build and inspect the Wasm sandbox.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: figures from this machine, with peers as ratios.", no_args_is_help=True)


@app.command()
def build(
    contract: Annotated[
        list[str] | None,
        typer.Option(
            "--contract",
            metavar="NAME[@VERSION]",
            help="Also bake this published contract's component now (repeatable), as `charter serve` "
            "does in the background at start.",
        ),
    ] = None,
) -> None:
    """Build the sandbox component and its native code now, instead of on first use."""
    from charter.registry import Registry, parse_ref
    from charter.sandbox import Sandbox, cache_root, ensure_built

    try:
        files = ensure_built(progress=say)
        sandbox = Sandbox(pool_size=0, progress=say)  # compiles and caches the native code
        registry = Registry() if contract else None
        for ref in contract or ():
            assert registry is not None
            compiled = registry.get(*parse_ref(ref))
            report = sandbox.bake(compiled).result()
            built = f"built in {report.build_seconds:.1f} s" if report.build_seconds else "already built"
            say(f"Baked {compiled.name}@{compiled.version}: {built}, {report.native_bytes / 2**20:.1f} MiB native code")
    except CharterError as error:
        fail(error)
    say(f"Sandbox component ready: {files.wasm} (cache: {cache_root()})")


def add_plain_row(table: Table, *cells: str) -> None:
    """A row whose cells are shown as written: a bracket in one (`pip install -e '.[bench]'`)
    would be read as rich markup by `Table.add_row` and vanish."""
    table.add_row(*(Text(cell) for cell in cells))


def _refuse_below(option: str, value: float, least: float, most: float | None = None) -> None:
    """A one-line usage error (exit 1) unless `least` <= `value` (<= `most`), finite: before
    anything starts, so a bad option never reaches a server or a division by zero."""
    if math.isfinite(value) and value >= least and (most is None or value <= most):
        return
    accepted = f"at least {least:g}" if most is None else f"from {least:g} to {most:g}"
    kind = "" if isinstance(value, int) else "a finite number "
    fail(f"{option} must be {kind}{accepted} (got {value:g})")


def _ms(value: float) -> str:
    return f"{value:.3f} ms"


def baked_rows(baked: dict[str, Any]) -> list[tuple[str, str]]:
    """The baked component's rows of `charter bench sandbox` (issue 17, goal 4: back to back p50 <= 2.5 ms)."""
    back_to_back = baked["fresh_run_back_to_back"]
    met = "met" if back_to_back["p50_ms"] <= 2.5 else "not met"
    return [
        ("baked component: fresh run, spaced, p50", _ms(baked["fresh_run"]["p50_ms"])),
        (f"baked: back to back, p50 (goal 2.5 ms: {met})", _ms(back_to_back["p50_ms"])),
        ("baked: back to back, process CPU per run", _ms(back_to_back["process_cpu_ms_per_run"])),
        ("baked: back to back, no pool at all, p50", _ms(baked["fresh_run_drained"]["p50_ms"])),
        ("baked: build time (componentize-py + native code)", f"{baked['build_s']:.1f} s"),
        ("baked: build peak RSS", f"{baked['build_peak_rss_mib']:.0f} MiB"),
        ("baked: native code on disk / load time", f"{baked['native_mib']:.1f} MiB / {baked['load_ms']:.0f} ms"),
        ("baked: RSS per loaded component", f"{baked['rss_per_loaded_component_mib']:.1f} MiB"),
    ]


def peers_table(peers: dict[str, dict[str, Any]]) -> Table:
    """`charter bench sandbox`'s peers: their figures and ratios, or why one was skipped."""
    table = Table(title="Peers (ratio = peer / Charter; above 1 means Charter is faster)")
    for column in ("peer", "fresh run p50", "host call", "1M loop", "ratios"):
        table.add_column(column)
    for name, figures in peers.items():
        if "skipped" in figures:
            add_plain_row(table, name, figures["skipped"], "", "", "")
            continue
        ratios: dict[str, Any] = figures["ratio_to_charter"]
        add_plain_row(
            table,
            name,
            _ms(figures["fresh_run"]["p50_ms"]),
            _ms(figures["host_call_ms"]) if "host_call_ms" in figures else "-",
            f"{figures['cpu_loop_s']:.3f} s" if "cpu_loop_s" in figures else "-",
            ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()),
        )
    return table


@bench_app.command("sandbox")
def bench_sandbox(
    runs: Annotated[int, typer.Option(help="Samples for latency percentiles.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Fresh-run latency, host-call cost, CPU ratio, memory and cold start, against peers."""
    from charter.bench import run_sandbox_bench

    _refuse_below("--runs", runs, 1)  # percentiles of no samples are not figures
    results = run_sandbox_bench(runs)
    if as_json:
        print_json(results)
        return
    charter = results["charter"]
    table = Table(title="Charter sandbox", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("fresh isolated run, trivial program, p50", _ms(charter["fresh_run"]["p50_ms"])),
        ("fresh isolated run, trivial program, p99", _ms(charter["fresh_run"]["p99_ms"])),
        ("same, requests back to back, p50", _ms(charter["fresh_run_back_to_back"]["p50_ms"])),
        ("same, back to back, process CPU per run", _ms(charter["fresh_run_back_to_back"]["process_cpu_ms_per_run"])),
        ("same, back to back, no pool at all, p50", _ms(charter["fresh_run_drained"]["p50_ms"])),
        *baked_rows(charter["baked"]),
        ("host call round trip", _ms(charter["host_call_ms"])),
        ("1,000,000-iteration loop", f"{charter['cpu_loop_s']:.3f} s"),
        (
            "same loop, native CPython (ratio)",
            f"{charter['native_loop_s']:.3f} s ({charter['cpu_ratio_to_native']:.2f}x)",
        ),
        ("memory per prepared instance", f"{charter['memory_per_instance_mib']:.1f} MiB"),
        ("cold start: new process to first outcome", f"{charter['cold_start_s']:.2f} s"),
    ]
    for row in rows:
        add_plain_row(table, *row)
    out.print(table)
    out.print(peers_table(results["peers"]))


@bench_app.command("gate")
def bench_gate(
    runs: Annotated[int, typer.Option(help="Runs per measurement (45 gated calls each, per mix).")] = 40,
    threads: Annotated[int, typer.Option(help="Threads for the concurrent measurement.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Gated calls per second with durable signed receipts, and audit verification speed."""
    from charter.bench import run_gate_bench

    _refuse_below("--runs", runs, 1)  # none would leave every rate a division by zero
    _refuse_below("--threads", threads, 1)
    results = run_gate_bench(runs, threads)
    if as_json:
        print_json(results)
        return
    gated, plain = results["gated"], results["passthrough"]
    table = Table(title="Charter gate and audit log", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("gated calls/s, one run at a time (durable receipts)", f"{gated['sequential_calls_per_s']:,.0f}"),
        (f"gated calls/s, {threads} runs at once", f"{gated['concurrent_calls_per_s']:,.0f}"),
        (
            "pass-through gate calls/s, one run at a time (no rules, no receipts)",
            f"{plain['sequential_calls_per_s']:,.0f}",
        ),
        (f"pass-through gate calls/s, {threads} runs at once", f"{plain['concurrent_calls_per_s']:,.0f}"),
        ("bare SQLite commits/s, synchronous=FULL", f"{results['sqlite_full_commits_per_s']:,.0f}"),
        ("verify, receipts/s (links + anchor signatures)", f"{results['verify']['receipts_per_s']:,.0f}"),
        ("verify --every-signature, receipts/s", f"{results['verify_every_signature']['receipts_per_s']:,.0f}"),
    ]
    for row in rows:
        add_plain_row(table, *row)
    out.print(table)
    share = results["gated_share_of_passthrough"]
    say(
        f"gated throughput as a share of pass-through: {share['sequential']:.2f} one at a time, "
        f"{share['concurrent']:.2f} concurrent"
    )
    lookup = results["lookup_guard"]
    say(
        f"a guard over a lookup of {lookup['payees_looked_up']} payees: {lookup['lookup_guard_ms_per_call']:.3f} ms a "
        f"call, {lookup['lookup_to_plain_ratio']:.2f}x a plain guard's {lookup['plain_guard_ms_per_call']:.3f} ms"
    )
    quota = results["quota_check"]
    say(
        f"quota check at k = {quota['k']:,} counted calls of its key ({quota['other_rows']:,} rows of other keys): "
        f"{quota['quota_check_us']:,.0f} µs, a plain guard {quota['plain_guard_us']:,.0f} µs "
        f"({quota['quota_over_guard']:.1f}x)"
    )
    goals = results["goals"]
    for mix, label in (("read_heavy", "read-heavy (44 reads + 1 write)"), ("write_only", "write-only (45 writes)")):
        figures, goal = results[mix], goals[f"{mix}_ratio_to_bare"]
        met = "met" if goals[f"met_{mix}"] else "NOT met"
        say(
            f"{label}, one run at a time: {figures['calls_per_s']:,.0f} durable gated calls/s = "
            f"{figures['ratio_to_bare']:.2f}x the bare synchronous=FULL commit rate "
            f"({figures['bare_commits_per_s']:,.0f}/s, same run); goal >= {goal}x: {met}; "
            f"{figures['durable_commits_per_call']:.3f} durable commits a call"
        )
    split = results["write_split"]
    say(
        f"one write, {split['wall_ms']:.2f} ms: its two receipt commits {split['two_receipt_commits_ms']:.2f} "
        f"(two bare commits {split['two_bare_commits_ms']:.2f}, two signatures {split['two_signatures_ms']:.2f}), "
        f"crossing (sandbox, guest, backend) {split['crossing_ms']:.2f}, the gate and the rest {split['gate_ms']:.2f} "
        f"(CPU: gate {split['cpu_gate_ms']:.2f}, audit.commit {split['cpu_audit_commit_ms']:.2f}, "
        f"audit.sign {split['cpu_audit_sign_ms']:.2f}, backend {split['cpu_backend_ms']:.2f})"
    )
    say(f"goal >= 20,000 receipts/s verified: {'met' if goals['met_verify'] else 'NOT met'}")


@bench_app.command("agent")
def bench_agent(
    rounds: Annotated[int, typer.Option(help="Passes over the suite; later passes only add timings.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """The Runtime Agent over 22 scripted intents: model calls, tokens, cache share, gate overhead."""
    from charter.bench import run_agent_bench

    _refuse_below("--rounds", rounds, 1)  # the first pass gives the counts
    results = run_agent_bench(rounds)
    if as_json:
        print_json(results)
        return
    table = Table(title=f"Runtime Agent, {results['intents']} scripted intents (tokens estimated)", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    goals = results["goals"]
    rows = [
        ("model calls per intent", f"{results['model_calls_per_intent']:.2f}", ""),
        (
            "model calls when the first program is right",
            str(results["model_calls_when_first_program_right"]),
            "1 " + ("met" if goals["one_call_when_first_program_right"] else "NOT met"),
        ),
        ("input tokens per intent (est.)", f"{results['input_tokens_per_intent_est']:.0f}", ""),
        ("output tokens per intent (est.)", f"{results['output_tokens_per_intent_est']:.0f}", ""),
        ("share of the prompt in the cached prefix (est.)", f"{results['cached_prefix_share_est']:.0%}", ""),
        (
            "contract block tokens per operation (est.)",
            f"{results['contract_tokens_per_operation_est']:.1f}",
            "< 60 " + ("met" if goals["contract_tokens_per_operation_under_60"] else "NOT met"),
        ),
        *(
            (
                f"  {name}: {c['block_tokens_est']} tokens, {c['operations']} operations",
                f"{c['tokens_per_operation_est']:.1f}",
                "",
            )
            for name, c in results["contract_context"].items()
        ),
        ("run, contract gate + receipts (median ms)", f"{results['run_ms']['gated_median']:.2f}", ""),
        ("run, pass-through gate (median ms)", f"{results['run_ms']['passthrough_median']:.2f}", ""),
        ("gate overhead per run (ms)", f"{results['gate_overhead_ms_per_run']:.2f}", ""),
        ("gated / pass-through", f"{results['gated_over_passthrough']:.2f}x", ""),
    ]
    for row in rows:
        add_plain_row(table, *row)
    out.print(table)


@bench_app.command("serve")
def bench_serve(
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 32,
    seconds: Annotated[float, typer.Option(help="How long they post programs.")] = 30.0,
    peer_seconds: Annotated[float, typer.Option(help="How long they GET from the orders service directly.")] = 5.0,
    max_runs: Annotated[int | None, typer.Option(help="`charter serve --max-runs` (default: the server's).")] = None,
    queue: Annotated[int | None, typer.Option(help="`charter serve --queue` (default: the server's).")] = None,
    overload_clients: Annotated[int, typer.Option(help="Clients in the overload phase (0: skip it).")] = 256,
    overload_seconds: Annotated[float, typer.Option(help="How long the overload phase lasts.")] = 10.0,
    overload_alloc_mib: Annotated[int, typer.Option(help="MiB one overload program in five holds (0: none).")] = 64,
    ignore_retry_after: Annotated[
        bool, typer.Option("--ignore-retry-after", help="Overload clients resend at once after a 503.")
    ] = False,
    idle_seconds: Annotated[float, typer.Option(help="Seconds without traffic to measure (0: skip).")] = 10.0,
    workers: Annotated[
        list[int] | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="Instead of the phases above: the governed load on `charter serve --workers N` (repeatable: "
            "1, 2, 4), each against SQLite with 1 worker in the same run: throughput, CPU per request summed "
            "over the workers, errors, the audit log's check.",
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database", metavar="URL", help="With --workers: the postgresql:// database of those configurations."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """The HTTP API under load: CPU per request and its split, throughput against direct calls,
    overload (503 + Retry-After, peak RSS) and idle CPU, each against issue 17's goals. With
    --workers (and --database): throughput and CPU per request of N workers against SQLite
    with one."""
    from charter.bench import run_serve_bench
    from charter.cli._bench_serve import print_serve_bench
    from charter.cli.serve import checked_admission
    from charter.server._admission import DEFAULT_MAX_RUNS, DEFAULT_QUEUE

    # What charter serve would refuse, refused here first, in its words, before anything starts.
    checked_admission(DEFAULT_MAX_RUNS if max_runs is None else max_runs, DEFAULT_QUEUE if queue is None else queue)
    for option, count in (
        ("--clients", clients),
        ("--overload-clients", overload_clients),
        ("--overload-alloc-mib", overload_alloc_mib),
    ):
        _refuse_below(option, count, 0)
    for option, duration in (
        ("--seconds", seconds),
        ("--peer-seconds", peer_seconds),
        ("--overload-seconds", overload_seconds),
        ("--idle-seconds", idle_seconds),
    ):
        _refuse_below(option, duration, 0)
    if workers or database is not None:
        _bench_workers(workers or [1], database, clients, seconds, max_runs, queue, as_json=as_json)
        return

    results = run_serve_bench(
        clients,
        seconds,
        peer_seconds,
        max_runs=max_runs,
        queue=queue,
        overload_clients=overload_clients,
        overload_seconds=overload_seconds,
        overload_alloc_mib=overload_alloc_mib,
        honour_retry_after=not ignore_retry_after,
        idle_seconds=idle_seconds,
    )
    if as_json:
        print_json(results)
    else:
        print_serve_bench(results)


def _bench_workers(
    workers: list[int],
    database: str | None,
    clients: int,
    seconds: float,
    max_runs: int | None,
    queue: int | None,
    *,
    as_json: bool,
) -> None:
    from charter.bench import run_workers_bench
    from charter.cli._bench_serve import print_workers_bench
    from charter.db import Database
    from charter.server._workers import MAX_WORKERS

    for count in workers:
        if not 1 <= count <= MAX_WORKERS:
            fail(f"--workers {count} is out of range: give the worker processes to start, 1 to {MAX_WORKERS}")
    if database is not None and not Database.parse(database).is_postgres:
        fail(f"--database {database!r}: give a postgresql:// URL (SQLite is the baseline every run measures)")
    results = run_workers_bench(
        workers, database=database, clients=clients, seconds=seconds, max_runs=max_runs, queue=queue
    )
    if as_json:
        print_json(results)
    else:
        print_workers_bench(results)


@bench_app.command("approvals")
def bench_approvals(
    reads: Annotated[
        list[int] | None, typer.Option("--reads", metavar="N", help="Reads before the flagged write; repeat for more.")
    ] = None,
    samples: Annotated[int, typer.Option(metavar="N", help="Samples of each measurement per N.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Resuming a run paused for approval vs running it fresh (N reads, then the flagged write)."""
    from charter.bench import run_approvals_bench
    from charter.bench.approvals import READS

    if samples < 1 or any(n < 1 for n in reads or ()):
        fail("--samples and every --reads must be at least 1")
    results = run_approvals_bench(tuple(reads or READS), samples)
    if as_json:
        print_json(results)
        return
    table = Table(
        title=f"Resume after approval vs fresh run, orders HTTP service, median of {samples}", show_header=True
    )
    for column in ("reads (N)", "fresh run", "pause", "resume", "resume / fresh"):
        table.add_column(column, justify="right")
    for row in results["results"]:
        table.add_row(
            str(row["reads"]),
            _ms(row["fresh_ms"]["median"]),
            _ms(row["pause_ms"]["median"]),
            _ms(row["resume_ms"]["median"]),
            f"{row['resume_over_fresh']:.2f}x",
        )
    out.print(table)
    met = results["goal"]["resume_cheaper_than_fresh"]
    say(f"goal: resuming costs less than running fresh at every N: {'met' if met else 'NOT met'}")
    say(f"audit log after the bench: {'verified' if results['audit_verified'] else 'FINDINGS'}")
