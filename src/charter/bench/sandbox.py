"""`charter bench sandbox`: the sandbox measured against the peers a user would pick instead.

Every figure comes from this run on this machine; peers are reported as ratios to
Charter (above 1: Charter is faster). Peers come from the `bench` extra; a missing
peer is reported as skipped, never estimated.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmtime.component import Component

from charter.backends import InMemoryBackend
from charter.compiler import compile_contract
from charter.compiler.artifact import CompiledContract
from charter.contract.checker import load_contract
from charter.gate import Gate, PassThroughGate
from charter.principal import Principal
from charter.sandbox import Completed, RunContext, Sandbox, SandboxLimits, _baked

__all__ = ["INSTALL_PEERS", "run_sandbox_bench"]

INSTALL_PEERS = "pip install -e '.[bench]'"  # from a checkout, as the README says

_ROOT = Path(__file__).resolve().parents[3]
_LOOP = "for i in range(1_000_000):\n    pass\n"
ORDER = {  # one order as a read binding returns it; the gate benchmark reuses it
    "id": 1,
    "customer": "acme",
    "items": [],
    "total": decimal.Decimal("20.00"),
    "refunded": decimal.Decimal("0.00"),
    "placed_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    "note": None,
    "status": "dispatched",
}


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "n": len(ordered),
    }


def _time(action: Callable[[], Any], repeats: int, gap: float = 0.0) -> list[float]:
    samples = []
    for _ in range(repeats):
        if gap:
            time.sleep(gap)
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def _back_to_back(action: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Latency percentiles of runs back to back, with the process's CPU per run (all threads,
    the pool's refill included): a figure other load on the machine disturbs less than wall time."""
    cpu = time.process_time()
    figures = _percentiles(_time(action, repeats))
    figures["process_cpu_ms_per_run"] = (time.process_time() - cpu) / repeats * 1000
    return figures


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_growth_each(make: Callable[[], Any], count: int) -> float:
    """Resident memory (bytes) each of `count` things made by `make` adds while all are held."""
    before = _rss_bytes()
    held = [make() for _ in range(count)]
    return (_rss_bytes() - before) / len(held)


def _charter(repeats: int) -> dict[str, Any]:
    contract = compile_contract(load_contract(_ROOT / "contracts" / "orders.yaml"))
    gate = PassThroughGate(contract, InMemoryBackend({"get_order": lambda id: {**ORDER, "id": id}}))
    sandbox = Sandbox(pool_size=2, progress=None)
    sandbox.warm(contract)
    context = RunContext(principal=Principal("bench", frozenset({"orders:read"})))
    limits = SandboxLimits.from_contract(contract.gate.limits)
    many_calls = dataclasses.replace(limits, max_calls=1000)  # above the contract's 50, for this measurement only

    def run(program: str, run_limits: SandboxLimits = limits) -> Any:
        outcome = sandbox.run(program, contract=contract, gate=gate, context=context, limits=run_limits)
        if not isinstance(outcome, Completed):
            raise RuntimeError(f"bench program failed: {outcome.message}")
        return outcome

    # Arrivals are spaced so the pool has refilled, as it would below capacity; the
    # back-to-back figure shows what happens when requests outpace the pool.
    trivial = _percentiles(_time(lambda: run('conclude("ok")'), repeats, gap=0.02))
    back_to_back = _back_to_back(lambda: run('conclude("ok")'), repeats)
    generic_drained = _drained(Sandbox(pool_size=0, progress=None), contract, gate, context, repeats)
    calls = 200
    one = statistics.median(_time(lambda: run('orders.get_order(id=1)\nconclude("ok")'), 15, gap=0.02))
    loop_program = f"for i in range({calls + 1}):\n    orders.get_order(id=i)\nconclude('ok')"
    many = statistics.median(_time(lambda: run(loop_program, many_calls), 15, gap=0.02))
    per_call_ms = (many - one) / calls * 1000
    loop = statistics.median(_time(lambda: run(_LOOP + 'conclude("ok")'), 5))
    native = statistics.median(_time(lambda: exec(compile(_LOOP, "<loop>", "exec"), {}), 5))
    # Memory: resident set growth for instances held ready, each already prepared.
    entry = sandbox._entry(contract)
    per_instance = _rss_growth_each(lambda: sandbox._prepare(entry), 20)
    return {
        "fresh_run": trivial,
        "fresh_run_back_to_back": back_to_back,
        "fresh_run_drained": generic_drained,
        "baked": _baked_figures(contract, gate, context, repeats),
        "host_call_ms": per_call_ms,
        "cpu_loop_s": loop,
        "native_loop_s": native,
        "cpu_ratio_to_native": loop / native,
        "memory_per_instance_mib": per_instance / 2**20,
        "cold_start_s": _cold_start(),
    }


