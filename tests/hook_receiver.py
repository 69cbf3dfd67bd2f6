"""A webhook receiver for tests: a real HTTP server on loopback recording each POST."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HookReceiver:
    """Answers each POST to `url` with the next of `statuses` (then 204), after `delay` seconds,
    and records it in `deliveries`: (headers, body, status answered)."""

    def __init__(self, path: str = "/hook", statuses: Sequence[int] = (), delay: float = 0.0) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        self.arrived = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                with receiver.lock:
                    count = len(receiver.deliveries)
                    status = statuses[count] if count < len(statuses) else 204
                    receiver.deliveries.append((dict(self.headers.items()), body, status))
                receiver.arrived.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Until `count` deliveries arrived (fails the test after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, self.deliveries
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiving(path: str = "/hook", statuses: Sequence[int] = (), delay: float = 0.0) -> Iterator[HookReceiver]:
    """A HookReceiver for the block, closed after it."""
    receiver = HookReceiver(path, statuses, delay)
    try:
        yield receiver
    finally:
        receiver.close()
