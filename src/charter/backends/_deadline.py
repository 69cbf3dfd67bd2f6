"""A run's deadline on every socket operation of an HTTP backend call.

httpx's timeouts bound each operation (connect, one write, one read) separately, so a service
that trickles its answer a byte at a time can hold a call open far past its run's wall time.
`DeadlineTransport` is httpx's own transport whose connections clamp every connect, write and
read to what remains of the calling thread's deadline (`until`), and raise httpx's timeout
when none remains: a call ends by its run's deadline, whatever the service does. So an HTTP
backend cannot block past its run's wall time, and the gate may call it on the run's thread.
"""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpcore
import httpx

__all__ = ["DeadlineTransport", "until"]

_local = threading.local()  # .at: the calling thread's deadline (time.monotonic()), or None


@contextmanager
def until(deadline: float | None) -> Iterator[None]:
    """Calls made by this thread inside the block end by `deadline` (time.monotonic(); None: no bound)."""
    outer = getattr(_local, "at", None)
    _local.at = deadline
    try:
        yield
    finally:
        _local.at = outer


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    deadline: float | None = getattr(_local, "at", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the run's wall time ran out")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx.HTTPTransport (same arguments) whose socket operations end by the deadline of `until`."""

    def __init__(self, **kwargs: typing.Any) -> None:
        super().__init__(**kwargs)
        # httpx builds its pool itself and offers no argument for its network backend; the
        # pool hands this one to every connection it opens (none is open yet).
        if isinstance(self._pool, httpcore.ConnectionPool):
            self._pool._network_backend = _Backend()
