"""Admission control: a bound on the runs in flight, a bounded queue, and a quick refusal beyond.

Each run holds its sandbox's memory (up to the contract's `limits.memory_mib`) while it is in
flight, so the server's memory is bounded by its base plus `max_runs` times that limit only if
no more than `max_runs` runs are in flight. A route that runs a program takes a slot on the
event loop, before its thread hop, and only once the request is authenticated and its body
validated (a request that can never run takes no place); with every slot taken it waits in a
FIFO queue of at most `queue` requests (`wait_or_leave`, which gives the place up when the
client disconnects); beyond that the route answers at once with 503, problem type
`overloaded` and `Retry-After`, and nothing else happens (no run, no Idempotency-Key claim: a
retry with the same key runs normally).

`RunSlots` serves one event loop (uvicorn's): its counters need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["DEFAULT_MAX_RUNS", "DEFAULT_QUEUE", "RunSlots"]

# Runs in flight: enough to keep two cores busy while runs wait on the disk and on backends;
# each may hold its contract's sandbox memory limit (128 MiB by default).
DEFAULT_MAX_RUNS = 8
# Requests waiting for a slot: deep enough that 32 clients at once are all answered (none refused).
DEFAULT_QUEUE = 64

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]  # ASGI's


class RunSlots:
    """`max_runs` slots for runs in flight and a FIFO queue of at most `queue` requests waiting
    for one. Used on one event loop only."""

    def __init__(self, max_runs: int = DEFAULT_MAX_RUNS, queue: int = DEFAULT_QUEUE) -> None:
        if max_runs < 1 or queue < 0:
            raise ValueError(f"max_runs must be at least 1 and queue at least 0 (got {max_runs}, {queue})")
        self.max_runs, self.queue = max_runs, queue
        self.in_flight = 0
        self.refused = 0  # requests refused since start
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._held_seconds = 0.5  # a moving average of how long a request holds its slot

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free for a new request: the queue ahead of it, drained
        `max_runs` at a time at the recent pace (1 to 60)."""
        ahead = (len(self._waiting) + 1) / self.max_runs
        return max(1, min(60, math.ceil(ahead * self._held_seconds)))

    def refusal(self, again: str) -> str:
        """Count a refusal; the problem's detail, ending with `again`: how the caller retries in
        its protocol, e.g. "send the request again in 2 s" (`retry_after()` seconds)."""
        self.refused += 1
        return (
            # The counts as they are (not the limits): a count that disagrees with the limits shows at once.
            f"{self.in_flight} runs are in flight (at most {self.max_runs}) and {self.waiting} requests are waiting "
            f"(at most {self.queue}); nothing was run or recorded: {again}"
        )

    def take(self) -> bool:
        """Take a free slot at once if there is one and nobody waits for it."""
        if self.in_flight < self.max_runs and not self._waiting:
            self.in_flight += 1
            return True
        return False

    async def wait(self) -> None:
        """Wait in the queue (the caller checked it has room) until a slot is handed over.
        Cancelled while waiting, it leaves the queue and no slot taken."""
        slot = self._join()
        try:
            await slot  # `release` hands its slot over: `in_flight` already counts this request
        except BaseException:
            self._leave(slot)
            raise

    def _join(self) -> asyncio.Future[None]:
        # In the queue at once, in the same step as the `take()` that failed: a run that ends
        # from here on hands this request its slot. Joining later (in a task of its own, which
        # starts on a later turn of the loop) let that run's `release` find nobody waiting and
        # free the slot; the request then waited for a release no run would make, and, as
        # `take()` gives no slot while anyone waits, so did every request after it.
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        return slot

    def _leave(self, slot: asyncio.Future[None]) -> None:
        """Give a place up: a slot handed over meanwhile is passed on, else the place goes."""
        if slot.done() and not slot.cancelled():
            self.release()
            return
        slot.cancel()
        with contextlib.suppress(ValueError):  # `release` may have dropped it already
            self._waiting.remove(slot)

    def release(self, held_seconds: float | None = None) -> None:
        """Hand the slot to the first request still waiting, or free it."""
        if held_seconds is not None:
            self._held_seconds = 0.8 * self._held_seconds + 0.2 * held_seconds
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.in_flight -= 1

    async def wait_or_leave(self, receive: Receive) -> bool:
        """Wait in the queue (the caller checked it has room), watching the connection: True once
        a slot is handed over, False if the client disconnected first (its place given up).
        `receive` is the request's ASGI receive, its body already read: only a disconnect comes."""
        slot = self._join()
        gone = asyncio.ensure_future(receive())
        try:
            await asyncio.wait((slot, gone), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            gone.cancel()
            self._leave(slot)
            raise
        if slot.done():
            gone.cancel()  # the response's own disconnect watch takes over
            return True
        self._leave(slot)  # the client left first: its place goes (a slot handed over meanwhile is passed on)
        return False
