"""The `charter bench` commands' own checks and printing: options refused before anything
starts, and text shown as written. Nothing here measures speed."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from charter.bench.sandbox import INSTALL_PEERS, _monty, _smolagents
from charter.cli.sandbox import peers_table
from tests.conftest import charter


def test_a_missing_peer_names_the_install_command_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module set to None in sys.modules fails to import, as an uninstalled peer does.
    monkeypatch.setitem(sys.modules, "pydantic_monty", None)
    monkeypatch.setitem(sys.modules, "smolagents", None)
    monkeypatch.setitem(sys.modules, "smolagents.local_python_executor", None)
    peers = {"pydantic-monty": _monty(1), "smolagents LocalPythonExecutor": _smolagents(1)}
    printed = io.StringIO()
    Console(file=printed, width=240).print(peers_table(peers))
    assert INSTALL_PEERS == "pip install -e '.[bench]'"
    assert printed.getvalue().count(f"is not installed ({INSTALL_PEERS})") == 2, printed.getvalue()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["serve", "--max-runs", "0"], "--max-runs 0 is out of range: give the runs in flight at once, 1 to 1024"),
        (
            ["serve", "--queue", "-1"],
            "--queue -1 is out of range: give the requests that may wait for a run slot, 0 to 65536",
        ),
        (["serve", "--seconds", "-1"], "--seconds must be a finite number at least 0 (got -1)"),
        (["serve", "--idle-seconds", "inf"], "--idle-seconds must be a finite number at least 0 (got inf)"),
        (["serve", "--overload-clients", "-3"], "--overload-clients must be at least 0 (got -3)"),
        (["gate", "--runs", "0"], "--runs must be at least 1 (got 0)"),
        (["gate", "--threads", "0"], "--threads must be at least 1 (got 0)"),
        (["sandbox", "--runs", "0"], "--runs must be at least 1 (got 0)"),
        (["agent", "--rounds", "0"], "--rounds must be at least 1 (got 0)"),
    ],
)
def test_an_option_out_of_range_is_one_error_line_before_anything_starts(
    arguments: list[str], error: str, charter_home: Path
) -> None:
    result = charter("bench", *arguments)
    assert (result.returncode, result.stderr, result.stdout) == (1, f"error: {error}\n", "")
    assert not charter_home.exists()  # no server, registry or log was started


def test_the_gate_and_sandbox_benches_refuse_to_measure_nothing() -> None:
    """Called as a library: no runs would make every rate a division by zero, every percentile
    a lookup in an empty list."""
    from charter.bench import run_gate_bench, run_sandbox_bench

    for call in (lambda: run_gate_bench(runs=0), lambda: run_gate_bench(threads=0), lambda: run_sandbox_bench(0)):
        with pytest.raises(ValueError, match="must be at least 1"):
            call()
