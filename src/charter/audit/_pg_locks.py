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

One session per thread: the locks a thread holds share one pooled connection (taken with its
first lock, returned with its last), since advisory locks stack within a session. A call with
several quota buckets holds them all until its decision is written; with a connection per lock,
8 such calls of 3 buckets would take 24 connections of a pool of 16 (CHARTER_DATABASE_POOL) and
wait on each other for the rest, starving the quota reads and the writer: with one per thread
they take 8, whatever the number of buckets. (A lock is released on the session that took it,
whichever thread releases it.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from charter.audit._locks import SideLock, slot_of
from charter.db import Database
from charter.errors import StoreUnavailable

__all__ = ["LogLock", "PgLock", "lock_session", "pg_lock"]

_SLOTS = 1 << 60  # as charter.audit._locks

_changed = threading.Condition()
_held: set[tuple[str, str, int]] = set()  # (url, suffix, slot) held by some thread of this process
_sessions: dict[tuple[str, str, int], _Session] = {}  # the session holding each held lock, under `_changed`
_threads: dict[tuple[str, int], _Session] = {}  # (url, thread id): the thread's lock session, under `_changed`


@dataclass(slots=True, eq=False)
class _Session:
    """A pooled connection holding the advisory locks of one thread; `uses`: its locks held or
    being taken. Back to the pool when `uses` drops to 0."""

    pool: Any
    raw: Any
    key: tuple[str, int]
    uses: int = 1


def _session(url: str) -> _Session:
    """This thread's lock session for `url` (one more use), from the pool if it has none."""
    import psycopg_pool

    from charter.db import pg_pool

    key = (url, threading.get_ident())
    with _changed:
        session = _threads.get(key)
        if session is not None:
            session.uses += 1
            return session
    pool = pg_pool(url)
    try:
        raw = pool.getconn()
    except psycopg_pool.PoolTimeout as error:
        raise StoreUnavailable(f"the audit log's locks: {Database.parse(url).shown}: {error}") from error
    session = _Session(pool, raw, key)
    with _changed:
        _threads[key] = session
    return session


@contextmanager
def lock_session(url: str) -> Iterator[Any | None]:
    """While this thread holds advisory locks in `url`, their session's psycopg connection (for
    the reads made under those locks: the quota totals), else None. A thread holding locks then
    never waits on the pool for a second connection while others wait on its locks: the pool
    cannot be drained by lock holders that each need one connection more."""
    with _changed:
        session = _threads.get((url, threading.get_ident()))
        if session is not None:
            session.uses += 1
    if session is None:
        yield None
        return
    try:
        yield session.raw
    finally:
        _done(session, broken=bool(session.raw.closed or session.raw.broken))


def _done(session: _Session, *, broken: bool = False) -> None:
    """One use of `session` less; the last gives its connection back (closed first if `broken`:
    its locks went with it)."""
    with _changed:
        session.uses -= 1
        if broken and _threads.get(session.key) is session:
            del _threads[session.key]  # nobody else takes a new lock on it
        if session.uses > 0:
            return
        if _threads.get(session.key) is session:
            del _threads[session.key]
    if broken:
        session.raw.close()
    session.pool.putconn(session.raw)


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

        session = _session(self.url)
        try:
            # Namespace and slot as two int4 (the two-key form of the advisory lock functions).
            function = "pg_advisory_lock" if blocking else "pg_try_advisory_lock"
            row = session.raw.execute(
                f"SELECT {function}(hashtext(%s), %s)", (self.suffix, _int4(self.slot))
            ).fetchone()
            taken = blocking or bool(row and row[0])
        except psycopg.Error as error:
            _done(session, broken=session.raw.closed or session.raw.broken)
            raise StoreUnavailable(
                f"the audit log's lock {self.suffix}: {Database.parse(self.url).shown}: {error}"
            ) from error
        if not taken:
            _done(session)
            return False
        with _changed:
            _sessions[self._mine] = session
        return True

    def release(self) -> None:
        """Give the lock back (on the session that took it), and the session to the pool with
        its last lock."""
        import psycopg

        with _changed:
            session = _sessions.pop(self._mine, None)
        try:
            if session is not None:
                try:
                    session.raw.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", (self.suffix, _int4(self.slot)))
                except psycopg.Error:
                    _done(session, broken=True)  # the session is gone or broken: its locks went with it
                else:
                    _done(session)
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
