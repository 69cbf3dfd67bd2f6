"""Admission control: a bound on the runs in flight, a bounded queue, and a quick refusal beyond.

Each run holds its sandbox's memory (up to the contract's `limits.memory_mib`) while it is in
flight, so the server's memory is bounded by its base plus `max_runs` times that limit only if
no more than `max_runs` runs are in flight. `Admission` is plain ASGI middleware in front of the
routes that run a program: a request takes a slot on the event loop, before its thread hop;
with every slot taken it waits in a FIFO queue of at most `queue` requests; beyond that it is
answered at once with 503, problem type `overloaded` and `Retry-After`, and nothing else
happens (no run, no Idempotency-Key claim: a retry with the same key runs normally).

`RunSlots` serves one event loop (uvicorn's): its counters need no lock.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_RUNS", "DEFAULT_QUEUE", "Admission", "RunSlots"]

# Runs in flight: enough to keep two cores busy while runs wait on the disk and on backends;
# each may hold its contract's sandbox memory limit (128 MiB by default).
DEFAULT_MAX_RUNS = 8
# Requests waiting for a slot: deep enough that 32 clients at once are all answered (none refused).
DEFAULT_QUEUE = 64

Refuse = Callable[..., ASGIApp]  # problem_response(kind, detail, instance, headers)


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

    def take(self) -> bool:
        """Take a free slot at once if there is one and nobody waits for it."""
        if self.in_flight < self.max_runs and not self._waiting:
            self.in_flight += 1
            return True
        return False

    async def wait(self) -> None:
        """Wait in the queue (the caller checked it has room) until a slot is handed over.
        Cancelled while waiting, it leaves the queue and no slot taken."""
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        try:
            await slot  # `release` hands its slot over: `in_flight` already counts this request
        except BaseException:
            if slot.done() and not slot.cancelled():
                self.release()  # it was handed a slot just as it was cancelled: pass it on
            else:
                self._waiting.remove(slot)
            raise

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


class Admission:
    """ASGI middleware: requests of `routes` (METHOD, path regex) take one of `slots` first;
    `refuse` builds the 503 `overloaded` problem for those refused."""

    def __init__(
        self, app: ASGIApp, *, slots: RunSlots, routes: Collection[tuple[str, re.Pattern[str]]], refuse: Refuse
    ) -> None:
        self.app, self.slots, self.routes, self.refuse = app, slots, tuple(routes), refuse

    def _admits(self, scope: Scope) -> bool:
        method, path = scope.get("method", ""), scope.get("path", "")
        return any(method == m and pattern.match(path) for m, pattern in self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._admits(scope):
            await self.app(scope, receive, send)
            return
        slots = self.slots
        if not slots.take():
            if slots.waiting >= slots.queue:
                await self._refuse(scope, receive, send)
                return
            admitted = await self._wait_for_slot(receive)
            if admitted is None:
                return  # the client left while its request waited: it is not run
            receive = admitted
        started = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release(time.monotonic() - started)

    async def _wait_for_slot(self, receive: Receive) -> Receive | None:
        """Wait in the queue, watching the connection: the receive to run with once a slot is
        handed over, or None if the client disconnected first (its place given up)."""
        body: list[Message] = []
        while True:  # the request's body (already read by the body limit), kept for the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body.append(message)
            if not message.get("more_body", False):
                break
        waited = asyncio.ensure_future(self.slots.wait())
        gone = asyncio.ensure_future(receive())  # after the body, only a disconnect comes
        try:
            await asyncio.wait((waited, gone), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            gone.cancel()
            waited.cancel()
            raise
        if not waited.done():
            waited.cancel()  # `wait` gives its place up (or passes on a slot handed over meanwhile)
            return None

        async def replay() -> Message:
            return body.pop(0) if body else await gone

        return replay

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        slots = self.slots
        slots.refused += 1
        seconds = slots.retry_after()
        detail = (
            f"{slots.max_runs} runs are in flight and {slots.waiting} requests are waiting, the most this "
            f"server takes; nothing was run or recorded: send the request again in {seconds} s (with the same "
            "Idempotency-Key, if it had one)"
        )
        refusal = self.refuse("overloaded", detail, scope.get("path", ""), {"Retry-After": str(seconds)})
        await refusal(scope, receive, send)
