"""An HTTP backend call never outlives its run: a service that trickles its answer is cut off
at the run's deadline, though no single read waits longer than the endpoint's timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from charter.backends import BackendFailure, CallContext
from charter.backends._http import HttpBackend
from charter.principal import Principal
from tests.conftest import compiled

ORDER = b'{"id": 101, "status": "paid", "customer": "c", "total": "10.00", "refunded": "0.00"}'


@pytest.fixture
def trickling() -> Iterator[tuple[str, list[str]]]:
    """A service answering every request correctly, one byte every 50 ms (about 7 s an answer)."""
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[str] = []
    stop = threading.Event()

    def answer(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            reply = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(ORDER)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + ORDER
            )
            try:
                for byte in reply:
                    if stop.is_set():
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(0.05)
                served.append("whole answer")
            except OSError:
                served.append("cut off")

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", served
    finally:
        stop.set()
        listener.close()


def test_a_trickled_answer_is_cut_off_at_the_runs_deadline(
    trickling: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = trickling
    monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", url)
    backend = HttpBackend(compiled("orders"))
    assert backend.blocking is False  # so the gate may call it on the run's own thread
    context = CallContext(
        run_id="ab" * 16,
        call=1,
        principal=Principal("ada", frozenset({"orders:read"})),
        idempotency_key=None,
        precondition=None,
        deadline=time.monotonic() + 1.0,  # each byte comes well within the endpoint's read timeout
    )
    with pytest.raises(BackendFailure) as failure:
        backend.invoke("get_order", {"id": 101}, context)
    assert failure.value.code == "BACKEND_TIMEOUT", failure.value
    assert "whole answer" not in served  # the call ended before the service finished answering
    backend.close()


def test_without_a_context_the_endpoint_timeouts_alone_apply(
    trickling: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = trickling
    monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", url)
    backend = HttpBackend(compiled("orders"))
    assert backend.invoke("get_order", {"id": 101})["status"] == "paid"  # slow, never too slow for one read
    backend.close()


def test_a_write_after_the_service_closed_an_idle_connection_goes_out_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keep-alive connection the service closed while it sat idle is never used for a write,
    which would then fail in doubt without having reached the service."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(
                    next(
                        (
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        b"0",
                    )
                )
                while len(body) < length:
                    body += connection.recv(65536)
                requests.append(head.split(b"\r\n")[0])
                # keep-alive as far as the client knows, then closed right after the answer
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(ORDER)).encode()
                    + b"\r\n\r\n"
                    + ORDER
                )

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    backend = HttpBackend(compiled("orders"))
    try:
        assert backend.invoke("get_order", {"id": 101})["status"] == "paid"
        deadline = time.monotonic() + 10
        while len(requests) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the service has closed the idle connection by now
        backend.invoke("cancel_order", {"id": 101, "reason": "moved"})
    finally:
        backend.close()
        listener.close()
    assert [r.split(b" ")[0] for r in requests] == [b"GET", b"POST"]


def test_a_service_behind_the_environments_proxy_is_called_through_httpx_under_the_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", "http://orders.internal:8080")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = HttpBackend(compiled("orders"))
    assert proxied.blocking is True  # httpx bounds operations, not the call: the gate keeps its watchdog
    proxied.close()
    monkeypatch.setenv("NO_PROXY", "orders.internal")
    direct = HttpBackend(compiled("orders"))
    assert direct.blocking is False
    direct.close()
