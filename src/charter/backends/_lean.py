"""A lean HTTP/1.1 client for backend calls: `http.client` over a small keep-alive pool.

httpx costs about 0.7-0.9 ms of CPU per GET on loopback, `http.client` about 0.25: a governed
request makes one to three backend calls, so this is a measurable share of `charter serve`'s
CPU. It does only what `HttpBackend` needs (no redirects, cookies, proxies or TLS options
beyond the default context) and speaks httpx's exceptions, so the backend's error handling
(in doubt on a timeout or a broken connection after sending, not sent when the connection
could not be opened) reads the same for both. Every socket operation is bounded by the
endpoint's timeout and by the calling thread's deadline (`_deadline.until`).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

from charter.backends._deadline import clamp

__all__ = ["LeanClient", "LeanRequest", "LeanResponse"]

_IDLE_KEPT = 32  # idle keep-alive connections per service


class LeanRequest:
    __slots__ = ("content", "extensions", "headers", "method", "target", "url")

    def __init__(self, method: str, url: str, target: str, headers: dict[str, str], content: bytes | None) -> None:
        self.method, self.url, self.target, self.headers, self.content = method, url, target, headers, content
        self.extensions: dict[str, Any] = {}


class LeanResponse:
    __slots__ = ("content", "headers", "reason_phrase", "request", "status_code")

    def __init__(
        self, request: LeanRequest, status: int, reason: str, headers: http.client.HTTPMessage, content: bytes
    ) -> None:
        self.request, self.status_code, self.reason_phrase = request, status, reason
        self.headers, self.content = headers, content  # headers.get is case-insensitive

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class _DeadlineSocket(socket.socket):
    """A socket whose every receive and send waits at most the endpoint's timeout and what
    remains of the calling thread's deadline."""

    timeout_seconds: float | None = None

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(clamp(self.timeout_seconds, httpx.ReadTimeout))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.settimeout(clamp(self.timeout_seconds, httpx.WriteTimeout))
        super().sendall(data, flags)


class _Connection(http.client.HTTPConnection):
    def connect(self) -> None:
        timeout = clamp(self.timeout, httpx.ConnectTimeout)
        error: OSError | None = None
        for family, kind, proto, _, address in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            sock = _DeadlineSocket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except OSError as failed:
                sock.close()
                error = failed
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            return
        raise error or OSError(f"no address for {self.host}")


class _TlsConnection(_Connection):
    def connect(self) -> None:
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)


def _readable(sock: socket.socket) -> bool:
    """Has an idle connection something to read (the service closed it, or sent junk)?"""
    if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK on TLS: ask the kernel
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    sock.settimeout(0)  # never wait here (each send and receive sets its own timeout again)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False  # nothing waiting: alive
    except OSError:
        return True
    return True  # b"" (closed) or bytes nobody asked for


class LeanClient:
    """Requests to one service (`base_url`), each on a pooled keep-alive connection. Thread-safe."""

    def __init__(self, base_url: str, *, headers: Mapping[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._tls = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = dict(headers)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def build_request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, Any]] = (),
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> LeanRequest:
        target = self._prefix + path
        if params:
            target += "?" + urlencode([(k, "" if v is None else v) for k, v in params], quote_via=quote)
        return LeanRequest(
            method, self.base_url + target[len(self._prefix) :], target, self._headers | dict(headers or {}), content
        )

    def send(self, request: LeanRequest) -> LeanResponse:
        """Send and read the whole answer. Raises httpx.ConnectError / ConnectTimeout (nothing
        was sent), httpx.WriteTimeout / ReadTimeout / RemoteProtocolError / ReadError (sent,
        or maybe sent)."""
        timeouts: Mapping[str, float] = request.extensions.get("timeout", {})
        connection, fresh = self._connection(timeouts.get("connect"))
        if fresh:
            try:
                connection.connect()
            except httpx.TimeoutException:
                raise
            except TimeoutError as error:
                raise httpx.ConnectTimeout(str(error)) from error
            except OSError as error:
                raise httpx.ConnectError(str(error)) from error
        sock = connection.sock
        if isinstance(sock, _DeadlineSocket):
            sock.timeout_seconds = max(timeouts.get("read", 0.0), timeouts.get("write", 0.0)) or None
        try:
            connection.request(request.method, request.target, body=request.content, headers=request.headers)
            answer = connection.getresponse()
            content = answer.read()
        except httpx.TimeoutException:
            connection.close()
            raise
        except TimeoutError as error:
            connection.close()
            raise httpx.ReadTimeout(str(error)) from error
        except (http.client.HTTPException, OSError) as error:
            connection.close()
            raise httpx.RemoteProtocolError(f"{type(error).__name__}: {error}") from error
        except BaseException:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            self._release(connection)
        return LeanResponse(request, answer.status, answer.reason, answer.headers, content)

    def _connection(self, timeout: float | None) -> tuple[_Connection, bool]:
        """An idle connection the service has not closed meanwhile, or a new one (True)."""
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if connection.sock is not None and not _readable(connection.sock):
                    return connection, False
                connection.close()  # readable while idle: closed by the service (or junk)
        kind = _TlsConnection if self._tls else _Connection
        return kind(self._host, self._port, timeout=timeout), True

    def _release(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < _IDLE_KEPT:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
