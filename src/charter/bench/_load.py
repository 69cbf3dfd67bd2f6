"""The bench's load generator: one thread per client, each with its own `http.client`
connection, opened before the timed window and kept alive through it.

Why this and not httpx: the generator shares the machine's cores with the processes it
measures, so its own CPU per request is a cost charged to them. A GET through
`http.client` costs about a third of the CPU of the same GET through httpx (0.22 vs 0.7 ms
measured for issue 17), and a thread per client with a blocking connection is the least
machinery that keeps N requests in flight. Nothing is parsed inside the window: replies
are kept as bytes and judged afterwards. The bench reports the generator's CPU per request.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Client", "LoadResult", "Reply", "Request", "opened_clients", "run_load"]


@dataclass(frozen=True, slots=True)
class Request:
    """What one client sends: method, path, body (bytes or None) and headers."""

    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Reply:
    """One answered request: which one (`n`), its HTTP status, latency (ms), body and Retry-After."""

    n: int
    status: int
    latency_ms: float
    body: bytes
    retry_after: str | None


@dataclass(slots=True)
class LoadResult:
    """Every reply, every transport error (n, "Type: message"), the window's length (s, from the
    first request to the last reply) and how many connections had to be (re)opened inside it."""

    replies: list[Reply] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    reconnects: int = 0


# A connection idle longer than this is closed before its next request: uvicorn closes idle
# keep-alive connections after 5 s, and a request written into a closed one fails (BrokenPipe),
# which would count a client's stale socket as the server's error.
_IDLE_SECONDS = 2.0


class Client:
    """One keep-alive HTTP/1.1 connection. `open()` connects (do it before the window); after
    a reply that closes the connection, an error, or `_IDLE_SECONDS` unused (a wait for
    Retry-After), the next request reconnects."""

    def __init__(self, host: str, port: int, timeout: float = 120.0) -> None:
        self._connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self._used = 0.0  # perf_counter() at the last reply

    def open(self) -> None:
        self._connection.connect()
        self._used = time.perf_counter()

    def must_connect(self) -> bool:
        """Whether the next request opens a new connection; closes one idle too long first."""
        if self._connection.sock is not None and time.perf_counter() - self._used > _IDLE_SECONDS:
            self._connection.close()
        return self._connection.sock is None

    def send(self, request: Request) -> tuple[int, bytes, str | None]:
        """(status, body, Retry-After) of one request. Raises OSError or http.client.HTTPException."""
        connection = self._connection
        try:
            connection.request(request.method, request.path, body=request.body, headers=request.headers)
            response = connection.getresponse()
            body = response.read()
        except BaseException:
            connection.close()
            raise
        self._used = time.perf_counter()
        return response.status, body, response.getheader("Retry-After")

    def close(self) -> None:
        self._connection.close()


def run_load(
    clients: list[Client],
    seconds: float,
    request_for: Callable[[int], Request],
    *,
    at_start: Callable[[], None] | None = None,
    keep_bodies: bool = True,
    honour_retry_after: bool = False,
) -> LoadResult:
    """Each client in its own thread sends `request_for(n)` (n = its index, then + len(clients)
    per request) until `seconds` have passed, then finishes the request it is in. The threads
    start first and wait; `at_start()` runs just before they are released (the window's first
    reading), and the result's `seconds` runs from their release to the last reply.
    `honour_retry_after`: after a 503 with Retry-After (seconds), that client waits as long
    (at most until the window ends) before its next request, as a well-behaved client does."""
    result = LoadResult()
    lock = threading.Lock()
    go = threading.Event()
    stop_at = [0.0]
    count = len(clients)

    def client_loop(index: int, client: Client) -> None:
        replies: list[Reply] = []
        failures: list[tuple[int, str]] = []
        reconnects = 0
        n = index
        go.wait()
        while time.perf_counter() < stop_at[0]:
            request = request_for(n)
            if client.must_connect():
                reconnects += 1
            started = time.perf_counter()
            try:
                status, body, retry_after = client.send(request)
            except (OSError, http.client.HTTPException) as error:  # TimeoutError is an OSError
                failures.append((n, f"{type(error).__name__}: {error}"))
            else:
                elapsed = (time.perf_counter() - started) * 1000
                replies.append(Reply(n, status, elapsed, body if keep_bodies else b"", retry_after))
                if honour_retry_after and status == 503 and retry_after is not None and retry_after.isdigit():
                    time.sleep(max(0.0, min(float(retry_after), stop_at[0] - time.perf_counter())))
            n += count
        with lock:
            result.replies.extend(replies)
            result.failures.extend(failures)
            result.reconnects += reconnects

    threads = [threading.Thread(target=client_loop, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    if at_start is not None:
        at_start()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    go.set()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


def opened_clients(host: str, port: int, count: int) -> list[Client]:
    """`count` clients, each connected now (before any timed window)."""
    clients = [Client(host, port) for _ in range(count)]
    for client in clients:
        client.open()
    return clients
