"""`charter bench gate` at its smallest: the figures it prints are there and hang together
(each mix's ratio is its own calls/s over the bare commit rate measured around it, met or not
by its goal, a write's split adds up), and the benchmark's own log verifies (it raises if not).
No speed is asserted."""

from __future__ import annotations

import pytest

from charter.bench.gate import GOAL_READ_HEAVY, GOAL_WRITE_ONLY, run_gate_bench


def test_the_gate_bench_reports_both_mixes_against_the_bare_commit_rate() -> None:
    results = run_gate_bench(runs=2, threads=2)
    goals = results["goals"]
    for mix, goal in (("read_heavy", GOAL_READ_HEAVY), ("write_only", GOAL_WRITE_ONLY)):
        figures = results[mix]
        assert figures["calls_per_s"] > 0
        assert figures["bare_commits_per_s"] > 0
        assert figures["ratio_to_bare"] == pytest.approx(figures["calls_per_s"] / figures["bare_commits_per_s"])
        assert goals[f"{mix}_ratio_to_bare"] == goal
        assert goals[f"met_{mix}"] == (figures["ratio_to_bare"] >= goal)
    # Counted, not timed: a read-heavy run commits its opening, the write's decision and outcome,
    # and the seal (its reads ride on them); a write-only run two commits a write, plus those two.
    assert results["read_heavy"]["durable_commits_per_call"] == pytest.approx(4 / 45)
    assert results["write_only"]["durable_commits_per_call"] == pytest.approx(92 / 45)
    split = results["write_split"]
    assert split["wall_ms"] == pytest.approx(1000 / results["write_only"]["calls_per_s"])
    assert split["wall_ms"] == pytest.approx(split["two_receipt_commits_ms"] + split["crossing_ms"] + split["gate_ms"])
    assert split["two_receipt_commits_ms"] > 0
    assert split["two_signatures_ms"] > 0
    # The profile sections were on for the profiled runs: the gate and the log charged their CPU.
    for name in ("cpu_gate_ms", "cpu_audit_sign_ms", "cpu_audit_commit_ms", "cpu_backend_ms"):
        assert split[name] > 0, name
    assert results["profile_read_heavy_ms_per_call"]["gate"] > 0