def _drained(sandbox: Sandbox, contract: CompiledContract, gate: Gate, context: RunContext, repeats: int) -> Any:
    """Back to back with no pool at all: every instance made (and dropped) on the request path."""

    def run() -> None:
        outcome = sandbox.run('conclude("ok")', contract=contract, gate=gate, context=context)
        if not isinstance(outcome, Completed):
            raise RuntimeError(f"bench program failed: {outcome.message}")

    for _ in range(5):
        run()
    return _back_to_back(run, repeats)


def _baked_figures(contract: CompiledContract, gate: Gate, context: RunContext, repeats: int) -> dict[str, Any]:
    """Fresh runs from the contract's baked component, and what one baked component costs.

    The build is timed into a scratch cache (the usual cache may hold it already), in a
    subprocess whose peak RSS is the children's maximum resident set.
    """
    with tempfile.TemporaryDirectory(prefix="charter-bench-bake-") as scratch:
        previous = os.environ.get("CHARTER_CACHE_DIR")
        scratch_sandbox = Sandbox(pool_size=0, bake=True, progress=None)
        os.environ["CHARTER_CACHE_DIR"] = scratch
        try:
            build = scratch_sandbox.bake(contract).result(timeout=1800)
        finally:
            if previous is None:
                os.environ.pop("CHARTER_CACHE_DIR", None)
            else:
                os.environ["CHARTER_CACHE_DIR"] = previous
        build_peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    sandbox = Sandbox(pool_size=2, bake=True, progress=None)
    sandbox.bake(contract).result(timeout=1800)  # from the usual cache, built now if absent
    sandbox.warm(contract)

    def run() -> None:
        outcome = sandbox.run('conclude("ok")', contract=contract, gate=gate, context=context)
        if not isinstance(outcome, Completed):
            raise RuntimeError(f"bench program failed: {outcome.message}")

    spaced = _percentiles(_time(run, repeats, gap=0.02))
    back_to_back = _back_to_back(run, repeats)
    served = sandbox.runs_served()
    drained_sandbox = Sandbox(pool_size=0, bake=True, progress=None)
    drained_sandbox.bake(contract).result(timeout=1800)
    drained = _drained(drained_sandbox, contract, gate, context, repeats)
    # Resident memory of a loaded baked component: load its native code a few more times.
    native = _baked.baked_files(sandbox._entry(contract).surface_key).native(sandbox._runtime.config_tag)
    per_component = _rss_growth_each(lambda: Component.deserialize_file(sandbox._runtime.engine, str(native)), 3)
    return {
        "fresh_run": spaced,
        "fresh_run_back_to_back": back_to_back,
        "fresh_run_drained": drained,
        "runs_served": served,
        "build_s": build.build_seconds,
        "build_peak_rss_mib": build_peak_rss / 2**20,
        "native_mib": build.native_bytes / 2**20,
        "load_ms": build.load_ms,
        "rss_per_loaded_component_mib": per_component / 2**20,
    }


