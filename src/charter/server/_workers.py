"""`charter serve --workers N`: N worker processes serving one listening socket.

The parent binds and listens once, then forks N workers that share the socket (the kernel
hands each new connection to one of them) and does nothing else: it holds no store, pool,
sandbox or thread, so a fork copies nothing a child could misuse (a libpq socket, a lock
held by another thread). Each worker builds its own stores, connection pools, admission
control, sandbox and approvals worker after it starts (`start_worker(i)`), with
CHARTER_WORKER=i (1..N) in its environment: audit streams and signing keys are named by it.

The parent restarts a worker that ends while the server runs (killed, crashed): the others
keep serving meanwhile, and connections waiting in the shared socket's queue are not lost.
A worker that could not start (a usage or store error, exit status `STARTUP_FAILED`) stops
the server: every restart would fail the same way. SIGTERM or SIGINT to the parent stops every
worker (SIGTERM: each finishes its requests in flight, as one `charter serve` does) and ends it;
SIGHUP too (a closed terminal), so no worker outlives its supervisor.

Why not uvicorn's own supervisor: it spawns (not forks) workers that import the app by name,
so each would need the CLI's options passed through the environment, and it does not tell a
worker that cannot start from one that was killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from charter.errors import CharterError

__all__ = ["MAX_WORKERS", "STARTUP_FAILED", "WORKER_ENV", "prepare_in_child", "supervise", "worker_number"]

WORKER_ENV = "CHARTER_WORKER"
MAX_WORKERS = 64
STARTUP_FAILED = 3  # a worker's exit status when it could not start: not restarted
_BACKLOG = 2048  # connections the shared socket queues while every worker is busy (or restarting)
_STOP_GRACE_S = 30.0  # after SIGTERM, how long workers may finish their requests before SIGKILL
_QUICK_DEATH_S = 5.0  # a worker ending this soon after its start counts towards...
_QUICK_DEATHS = 5  # ...this many in a row, after which the parent gives up (a crash loop)
_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal went; workers must not outlive us
_SIGNALS = (signal.SIGCHLD, *_STOPS)


def worker_number() -> int | None:
    """This process's worker number (CHARTER_WORKER, 1..N) under `charter serve --workers`, else None."""
    text = os.environ.get(WORKER_ENV, "")
    return int(text) if text.isdigit() else None


_Mask = set[int | signal.Signals]  # a signal mask, as pthread_sigmask returns it


@dataclass
class _Worker:
    number: int
    pid: int
    started: float
    quick_deaths: int = 0


def _say(message: str) -> None:
    print(f"charter serve: {message}", file=sys.stderr, flush=True)


def _spawn(number: int, start_worker: Callable[[int], None], old_mask: _Mask) -> int:
    """Fork worker `number`; in the child run `start_worker(number)` and never return."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # The child: the parent's blocked signals and its signal handling are not the worker's.
    status = 1
    try:
        _end_with(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.environ[WORKER_ENV] = str(number)
        start_worker(number)
        status = 0
    except CharterError as error:
        print(f"error: worker {number}: {error}", file=sys.stderr, flush=True)
        status = STARTUP_FAILED
    except BaseException:  # a bug: its traceback, then the parent restarts the worker
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # never the parent's finally blocks or atexit handlers


def _end_with(parent: int) -> None:
    """A worker gets SIGTERM when its supervisor dies, however it dies (kill -9 included), so no
    worker is left serving unsupervised on the port (Linux's PR_SET_PDEATHSIG; elsewhere a worker
    outlives a killed supervisor and must be stopped by hand). If the supervisor died before this
    ran, the worker stops at once."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return f"killed by {signal.Signals(number).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def prepare_in_child(prepare: Callable[[], None]) -> bool:
    """Run `prepare()` in a child process and wait for it; False (its `error: ...` printed) if it
    raised a CharterError or failed. Workers opening a new database at once would each try to
    create its schema: this creates it once, before any worker, and the parent still opens no
    store, pool or thread of its own."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            prepare()
            status = 0
        except CharterError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            status = STARTUP_FAILED
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def supervise(sock: socket.socket, count: int, start_worker: Callable[[int], None]) -> int:
    """Serve with `count` workers sharing `sock` (bound, from `charter.server._uvicorn.listen`)
    until SIGTERM or SIGINT; returns the exit status for the command (0, or 1 when a worker
    could not start or kept dying at start). `start_worker(i)` runs in worker i (1..count):
    it builds the worker's stores and serves on `sock` until told to stop; a CharterError from
    it is a start-up failure (exit status STARTUP_FAILED, printed as `error: worker i: ...`)."""
    sock.listen(_BACKLOG)  # before any worker: connections made while they start wait in the queue
    # Signals are taken synchronously (sigtimedwait) and blocked before the first fork, so none
    # is missed between a fork and the wait; each child restores the mask first thing.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: dict[int, _Worker] = {}
    for number in range(1, count + 1):
        pid = _spawn(number, start_worker, old_mask)
        workers[pid] = _Worker(number, pid, time.monotonic())
    failed = False
    try:
        while True:
            received = signal.sigtimedwait(_SIGNALS, 5.0)
            if received is not None and received.si_signo in _STOPS:
                break
            if not _reap(workers, start_worker, old_mask):
                failed = True
                break
    finally:
        _stop(workers)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return 1 if failed else 0


def _reap(workers: dict[int, _Worker], start_worker: Callable[[int], None], old_mask: _Mask) -> bool:
    """Collect every ended worker and start it again; False if the server must stop instead."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return True
        worker = workers.pop(pid, None)
        if worker is None:
            continue
        if not os.WIFSIGNALED(status) and os.waitstatus_to_exitcode(status) == STARTUP_FAILED:
            _say(f"worker {worker.number} could not start: stopping the server")
            return False
        now = time.monotonic()
        quick = worker.quick_deaths + 1 if now - worker.started < _QUICK_DEATH_S else 0
        if quick >= _QUICK_DEATHS:
            _say(
                f"worker {worker.number} {_ended(status)}, {quick} times within {_QUICK_DEATH_S:.0f} s of its start: "
                "stopping the server"
            )
            return False
        _say(f"worker {worker.number} (pid {pid}) {_ended(status)}; starting it again")
        if quick:
            time.sleep(0.2 * quick)  # a worker dying at start: do not spin
        new = _spawn(worker.number, start_worker, old_mask)
        workers[new] = _Worker(worker.number, new, time.monotonic(), quick)


def _stop(workers: dict[int, _Worker]) -> None:
    """SIGTERM every worker, wait up to `_STOP_GRACE_S` for them, then SIGKILL what is left."""
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while workers and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            break
        if pid == 0:
            time.sleep(0.05)
            continue
        workers.pop(pid, None)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
