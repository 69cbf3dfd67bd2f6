"""The `charter bench` commands' own checks and printing: options refused before anything
starts, and text shown as written. Nothing here measures speed."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from charter.bench.sandbox import INSTALL_PEERS, _monty, _smolagents
from charter.cli.sandbox import peers_table


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
