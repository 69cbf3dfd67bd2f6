"""uvicorn for `charter serve` and `charter mcp --http`, waking once a second when idle.

uvicorn's own main loop wakes ten times a second to check whether it should stop; this one
sleeps until a stop signal wakes it, or a second passes (the Date header's resolution), so
a server with no traffic costs next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType
from typing import Any

import uvicorn

__all__ = ["run"]

_TICKS_PER_WAKE = 10  # uvicorn's on_tick counts tenths of a second: one wake = ten of them


class _QuietServer(uvicorn.Server):
    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + _TICKS_PER_WAKE) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)  # stop now, not at the next second


def run(app: Any, *, host: str, port: int) -> None:
    """Serve `app` on host:port until SIGINT/SIGTERM (as `uvicorn.run`, warnings only)."""
    _QuietServer(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
