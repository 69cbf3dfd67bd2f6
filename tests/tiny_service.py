"""A tiny real HTTP service on loopback that answers each (method, path) with a canned
response: for a backend that says what a real service never should (a mistyped body,
a 5xx with a secret in it)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answers = dict[tuple[str, str], tuple[int, Any]]  # (method, path) -> (status, JSON body)


@contextmanager
def tiny_service(answers: Answers) -> Iterator[str]:
    """Serve `answers` on 127.0.0.1; yields the base URL. Anything else is a 404 problem."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, body = answers.get((self.command, self.path), (404, {"detail": "no such thing"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="tiny-service", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
