"""Where a process's CPU goes, per component: the split `charter bench serve` prints.

Off unless the environment variable `CHARTER_PROFILE` names a file. Then every
`component(name)` section adds the CPU time its thread spent inside it (`time.thread_time`,
seconds) to that component's total, *exclusive* of nested sections: a gate section that
calls the backend inside a `backend` section is charged only for its own work. CPU no
section claims (the event loop, the web framework, parsing) is what remains of the
process's CPU time. `SIGUSR1` writes a snapshot to the file:

    {"process_cpu_s": 12.3, "components_s": {"guest": 2.1, ...}, "counts": {"guest": 840, ...}}

Off, `component()` returns one shared no-op context manager: a global read and a call.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

__all__ = ["ENABLED", "component", "install_signal", "snapshot"]

_PATH = os.environ.get("CHARTER_PROFILE", "")
ENABLED = bool(_PATH)

_lock = threading.Lock()
_totals: dict[str, float] = {}
_counts: dict[str, int] = {}
_local = threading.local()  # .stack: the thread's open sections, innermost last


class _NoSection:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        return None


_NO_SECTION = _NoSection()


def _charge(name: str, seconds: float, *, count: bool) -> None:
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + seconds
        if count:
            _counts[name] = _counts.get(name, 0) + 1


class _Section:
    __slots__ = ("name", "started")

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = 0.0

    def __enter__(self) -> None:
        now = time.thread_time()
        stack: list[_Section] | None = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        if stack:  # the enclosing section stops being charged while this one runs
            outer = stack[-1]
            _charge(outer.name, now - outer.started, count=False)
        self.started = now
        stack.append(self)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        now = time.thread_time()
        stack: list[_Section] = _local.stack
        stack.pop()
        _charge(self.name, now - self.started, count=True)
        if stack:
            stack[-1].started = now


def component(name: str) -> _Section | _NoSection:
    """A `with` section whose thread CPU time is charged to `name` (no-op when profiling is off).

    Names used: sandbox.instantiate, sandbox.prepare, guest, gate, backend, audit.sign,
    audit.commit, idempotency, registry, auth. Sections nest; each is charged exclusively."""
    if not ENABLED:
        return _NO_SECTION
    return _Section(name)


def snapshot() -> dict[str, object]:
    """The totals so far: process CPU (user + system, seconds), per-component seconds and counts."""
    times = os.times()
    with _lock:
        return {
            "process_cpu_s": times.user + times.system,
            "components_s": dict(_totals),
            "counts": dict(_counts),
        }


def _write(signum: int, frame: FrameType | None) -> None:
    path = Path(_PATH)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(snapshot()), encoding="utf-8")
    os.replace(partial, path)


def install_signal() -> None:
    """On SIGUSR1, write `snapshot()` to the CHARTER_PROFILE file (main thread only; no-op when off)."""
    if ENABLED and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _write)
