"""Shared fixtures: a scratch CHARTER_HOME per test and contract files written on demand."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE_CONTRACT = (ROOT / "tests" / "data" / "base.yaml").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def charter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own registry and example databases; nothing touches ./.charter."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHARTER_HOME", str(home))
    monkeypatch.delenv("CHARTER_ORDERS_DB", raising=False)
    monkeypatch.delenv("CHARTER_INVOICES_DB", raising=False)
    return home


WriteContract = Callable[..., Path]


@pytest.fixture
def write_contract(tmp_path: Path) -> WriteContract:
    """Write a contract file. With `replace`, mutate the base contract (each `old` must occur)."""

    def write(text: str | None = None, *, replace: dict[str, str] | None = None, name: str = "contract.yaml") -> Path:
        body = BASE_CONTRACT if text is None else text
        for old, new in (replace or {}).items():
            assert old in body, f"mutation target not in the base contract: {old!r}"
            body = body.replace(old, new, 1)
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return path

    return write


def charter(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the `charter` command as a real process, in this test's CHARTER_HOME."""
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
