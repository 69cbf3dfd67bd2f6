"""The CPU limit counts the program's own CPU time, not the wall time it spent waiting for a
CPU: a program run while other processes load the machine is not cut at its CPU limit before
it has used that CPU, and one that does use it still ends with TimedOut(limit="cpu").

The run thread and the busy processes share one pinned CPU, so the run gets a fraction of
it and its wall time passes its CPU limit (asserted: the test checks its own premise)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from charter.compiler.artifact import CompiledContract
from charter.gate import PassThroughGate
from charter.sandbox import Completed, Outcome, RunContext, Sandbox, SandboxLimits, TimedOut
from tests.test_sandbox import Recorder, context, orders, sandbox

__all__ = ["orders", "sandbox"]  # the fixtures, shared with tests/test_sandbox.py

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")

_CPU_LIMIT = 1.0
_BUSY = 3  # busy processes on the run's CPU: the run gets about a quarter of it
_CALIBRATION = 200_000


@pytest.fixture
def one_loaded_cpu() -> Iterator[int]:
    cpu = min(os.sched_getaffinity(0))
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(_BUSY)]
    try:
        yield cpu
    finally:
        for process in busy:
            process.kill()
        for process in busy:
            process.wait()


def _limits(contract: CompiledContract) -> SandboxLimits:
    return SandboxLimits.from_contract(contract.gate.limits).tightened(cpu_seconds=_CPU_LIMIT, wall_seconds=30.0)


def _loop(iterations: int) -> str:
    return f"n = 0\nfor i in range({iterations}):\n    n += i\nconclude(str(n))"


def _run(sandbox: Sandbox, contract: CompiledContract, program: str, cpu: int | None = None) -> Outcome:
    """Run `program` on a thread of its own, pinned to `cpu` when given (wasm runs on the calling thread)."""
    ended: list[Outcome] = []
    gate = PassThroughGate(contract, Recorder().backend())
    run_context: RunContext = context()

    def target() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # 0: this thread, on Linux
        ended.append(sandbox.run(program, contract=contract, gate=gate, context=run_context, limits=_limits(contract)))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return ended[0]


@pytest.fixture(scope="module")
def half_the_limit(sandbox: Sandbox, orders: CompiledContract) -> int:
    """Iterations of `_loop` using about half the CPU limit, measured before any load starts
    (module scope: set up before the function-scoped `one_loaded_cpu`)."""
    calibration = _run(sandbox, orders, _loop(_CALIBRATION))
    assert isinstance(calibration, Completed), calibration
    return int(_CALIBRATION * (_CPU_LIMIT * 500) / max(calibration.stats.cpu_ms, 1.0))


def test_a_program_under_its_cpu_limit_completes_while_the_cpu_is_shared(
    sandbox: Sandbox, orders: CompiledContract, half_the_limit: int, one_loaded_cpu: int
) -> None:
    # A quarter share of the CPU takes about twice the limit in wall time.
    iterations = half_the_limit
    outcome = _run(sandbox, orders, _loop(iterations), cpu=one_loaded_cpu)
    assert outcome == Completed(answer=str(sum(range(iterations))), stats=outcome.stats), outcome
    assert outcome.stats.wall_ms > _CPU_LIMIT * 1000  # the premise: a wall-time "CPU" limit would have cut it
    assert outcome.stats.cpu_ms < _CPU_LIMIT * 1000


def test_a_program_over_its_cpu_limit_still_ends_at_it_while_the_cpu_is_shared(
    sandbox: Sandbox, orders: CompiledContract, one_loaded_cpu: int
) -> None:
    outcome = _run(sandbox, orders, "while True:\n    pass", cpu=one_loaded_cpu)
    assert outcome == TimedOut(limit="cpu", seconds=_CPU_LIMIT, stats=outcome.stats), outcome
    assert outcome.stats.cpu_ms >= _CPU_LIMIT * 1000  # never early: it had used its CPU time
    assert outcome.stats.wall_ms > _CPU_LIMIT * 1000
