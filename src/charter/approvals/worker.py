"""The resume worker: resumes decided approvals off the request thread, until each is sealed.

    worker = ResumeWorker(resumer, store, on_sealed=print)
    worker.start()            # at once: expire what is due, resume what was decided while down
    worker.notify(approval_id)   # after a decision: resume it now rather than at the next poll
    worker.stop()

Every poll (and on `notify`) it denies the requests that expired unanswered
(`ApprovalStore.expire_due`), then resumes every decided approval whose resume is not sealed
(`pending_resumes`). Those two read every approval and resume receipt of the log, so a wake
with nothing new does not run them: each `poll_seconds` it counts the log's approval
receipts (an index range) and polls only when that count moved (a request or a decision,
from any process), on `notify`, while a resume waits for its retry, and at least every
`FULL_POLL_WAKES` wakes (an expiry falls due, a resume another process left unsealed).

A resume that raises is logged and tried again at a later poll, with an
exponential backoff per approval (at most 60 s); RESUME_IN_PROGRESS (another thread or process
holds it) is skipped silently. So a resume interrupted by a crash or a restart is picked up
again when a worker next starts. A resume the backend's absence stopped before the approved
call took effect (`Resumer.retryable`: sealed failed BACKEND_UNAVAILABLE) does not spend the
approval: it is retried with the same backoff until a resume is final. That retry list is kept
in memory: after a restart, such an approval is resumed again on its next `notify` or by
`charter approvals resume` (the approvals index counts its resume as sealed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from charter.approvals import ApprovalStore
from charter.approvals.resume import ResumeInProgress, Resumer
from charter.runner import Execution

__all__ = ["ResumeWorker"]

_log = logging.getLogger("charter.approvals")
MAX_BACKOFF_SECONDS = 60.0
FULL_POLL_WAKES = 30  # with nothing new, a full poll every 30 wakes (30 s at the default poll)


class ResumeWorker:
    """A daemon thread resuming decided approvals (see the module)."""

    def __init__(
        self,
        resumer: Resumer,
        store: ApprovalStore,
        *,
        poll_seconds: float = 1.0,
        on_sealed: Callable[[Execution], None] | None = None,
    ) -> None:
        self.resumer = resumer
        self.store = store
        self.poll_seconds = poll_seconds
        self.on_sealed = on_sealed
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._notified: list[str] = []
        self._lock = threading.Lock()
        self._retry: dict[str, tuple[float, float]] = {}  # approval -> (not before, backoff seconds)
        self.failures: dict[str, str] = {}  # approval -> the last error, until it is sealed
        self._retrying: set[str] = set()  # approvals whose last resume is retryable (the backend stopped it)
        self._marker: int | None = None  # the approval receipts counted before the last full poll
        self._last_full = float("-inf")  # time.monotonic() of the last full poll

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="charter-resume-worker", daemon=True)
        self._thread.start()

    def notify(self, approval_id: str) -> None:
        """A decision was made: resume it as soon as possible (its backoff is reset)."""
        with self._lock:
            self._notified.append(approval_id)
            self._retry.pop(approval_id, None)
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._due():
                    self.poll()
            except Exception:  # the store itself failed: tried again next poll
                _log.exception("charter: the resume worker could not read the approvals")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _due(self) -> bool:
        """Is a full poll needed now? (See the module.)"""
        with self._lock:
            if self._notified or self._retry or self._retrying:
                return True
        if time.monotonic() - self._last_full >= self.poll_seconds * FULL_POLL_WAKES:
            return True
        return self._approval_receipts() != self._marker

    def _approval_receipts(self) -> int:
        """How many approval requests and decisions the log holds (from the worker's thread, on the
        log's reader: on SQLite that thread's connection, kept between wakes)."""
        with self.store.audit.reader() as connection:
            row = connection.execute(
                "SELECT COUNT(*) FROM receipts WHERE kind IN ('approval_request', 'approval_decision')"
            ).fetchone()
        return int(row[0])

    def poll(self) -> list[Execution]:
        """One round: expire what is due, then resume every decided approval not yet sealed
        (those whose backoff has passed). Returns the resumes sealed in this round."""
        if threading.current_thread() is self._thread:  # counted first: a change during the poll is seen next wake
            self._marker, self._last_full = self._approval_receipts(), time.monotonic()
        try:
            self.store.expire_due()
        except Exception:
            _log.exception("charter: expiring approvals failed")
        with self._lock:
            notified, self._notified = self._notified, []
        with self._lock:
            retrying = sorted(self._retrying)
        pending = list(dict.fromkeys([*notified, *self.store.pending_resumes(), *retrying]))
        sealed: list[Execution] = []
        for approval_id in pending:
            if self._stopping.is_set():
                break
            execution = self._resume(approval_id)
            if execution is not None:
                sealed.append(execution)
        return sealed

    def _later(self, approval_id: str, backoff: float, why: str) -> None:
        """Try `approval_id` again after the next backoff (doubled, at most MAX_BACKOFF_SECONDS)."""
        backoff = min(max(backoff * 2, self.poll_seconds, 0.5), MAX_BACKOFF_SECONDS)
        with self._lock:
            self._retry[approval_id] = (time.monotonic() + backoff, backoff)
        self.failures[approval_id] = why
        _log.warning("charter: resuming approval %s failed (%s); retrying in %.0f s", approval_id, why, backoff)

    def _resume(self, approval_id: str) -> Execution | None:
        now = time.monotonic()
        with self._lock:
            not_before, backoff = self._retry.get(approval_id, (0.0, 0.0))
        if now < not_before:
            return None
        try:
            execution = self.resumer.resume(approval_id)
        except ResumeInProgress:
            return None
        except Exception as error:
            self._later(approval_id, backoff, f"{type(error).__name__}: {error}")
            return None
        if self.resumer.retryable(execution):
            with self._lock:
                self._retrying.add(approval_id)
            self._later(approval_id, backoff, f"run {execution.run_id} failed BACKEND_UNAVAILABLE: {execution.reason}")
            return None
        with self._lock:
            self._retry.pop(approval_id, None)
            self._retrying.discard(approval_id)
        self.failures.pop(approval_id, None)
        if self.on_sealed is not None:
            try:
                self.on_sealed(execution)
            except Exception:
                _log.exception("charter: on_sealed failed for approval %s", approval_id)
        return execution
