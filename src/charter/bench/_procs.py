"""What another process costs, read from outside: CPU and memory from /proc, and the
per-component split from `charter._profile`'s SIGUSR1 snapshot.

Linux only (the bench's machine): /proc/<pid>/stat for CPU time, /proc/<pid>/status for
resident memory and its high-water mark, /proc/<pid>/task/* for each thread's wake-ups.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

__all__ = ["children", "cpu_seconds", "peak_rss_bytes", "rss_bytes", "settle", "snapshot_profile", "thread_switches"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all threads; not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": the comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of proc(5))


def children(pid: int) -> list[int]:
    """The process's live child processes now (e.g. a background build it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:  # it ended between the listing and the read
            continue
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]  # fields 3 and 4 of proc(5)
        if int(parent) == pid and state != "Z":  # a zombie has ended: only its exit status is left
            found.append(int(entry.name))
    return found


def settle(pid: int, *, quiet_share: float = 0.05, step: float = 0.5, timeout: float = 300.0) -> float:
    """Wait until the process has no child process and used under `quiet_share` of a core over
    the last `step` seconds: what it does after starting (a component build in a subprocess,
    loading its native code) stays out of the window measured next. Returns the seconds waited;
    after `timeout` it stops waiting (the caller reports the wait, so a long one shows)."""
    started = time.monotonic()
    before = cpu_seconds(pid)
    while time.monotonic() - started < timeout:
        time.sleep(step)
        now = cpu_seconds(pid)
        if now - before < quiet_share * step and not children(pid):
            break
        before = now
    return time.monotonic() - started


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


def rss_bytes(pid: int) -> int:
    """The process's resident memory now, bytes (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The process's highest resident memory since it started, bytes (VmHWM, kept by the kernel)."""
    return _status_kib(pid, "VmHWM") * 1024


def thread_switches(pid: int) -> dict[str, int]:
    """Context switches (voluntary + involuntary) per thread so far, keyed "name/tid": a thread
    that sleeps and wakes counts one per wake-up, so two readings give each thread's wake-ups."""
    switches: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text(encoding="utf-8").strip()
            count = 0
            for line in (task / "status").read_text(encoding="ascii").splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    count += int(line.split()[1])
        except FileNotFoundError:  # the thread ended between the listing and the read
            continue
        switches[f"{name}/{task.name}"] = count
    return switches


def snapshot_profile(pid: int, path: Path, timeout: float = 15.0) -> dict[str, Any]:
    """Ask the process (started with CHARTER_PROFILE=`path`) for its `charter._profile.snapshot()`
    by SIGUSR1 and return it: {"process_cpu_s", "components_s", "counts"}.

    The handler replaces the file atomically; the old one is removed first, so the file that
    appears is this signal's answer. Raises RuntimeError if none appears within `timeout` s."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            snapshot: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return snapshot
        except FileNotFoundError:
            time.sleep(0.01)
    raise RuntimeError(f"process {pid} wrote no profile snapshot to {path} within {timeout:.0f} s of SIGUSR1")
