"""A real TCP proxy on loopback that breaks HTTP exchanges the way networks and services do.

It parses each request off the socket, forwards it to the real service (or not), and then
answers, answers late, answers 500, or drops the connection, as the plan for that request
says. It records every request it saw and whether it reached the service, so a test can
assert that nothing was sent twice.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

# forward | drop_after | delay_after:<seconds> | error_500 | error_500_after | close_before
Plan = Callable[[str, str], str]  # (method, path) -> what to do with this request


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    forwarded: bool


@dataclass
class FaultyProxy:
    upstream: str
    plan: Plan = lambda method, path: "forward"
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._client = httpx.Client(base_url=self.upstream, timeout=30)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._listener.close()
        self._client.close()

    def forwarded(self, method: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.forwarded]

    def _accept(self) -> None:
        while not self._stop:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                action = self.plan(method, target)
                seen = Seen(method, target, headers, body, forwarded=False)
                self.seen.append(seen)
                if action == "close_before":
                    return
                if action == "error_500":
                    connection.sendall(_response(500, b'{"detail": "internal error"}', {}))
                    continue
                passed = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
                upstream = self._client.request(method, target, content=body, headers=passed)
                seen.forwarded = True
                if action == "drop_after":
                    connection.shutdown(socket.SHUT_RDWR)
                    return
                if action.startswith("delay_after:"):
                    time.sleep(float(action.split(":", 1)[1]))
                if action == "error_500_after":
                    connection.sendall(_response(500, b'{"detail": "internal error"}', {}))
                    continue
                kept = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "etag")}
                try:
                    connection.sendall(_response(upstream.status_code, upstream.content, kept))
                except OSError:
                    return


def _response(status: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if "content-type" not in {k.lower() for k in headers}:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