def _cold_start() -> float:
    """A new process, from spawn to the outcome of its first run (component cache warm on disk)."""
    script = (
        "from charter.compiler import compile_contract\n"
        "from charter.contract.checker import load_contract\n"
        "from charter.backends import InMemoryBackend\n"
        "from charter.gate import PassThroughGate\n"
        "from charter.principal import Principal\n"
        "from charter.sandbox import Sandbox, RunContext, Completed\n"
        f"c = compile_contract(load_contract({str(_ROOT / 'contracts' / 'orders.yaml')!r}))\n"
        "o = Sandbox(pool_size=0, progress=None).run('conclude(\"ok\")', contract=c,"
        " gate=PassThroughGate(c, InMemoryBackend({})), context=RunContext(principal=Principal('b')))\n"
        "assert isinstance(o, Completed), o\n"
    )
    return statistics.median(
        _time(lambda: subprocess.run([sys.executable, "-c", script], check=True, env=os.environ.copy()), 3)
    )


def _monty(repeats: int) -> dict[str, Any]:
    try:
        import pydantic_monty
    except ImportError:
        return {"skipped": f"pydantic-monty is not installed ({INSTALL_PEERS})"}
    lookup = {"get_order": lambda id: {**ORDER, "id": id, "total": "20.00", "placed_at": "2026-01-01"}}
    with pydantic_monty.Monty() as pool:

        def fresh(code: str) -> None:
            with pool.checkout() as session:  # a new session per run: Monty's unit of isolation
                session.feed_run(code, external_lookup=lookup)

        trivial = _percentiles(_time(lambda: fresh("1 + 1"), repeats, gap=0.02))
        calls = 200
        one = statistics.median(_time(lambda: fresh("get_order(1)"), 15))
        many = statistics.median(_time(lambda: fresh(f"for i in range({calls + 1}):\n    get_order(i)"), 15))
        loop = statistics.median(_time(lambda: fresh(_LOOP), 5))
    return {"fresh_run": trivial, "host_call_ms": (many - one) / calls * 1000, "cpu_loop_s": loop}


def _subprocess(repeats: int) -> dict[str, Any]:
    command = [sys.executable, "-I", "-S", "-c", "pass"]  # the interpreter itself, not a launcher shim
    return {"fresh_run": _percentiles(_time(lambda: subprocess.run(command, check=True), max(20, repeats // 5)))}


def _smolagents(repeats: int) -> dict[str, Any]:
    try:
        from smolagents.local_python_executor import LocalPythonExecutor
    except ImportError:
        return {"skipped": f"smolagents is not installed ({INSTALL_PEERS})"}

    def fresh(code: str, tools: dict[str, Any] | None = None) -> None:
        executor = LocalPythonExecutor(additional_authorized_imports=[])
        executor.send_tools(tools or {})
        executor(code)

    tool = {"get_order": lambda id: dict(ORDER, id=id)}
    trivial = _percentiles(_time(lambda: fresh("1 + 1"), repeats, gap=0.005))
    calls = 200
    one = statistics.median(_time(lambda: fresh("get_order(1)", tool), 15))
    many = statistics.median(_time(lambda: fresh(f"for i in range({calls + 1}):\n    get_order(i)", tool), 15))
    loop = statistics.median(_time(lambda: fresh("for i in range(100_000):\n    pass"), 3)) * 10
    return {"fresh_run": trivial, "host_call_ms": (many - one) / calls * 1000, "cpu_loop_s": loop}


def run_sandbox_bench(repeats: int = 200) -> dict[str, Any]:
    """Every figure of `charter bench sandbox` as a JSON-able dict. ValueError unless `repeats`
    is at least 1: percentiles of no samples are not figures."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (got {repeats})")
    charter = _charter(repeats)
    peers = {"pydantic-monty": _monty(repeats), "python3 -I -S subprocess": _subprocess(repeats)}
    peers["smolagents LocalPythonExecutor"] = _smolagents(repeats)
    for figures in peers.values():
        if "skipped" in figures:
            continue
        ratios = {"fresh_run_p50": figures["fresh_run"]["p50_ms"] / charter["fresh_run"]["p50_ms"]}
        if "host_call_ms" in figures:
            ratios["host_call"] = figures["host_call_ms"] / charter["host_call_ms"]
        if "cpu_loop_s" in figures:
            ratios["cpu_loop"] = figures["cpu_loop_s"] / charter["cpu_loop_s"]
        figures["ratio_to_charter"] = ratios
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform},
        "charter": charter,
        "peers": peers,
    }
