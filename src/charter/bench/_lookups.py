"""`charter bench gate`: what a lookup guard costs beside a plain guard, in the same run.

Two read operations of one small contract, each guarded: `check_plain` by a guard over its
params only, `check_known` by `lookups.payees.exists(p, p.iban == params.recipient)` over a
lookup of 20 payees, which the gate performs through the backend (in memory here, so the
figure is the gate's own cost: the CEL args, the result check, the fingerprint, the receipt
field; a real backend adds its own latency). Each measurement is whole programs in the real
sandbox, every call decided and recorded as a signed receipt; the two alternate in one run so
they share the machine's state, and the ratio is per call.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from charter.audit import AuditLog
from charter.backends import InMemoryBackend
from charter.compiler import CompiledContract, compile_contract
from charter.contract.checker import load_contract
from charter.principal import Principal
from charter.runner import Runner
from charter.sandbox import Sandbox

__all__ = ["run_lookup_bench"]

_CALLS = 40
_PAYEES = [{"iban": f"GB{n:02d}NWBK6016133192{n:04d}", "name": f"payee {n}"} for n in range(20)]
_CONTRACT = """\
contract: bench_lookups
version: 1.0.0
summary: A lookup guard beside a plain guard (charter bench gate).
owners: [bench@example.com]
changelog: First version.
binding: {python: bench_lookups}
limits: {max_calls: 100}
records:
  Payee: {iban: str, name: str}
operations:
  list_payees:
    kind: read
    doc: The payees of an account.
    params: {account: str}
    returns: list[Payee]
  check_plain:
    kind: read
    doc: A call guarded by its params only.
    params: {account: str, recipient: str}
    returns: str
    guards:
      - id: plain
        when: size(params.recipient) == 22 && params.account != ""
        message: A recipient is an IBAN of 22 characters.
  check_known:
    kind: read
    doc: A call guarded through a lookup.
    params: {account: str, recipient: str}
    returns: str
    lookups:
      payees: {operation: list_payees, args: {account: params.account}}
    guards:
      - id: known
        when: lookups.payees.exists(p, p.iban == params.recipient)
        message: The recipient must be a known payee.
"""


def _program(operation: str) -> str:
    recipient = _PAYEES[-1]["iban"]
    return (
        f"for i in range({_CALLS}):\n"
        f"    bench_lookups.{operation}(account='acc-1', recipient={recipient!r})\n"
        "conclude('ok')\n"
    )


def _backend() -> InMemoryBackend:
    return InMemoryBackend(
        {
            "list_payees": lambda account: _PAYEES,
            "check_plain": lambda account, recipient: "ok",
            "check_known": lambda account, recipient: "ok",
        }
    )


def _contract(folder: Path) -> CompiledContract:
    path = folder / "bench_lookups.yaml"
    path.write_text(_CONTRACT, encoding="utf-8")
    return compile_contract(load_contract(path, resolve_bindings=False))


def run_lookup_bench(sandbox: Sandbox, runs: int = 20) -> dict[str, Any]:
    """Per-call seconds of a plain-guarded call and of a lookup-guarded one, and their ratio."""
    with tempfile.TemporaryDirectory(prefix="charter-bench-lookups-") as scratch:
        folder = Path(scratch)
        contract = _contract(folder)
        sandbox.warm(contract)
        runner = Runner(audit=AuditLog(folder / "audit.db"), sandbox=sandbox, backend_for=lambda _: _backend())
        principal = Principal("bench", frozenset())
        spent = {"check_plain": 0.0, "check_known": 0.0}
        for round_ in range(runs + 1):  # the first round warms the gate and the log
            for operation in spent:
                started = time.perf_counter()
                execution = runner.execute(_program(operation), contract=contract, principal=principal)
                elapsed = time.perf_counter() - started
                if execution.status != "done":
                    raise RuntimeError(f"benchmark run did not complete: {execution.outcome}")
                if round_:
                    spent[operation] += elapsed
    calls = runs * _CALLS
    plain, known = spent["check_plain"] / calls, spent["check_known"] / calls
    return {
        "calls": calls,
        "payees_looked_up": len(_PAYEES),
        "plain_guard_ms_per_call": plain * 1000,
        "lookup_guard_ms_per_call": known * 1000,
        "lookup_to_plain_ratio": known / plain,
    }
