"""Benchmarks (`charter bench ...`): figures printed and returned as JSON, never timed tests."""

from charter.bench._scale import run_workers_bench
from charter.bench.agent import run_agent_bench
from charter.bench.approvals import run_approvals_bench
from charter.bench.gate import run_gate_bench
from charter.bench.sandbox import run_sandbox_bench
from charter.bench.serve import run_serve_bench

__all__ = [
    "run_agent_bench",
    "run_approvals_bench",
    "run_gate_bench",
    "run_sandbox_bench",
    "run_serve_bench",
    "run_workers_bench",
]
