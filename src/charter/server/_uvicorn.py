"""uvicorn for `charter serve` and `charter mcp --http`, waking once a second when idle.

uvicorn's own main loop wakes ten times a second to check whether it should stop; this one
sleeps until a stop signal wakes it, or a second passes (the Date header's resolution), so
a server with no traffic costs next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from types import FrameType
from typing import Any

import uvicorn

from charter.errors import UsageError

__all__ = ["listen", "run", "url_host"]

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


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets (http://[::1]:8700)."""
    return f"[{host}]" if ":" in host else host


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, as uvicorn binds it, before anything is announced.

    Raises UsageError naming the address and what to do if it cannot be bound (in use, not an
    address of this machine, a privileged port)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise UsageError(f"cannot listen on {url_host(host)}:{port}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        hint = "another process listens there: stop it or give another HOST:PORT"
        if error.errno != errno.EADDRINUSE:
            hint = "give an address of this machine and a port you may use"
        raise UsageError(f"cannot listen on {url_host(host)}:{port} ({error.strerror}): {hint}") from None
    return sock


def run(app: Any, *, host: str, port: int, sock: socket.socket | None = None) -> None:
    """Serve `app` on host:port until SIGINT/SIGTERM (as `uvicorn.run`, warnings only); on
    `sock` if given (from `listen`), so a bind error came before the server was announced."""
    server = _QuietServer(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    server.run(sockets=[sock] if sock is not None else None)
