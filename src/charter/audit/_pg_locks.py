"""Keyed locks among an audit log's users on PostgreSQL: session advisory locks.

    lock = pg_lock(database, ".resume-locks", approval_id)
    if not lock.acquire(blocking=False): ...     # held by another thread, process or host
    try: ... finally: lock.release()

The PostgreSQL form of `charter.audit._locks.side_lock` (same interface, same key hashing): a
key is sha256-hashed to a slot (first 8 bytes, modulo `slots`), and the lock is the advisory
lock `pg_advisory_lock(hashtext(suffix), slot as int4)`: the suffix is the namespace, so the
quota buckets, the approval decision and the resume locks never collide with each other (two
keys sharing a slot only wait on each other). Two layers, taken in this order:

- in the process: (database, suffix, slot) is marked held under one condition variable, so two
  threads never hold the same slot (advisory locks are reentrant within one session, and each
  thread would otherwise need a session of its own to be excluded at all);
- across processes and hosts: the session advisory lock, on a connection taken from the pool
  and HELD until `release` (an advisory lock belongs to its session: returning the connection
  would keep the lock held by whoever takes it next). If the connection dies, the server drops
  the lock with the session.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from charter.audit._locks import SideLock, slot_of
from charter.db import Database
from charter.errors import StoreUnavailable

__all__ = ["LogLock", "PgLock", "pg_lock"]

_SLOTS = 1 << 60  # as charter.audit._locks

_changed = threading.Condition()
_held: set[tuple[str, str, int]] = set()  # (url, suffix, slot) held by some thread of this process
_sessions: dict[tuple[str, str, int], Any] = {}  # the held lock's psycopg connection, under `_changed`


def pg_lock(database: Database, suffix: str, key: str, *, slots: int = _SLOTS) -> PgLock:
    """The lock of `key` in namespace `suffix` of `database` (see the module)."""
    return PgLock(database.url, suffix, slot_of(key, slots))


@dataclass(frozen=True, order=True, slots=True)
class PgLock:
    """One advisory lock slot. Equal locks are the same lock; ordered like SideLock, so several
    are taken in one order without a cycle. Not reentrant."""

    url: str
    suffix: str
    slot: int
    best_effort: bool = False  # the SideLock interface; an advisory lock always spans processes

    @property
    def _mine(self) -> tuple[str, str, int]:
        return (self.url, self.suffix, self.slot)

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock: True once held; False when `blocking` is False and another thread or
        session holds it. Raises StoreUnavailable if the database cannot be reached."""
        mine = self._mine
        with _changed:
            while mine in _held:
                if not blocking:
                    return False
                _changed.wait()
            _held.add(mine)
        try:
            taken = self._take(blocking)
        except BaseException:
            with _changed:
                self._forget()
            raise
        if not taken:
            with _changed:
                self._forget()
        return taken

    def _take(self, blocking: bool) -> bool:
        import psycopg
        import psycopg_pool

        from charter.db import pg_pool

        pool = pg_pool(self.url)
        try:
            raw = pool.getconn()
        except psycopg_pool.PoolTimeout as error:
            raise StoreUnavailable(
                f"the audit log's lock {self.suffix}: {Database.parse(self.url).shown}: {error}"
            ) from error
        try:
            # Namespace and slot as two int4 (the two-key form of the advisory lock functions).
            function = "pg_advisory_lock" if blocking else "pg_try_advisory_lock"
            row = raw.execute(f"SELECT {function}(hashtext(%s), %s)", (self.suffix, _int4(self.slot))).fetchone()
            taken = blocking or bool(row and row[0])
        except psycopg.Error as error:
            pool.putconn(raw)
            raise StoreUnavailable(
                f"the audit log's lock {self.suffix}: {Database.parse(self.url).shown}: {error}"
            ) from error
        if not taken:
            pool.putconn(raw)
            return False
        with _changed:
            _sessions[self._mine] = (pool, raw)
        return True

    def release(self) -> None:
        """Give the lock back (held by this thread) and its session to the pool."""
        import psycopg

        with _changed:
            held = _sessions.pop(self._mine, None)
        try:
            if held is not None:
                pool, raw = held
                try:
                    raw.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", (self.suffix, _int4(self.slot)))
                except psycopg.Error:
                    raw.close()  # the session is gone or broken: its locks went with it
                pool.putconn(raw)
        finally:
            with _changed:
                self._forget()

    def _forget(self) -> None:
        # Under `_changed`.
        _held.discard(self._mine)
        _changed.notify_all()


def _int4(slot: int) -> int:
    return slot % (1 << 32) - (1 << 31)


# What `AuditLog.lock` returns: the lock file's slot (SQLite) or the advisory lock (PostgreSQL).
LogLock = SideLock | PgLock
