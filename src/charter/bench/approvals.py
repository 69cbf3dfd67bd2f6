"""`charter bench approvals`: what resuming a paused run costs, as a ratio to running it fresh.

Against the orders HTTP service (examples/orders/service.py in a process of its own, seeded,
as `charter bench serve` runs it): a program making N reads (N-1 get_order, then
verify_refund) and then a refund of 0.01, the write. Two contracts in the same run:

- the orders contract as published: the program runs fresh, every call decided by the gate
  and sent to the service (`fresh`);
- a copy of it whose refund_order `requires_approval` (and an `approvals:` block): the same
  program pauses at the refund; a reviewer approves; the resume is timed (`resume`): the
  chain is verified, the N recorded reads are answered from their receipts (the service is
  not asked), and the approved refund is checked again against the state now and sent.

For N = 1, 10, 50 the fresh and resume samples alternate, so both see the same machine
state; the figure is median(resume) / median(fresh). The goal: below 1 (resuming costs less
than running fresh, because recorded calls skip the backend).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["APPROVAL_COPY", "READS", "program_for", "run_approvals_bench"]

_ROOT = Path(__file__).resolve().parents[3]
READS = (1, 10, 50)
_ORDER = 125  # confirmed, refundable: every sample refunds 0.01 of it
_APPROVER_SCOPE = "orders:approve"
# What the copy adds to refund_order (the line after its `after:` clause keeps the YAML valid).
APPROVAL_COPY = ("    after: [verify_refund]\n", "    after: [verify_refund]\n    requires_approval: true\n")
_APPROVALS_BLOCK = f"\napprovals: {{scope: {_APPROVER_SCOPE}, expires: 1h}}\n"


def program_for(reads: int) -> str:
    """N reads of order 125 (N-1 get_order, then verify_refund), then a refund of 0.01."""
    if reads < 1:
        raise ValueError("the program makes at least one read (verify_refund)")
    return (
        "from decimal import Decimal\n"
        f"for _ in range({reads - 1}):\n"
        f"    orders.get_order(id={_ORDER})\n"
        f"orders.verify_refund(id={_ORDER})\n"
        f'o = orders.refund_order(id={_ORDER}, amount=Decimal("0.01"), reason="goodwill")\n'
        "conclude(str(o.refunded))\n"
    )


def _approval_copy(folder: Path, with_block: bool) -> Path:
    source = (_ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    old, new = APPROVAL_COPY
    if source.count(old) != 1:
        raise RuntimeError("contracts/orders.yaml changed: refund_order's `after: [verify_refund]` was not found once")
    text = source.replace(old, new) + (_APPROVALS_BLOCK if with_block else "")
    path = folder / "orders-approval.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _ms(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
    }


def run_approvals_bench(reads: tuple[int, ...] = READS, samples: int = 7) -> dict[str, Any]:
    """Time fresh runs and resumes for each N in `reads`, `samples` of each (plus one warm-up).

    Returns {"reads", "samples", "machine", "results": [{"reads", "calls", "fresh_ms",
    "resume_ms", "pause_ms", "resume_over_fresh", "recorded_calls_answered"}], "goal": {...}}
    with times in milliseconds (median, min, max). Raises RuntimeError if a run does not end
    as the measurement needs (fresh: done; approval copy: paused; resume: done)."""
    from charter.approvals import ApprovalStore, Resumer
    from charter.audit import AuditLog, verify_log
    from charter.bench.serve import _free_port, _wait, start_orders_service
    from charter.compiler import compile_contract
    from charter.contract import load_contract
    from charter.errors import ContractError
    from charter.principal import Principal
    from charter.registry import Registry
    from charter.runner import Runner
    from charter.sandbox import Sandbox, SandboxLimits

    if samples < 1 or any(n < 1 for n in reads):
        raise ValueError("samples and every N must be at least 1")
    with tempfile.TemporaryDirectory(prefix="charter-bench-approvals-") as scratch:
        home = Path(scratch)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CHARTER_HOME": str(home), "CHARTER_ORDERS_DB": str(home / "orders.db")}
        stderr = home / "orders-service.stderr"  # its last lines, should it exit at start
        service = start_orders_service(port, env, stderr)
        previous = os.environ.get("CHARTER_SERVICE_ORDERS_URL")
        os.environ["CHARTER_SERVICE_ORDERS_URL"] = url
        try:
            _wait(f"{url}/orders/{_ORDER}", service, "the orders service", stderr)
            plain = compile_contract(load_contract(_ROOT / "contracts" / "orders.yaml"))
            try:  # the `approvals:` block, where the contract language has it
                copy_path = _approval_copy(home, with_block=True)
                checked = load_contract(copy_path)
            except ContractError:
                copy_path = _approval_copy(home, with_block=False)
                checked = load_contract(copy_path)
            registry = Registry(home / "charter.db")
            flagged = registry.publish(checked, copy_path.read_text(encoding="utf-8"))
            gated = registry.get(flagged.info.name, flagged.info.version)
            log = AuditLog(home / "audit.db")
            sandbox = Sandbox(pool_size=2, progress=None)
            runner = Runner(audit=log, sandbox=sandbox)
            store = ApprovalStore(log)
            requester = Principal("bench", frozenset({"orders:read", "orders:refund"}))
            reviewer = Principal("bench-reviewer", frozenset({_APPROVER_SCOPE}))
            resumer = Resumer(
                runner, registry, principal_of=lambda pid: requester if pid == requester.id else None, store=store
            )

            def limits_for(reads: int) -> SandboxLimits:
                # orders allows 50 calls a run; N = 50 makes 51 (a resume keeps the recorded limits)
                contract_limits = SandboxLimits.from_contract(plain.gate.limits)
                return dataclasses.replace(contract_limits, max_calls=max(contract_limits.max_calls, reads + 1))

            def fresh(program: str, limits: SandboxLimits) -> float:
                started = time.perf_counter()
                execution = runner.execute(program, contract=plain, principal=requester, limits=limits)
                elapsed = (time.perf_counter() - started) * 1000
                if execution.status != "done":
                    raise RuntimeError(f"the fresh run did not conclude: {execution.status}: {execution.text}")
                return elapsed

            def paused_then_resumed(program: str, limits: SandboxLimits) -> tuple[float, float]:
                started = time.perf_counter()
                paused = runner.execute(program, contract=gated, principal=requester, limits=limits)
                pause_ms = (time.perf_counter() - started) * 1000
                if paused.status != "awaiting_approval" or paused.approval_id is None:
                    raise RuntimeError(f"the flagged write did not pause: {paused.status}: {paused.text}")
                store.decide(paused.approval_id, reviewer, "approved", "bench")
                started = time.perf_counter()
                resumed = resumer.resume(paused.approval_id)
                resume_ms = (time.perf_counter() - started) * 1000
                if resumed.status != "done":
                    raise RuntimeError(f"the resume did not conclude: {resumed.status}: {resumed.text}")
                return pause_ms, resume_ms

            results: list[dict[str, Any]] = []
            for n in reads:
                program, limits = program_for(n), limits_for(n)
                fresh(program, limits)  # warm: the sandbox pool, the gate's compiled rules, connections
                paused_then_resumed(program, limits)
                fresh_ms: list[float] = []
                resume_ms: list[float] = []
                pause_ms: list[float] = []
                for _ in range(samples):
                    fresh_ms.append(fresh(program, limits))
                    pause, resume = paused_then_resumed(program, limits)
                    pause_ms.append(pause)
                    resume_ms.append(resume)
                ratio = statistics.median(resume_ms) / statistics.median(fresh_ms)
                results.append(
                    {
                        "reads": n,
                        "calls": n + 1,
                        "recorded_calls_answered": n,
                        "fresh_ms": _ms(fresh_ms),
                        "pause_ms": _ms(pause_ms),
                        "resume_ms": _ms(resume_ms),
                        "resume_over_fresh": round(ratio, 3),
                    }
                )
            report = verify_log(log, log.trusted_keys())
        finally:
            if previous is None:
                os.environ.pop("CHARTER_SERVICE_ORDERS_URL", None)
            else:
                os.environ["CHARTER_SERVICE_ORDERS_URL"] = previous
            service.terminate()
            service.wait(30)
    return {
        "reads": list(reads),
        "samples": samples,
        "machine": _machine(),
        "results": results,
        "audit_verified": report.ok,
        "goal": {
            "resume_cheaper_than_fresh": all(r["resume_over_fresh"] < 1 for r in results),
        },
    }
