"""charter._profile: per-component CPU sections, charged exclusively of nested ones."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from charter import _profile


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_off_sections_charge_nothing() -> None:
    assert not _profile.ENABLED  # the suite runs without CHARTER_PROFILE
    before = _profile.snapshot()["components_s"]
    with _profile.component("gate"):
        _spin(0.01)
    assert _profile.snapshot()["components_s"] == before


def test_nested_sections_are_charged_exclusively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_profile, "ENABLED", True)
    monkeypatch.setattr(_profile, "_totals", {})
    monkeypatch.setattr(_profile, "_counts", {})
    with _profile.component("gate"):
        _spin(0.02)
        with _profile.component("backend"):
            _spin(0.05)
        _spin(0.02)
    totals = _profile.snapshot()["components_s"]
    assert isinstance(totals, dict)
    assert totals["backend"] >= 0.05
    # Its own 40 ms, not the backend's 50 too: charged inclusively it would be at least 90 ms.
    # (CPU time, so a busy machine does not move it; the margin is for the spin's overshoot.)
    assert 0.04 <= totals["gate"] < 0.085
    assert _profile.snapshot()["counts"] == {"gate": 1, "backend": 1}


def test_sigusr1_writes_the_snapshot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "profile.json"
    monkeypatch.setattr(_profile, "ENABLED", True)
    monkeypatch.setattr(_profile, "_PATH", str(target))
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        _profile.install_signal()
        os.kill(os.getpid(), signal.SIGUSR1)
        written = json.loads(target.read_text(encoding="utf-8"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert set(written) == {"process_cpu_s", "components_s", "counts"}
    assert written["process_cpu_s"] > 0
