"""Keyed locks beside an audit database: `<audit.db><suffix>`, one byte per key.

    lock = side_lock(audit.path, ".resume-locks", approval_id)
    if not lock.acquire(blocking=False): ...     # held by another thread or process
    try: ... finally: lock.release()

The one implementation of the cross-process exclusions the audit database's users need (the
quota buckets, the approval decision lock, the resume lock). A key is hashed to a byte offset
of the lock file (sha256, first 8 bytes, modulo `slots`); two keys that share a slot share the
lock, which only makes them wait on each other. The lock has two layers, taken in this order:

- in the process: the (lock file, offset) pair is marked held under one condition variable,
  so two threads never hold the same slot (POSIX record locks belong to the process: a second
  `lockf` by the same process on the same byte succeeds at once, and releasing either would
  drop both);
- across processes: a POSIX record lock (`fcntl.lockf`) on that byte, through one descriptor
  per lock file for the process, never closed (closing any descriptor of a file drops all of
  the process's record locks on it).

POSIX only. Where there is no fcntl (Windows), or the lock file cannot be opened (a read-only
folder), a lock made with `best_effort=True` excludes within the process only, and one made
without it raises OSError on `acquire`: a caller whose guarantee needs other processes fails
closed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SideLock", "side_lock", "slot_of"]

_SLOTS = 1 << 60

_changed = threading.Condition()
_held: set[tuple[str, int]] = set()  # (lock file, offset) held by some thread of this process
_fds: dict[str, int | None] = {}  # lock file -> its descriptor (None: cannot be opened), under `_changed`


def side_lock(database: Path, suffix: str, key: str, *, slots: int = _SLOTS, best_effort: bool = False) -> SideLock:
    """The lock of `key` in `<database><suffix>` (see the module); `slots` (>= 1) bounds the offsets."""
    return SideLock(f"{database}{suffix}", slot_of(key, slots), best_effort)


def slot_of(key: str, slots: int = _SLOTS) -> int:
    """The slot a key's lock takes: sha256 of the key, first 8 bytes, modulo `slots` (>= 1).
    The same for every kind of lock (this module's, charter.audit._pg_locks')."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % slots


@dataclass(frozen=True, order=True, slots=True)
class SideLock:
    """One slot of one lock file. Equal locks are the same lock; order by (file, offset) to take
    several without two takers waiting on each other in a cycle. Not reentrant."""

    path: str
    offset: int
    best_effort: bool = False

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock: True once held; False when `blocking` is False and another thread or
        process holds it. Raises OSError if the lock file cannot be opened or locked (and the
        lock is not `best_effort`)."""
        mine = (self.path, self.offset)
        with _changed:
            while mine in _held:
                if not blocking:
                    return False
                _changed.wait()
            _held.add(mine)
            try:
                fd = self._fd()
            except BaseException:
                self._forget()
                raise
        if fd is None:
            return True
        import fcntl  # POSIX: `_fd` gives None elsewhere

        try:
            fcntl.lockf(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.offset)
        except OSError:
            with _changed:
                self._forget()
            if blocking:
                raise
            return False
        except BaseException:
            with _changed:
                self._forget()
            raise
        return True

    def release(self) -> None:
        """Give the lock back (held by this thread)."""
        try:
            fd = _fds.get(self.path)
            if fd is not None:
                import fcntl

                fcntl.lockf(fd, fcntl.LOCK_UN, 1, self.offset)
        finally:
            with _changed:
                self._forget()

    def _forget(self) -> None:
        # Under `_changed`.
        _held.discard((self.path, self.offset))
        _changed.notify_all()

    def _fd(self) -> int | None:
        # Under `_changed`.
        if self.path not in _fds:
            fd: int | None = None
            if sys.platform != "win32":
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError:
                    if not self.best_effort:
                        raise
            _fds[self.path] = fd
        fd = _fds[self.path]
        if fd is None and not self.best_effort:
            raise OSError(
                f"the lock file {self.path} cannot be opened (or this platform has no fcntl): "
                "other processes sharing this audit log could not be excluded"
            )
        return fd
