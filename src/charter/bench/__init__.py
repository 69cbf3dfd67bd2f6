"""Benchmarks (`charter bench ...`): figures printed and returned as JSON, never timed tests."""

from charter.bench.sandbox import run_sandbox_bench

__all__ = ["run_sandbox_bench"]
