"""`charter bench serve`: the HTTP API under load, over the HTTP-bound orders contract.

Three processes, as in production: the orders service (SQLite), `charter serve` (the
API, sandbox, gate, audit log), and this one, whose `clients` threads post programs
with bearer tokens and Idempotency-Keys for `seconds`. The program mix: half reads, a
quarter refunds of 0.01 (verified first: two reads and a write over HTTP), a quarter
cancellations the contract refuses (a dispatched order: a denial with its state read).

Afterwards the audit log must verify clean and hold exactly one run per accepted request.
The peer in the same run: the same clients calling the orders service directly (GET one
order), i.e. the cost of an ungoverned call to the same backend.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

__all__ = ["run_serve_bench"]

_ROOT = Path(__file__).resolve().parents[3]

_PROGRAMS = [
    "o = orders.get_order(id=102)\nconclude(o.status)",
    'c = orders.verify_refund(id=125)\no = orders.refund_order(id=125, amount=Decimal("0.01"), reason="goodwill")\n'
    "conclude(str(o.refunded))",
    "o = orders.get_order(id=104)\nconclude(o.status)",
    'try:\n    orders.cancel_order(id=123, reason="bench")\nexcept ContractViolation as denied:\n'
    "    refuse(denied.reason)",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120  # the first start may build the sandbox component
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url}")


def _percentile(samples: list[float], share: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _load(
    clients: int, seconds: float, send: Any, base_url: str, headers: dict[str, str]
) -> tuple[list[float], list[str], int]:
    """`clients` threads calling `send(client, n)` until time is up: latencies (ms), errors, accepted."""
    latencies: list[float] = []
    errors: list[str] = []
    accepted = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client_loop(index: int) -> None:
        nonlocal accepted
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            n = index
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = send(client, n)
                    ok = response.status_code == 200
                    problem = "" if ok else f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as error:
                    ok, problem = False, f"{type(error).__name__}: {error}"
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        accepted += 1
                    else:
                        errors.append(problem)
                n += clients

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, accepted


def run_serve_bench(clients: int = 32, seconds: float = 30.0, peer_seconds: float = 5.0) -> dict[str, Any]:
    from charter.audit import AuditLog, Opened, verify_log
    from charter.contract import load_contract
    from charter.registry import Registry
    from charter.server import TokenStore

    with tempfile.TemporaryDirectory(prefix="charter-bench-serve-") as scratch:
        home = Path(scratch)
        env = {**os.environ, "CHARTER_HOME": str(home), "CHARTER_ORDERS_DB": str(home / "orders.db")}
        orders_port, api_port = _free_port(), _free_port()
        orders_url, api_url = f"http://127.0.0.1:{orders_port}", f"http://127.0.0.1:{api_port}"
        env["CHARTER_SERVICE_ORDERS_URL"] = orders_url
        path = _ROOT / "contracts" / "orders.yaml"
        # The files `charter serve` finds under its CHARTER_HOME.
        Registry(home / "charter.db").publish(load_contract(path), path.read_text(encoding="utf-8"))
        scopes = ["orders:read", "orders:write", "orders:refund"]
        token = TokenStore(home / "tokens.yaml").add("bench", "bench", scopes)
        python = sys.executable
        service = subprocess.Popen(
            [python, "-m", "examples.orders.service", "--port", str(orders_port), "--seed"],
            cwd=_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        api = subprocess.Popen(
            [python, "-m", "charter", "serve", f"127.0.0.1:{api_port}"], cwd=_ROOT, env=env, stdout=subprocess.DEVNULL
        )
        try:
            _wait(f"{orders_url}/orders/102", service, "the orders service")
            _wait(f"{api_url}/openapi.json", api, "charter serve")
            headers = {"Authorization": f"Bearer {token}"}

            def post_program(client: httpx.Client, n: int) -> httpx.Response:
                program = "from decimal import Decimal\n" + _PROGRAMS[n % len(_PROGRAMS)]
                return client.post(
                    "/v1/programs",
                    json={"contract": "orders", "program": program},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )

            # Warm the API's sandbox pool and the service's connections before timing.
            with httpx.Client(base_url=api_url, headers=headers, timeout=120) as warm:
                for n in range(len(_PROGRAMS)):
                    post_program(warm, n)
            started = time.perf_counter()
            latencies, errors, accepted = _load(clients, seconds, post_program, api_url, headers)
            elapsed = time.perf_counter() - started
            peer_latencies, peer_errors, peer_accepted = _load(
                clients, peer_seconds, lambda c, n: c.get("/orders/102"), orders_url, {}
            )
        finally:
            for process in (api, service):
                process.terminate()
                process.wait(30)
        log = AuditLog(home / "audit.db")
        program_runs = sum(1 for r in log.runs() if isinstance(r.opened, Opened))
        report = verify_log(log, log.trusted_keys())
        warmup_runs = len(_PROGRAMS)
        throughput = accepted / elapsed
        peer_throughput = peer_accepted / peer_seconds
        return {
            "clients": clients,
            "seconds": round(elapsed, 2),
            "accepted": accepted,
            "errors": len(errors),
            "error_samples": errors[:5],
            "requests_per_s": round(throughput, 1),
            "latency_ms": {
                "p50": round(_percentile(latencies, 0.50), 1),
                "p99": round(_percentile(latencies, 0.99), 1),
            },
            "audit": {
                "program_runs": program_runs - warmup_runs,
                "one_run_per_accepted_request": program_runs - warmup_runs == accepted,
                "verified": report.ok,
                "receipts": report.receipts,
                "findings": [str(f) for f in report.findings[:5]],
                "in_doubt": len(report.in_doubt),
            },
            "peer_direct_service": {
                "requests_per_s": round(peer_throughput, 1),
                "latency_ms_p50": round(_percentile(peer_latencies, 0.50), 1),
                "errors": len(peer_errors),
            },
            "governed_over_direct_throughput": round(throughput / peer_throughput, 3) if peer_throughput else None,
            "goals": {"zero_errors": not errors, "audit_clean": report.ok and program_runs - warmup_runs == accepted},
        }
