"""A run's deadline on every socket operation of an HTTP backend call.

A timeout per operation (connect, one write, one read) does not bound a call: a service that
trickles its answer a byte at a time holds it open far past its run's wall time. The lean
client (`_lean`) clamps every connect, write and read to what remains of the calling thread's
deadline (`until`, `clamp`) and raises httpx's timeout when none remains: a call ends by its
run's deadline, whatever the service does. So an HTTP backend cannot block past its run's wall
time, and the gate may call it on the run's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["clamp", "until"]

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


def clamp(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` cut to what remains of the calling thread's deadline; raises `error` (an
    exception class taking a message) when nothing remains."""
    deadline: float | None = getattr(_local, "at", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the run's wall time ran out")
    return left if timeout is None else min(timeout, left)
