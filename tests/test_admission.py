"""Admission control: `charter serve --max-runs N --queue M`. At most N runs in flight, M
requests waiting, and beyond that 503 `overloaded` with Retry-After at once, leaving nothing
behind; memory bounded by the server's base plus N times the run memory limit."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from charter.audit import AuditLog
from charter.sandbox import Sandbox
from charter.server import IdempotencyStore, create_app, serving
from tests.charter_service import charter_service
from tests.conftest import ROOT, charter
from tests.test_server import CANCEL_101, problem, scripted

# -- in process: the slots, the queue and the refusal ----------------------------------------


class Held:
    """Wraps service.execute so each run waits until the test lets it go."""

    def __init__(self, execute: Callable[..., Any]) -> None:
        self.execute = execute
        self.release = threading.Event()
        self.started = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started += 1
        assert self.release.wait(60), "the test never released the run"
        return self.execute(*args, **kwargs)


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_beyond_the_slots_and_the_queue_a_run_is_refused_at_once_and_leaves_nothing_behind(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    from examples.orders import backend

    backend.seed()
    log, service, store = charter_service(charter_home, shared_sandbox, "orders", scripted)
    token = store.add("ada", "ada", ["orders:read", "orders:write"])
    held = Held(service.execute)
    service.execute = held  # type: ignore[method-assign]
    idempotency = IdempotencyStore(charter_home / "idempotency.db")
    app = create_app(service, store, idempotency, max_runs=1, queue=1)
    slots = app.state.slots
    body = {"contract": "orders", "program": 'conclude("hello")'}
    answers: dict[str, httpx.Response] = {}

    with serving(app, name="charter-api") as url:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

        def post(name: str, key: str | None = None) -> None:
            answers[name] = client.post("/v1/programs", json=body, headers={"Idempotency-Key": key} if key else {})

        first = threading.Thread(target=post, args=("running",))
        first.start()
        until(lambda: held.started == 1, "the first run to start")
        second = threading.Thread(target=post, args=("queued",))
        second.start()
        until(lambda: slots.waiting == 1, "the second request to queue")
        assert (slots.in_flight, held.started) == (1, 1)  # queued: it did not reach the service

        # The third: refused at once, with the same key it will send again
        post("refused", "retry-me")
        refused = problem(answers["refused"], 503, "overloaded")
        assert "nothing was run" in str(refused["detail"])
        assert int(answers["refused"].headers["Retry-After"]) >= 1
        assert held.started == 1
        # Other routes are not held back by the slots
        assert client.get("/v1/contracts").status_code == 200

        held.release.set()
        first.join(60)
        second.join(60)
        assert answers["running"].status_code == answers["queued"].status_code == 200
        until(lambda: slots.in_flight == 0, "the slots to be freed")  # freed after the answer is sent
        assert (slots.waiting, slots.refused) == (0, 1)
        runs = log.run_ids()
        assert len(runs) == 2  # the refused request opened no run

        # Its Idempotency-Key was never claimed: the retry runs
        post("retried", "retry-me")
        assert answers["retried"].status_code == 200, answers["retried"].text
        assert answers["retried"].json()["answer"] == "hello"
        assert "idempotent-replayed" not in answers["retried"].headers
        assert len(log.run_ids()) == 3
        client.close()


def _one_slot_app(charter_home: Path, shared_sandbox: Sandbox) -> tuple[AuditLog, FastAPI, Held, str]:
    """The API over the seeded orders service with one run slot and one queue place, its runs
    held until `held.release` is set; and a token of ada's (orders:read, orders:write)."""
    from examples.orders import backend

    backend.seed()
    log, service, store = charter_service(charter_home, shared_sandbox, "orders", scripted)
    token = store.add("ada", "ada", ["orders:read", "orders:write"])
    held = Held(service.execute)
    service.execute = held  # type: ignore[method-assign]
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"), max_runs=1, queue=1)
    return log, app, held, token


def test_a_queued_request_whose_client_leaves_gives_up_its_place(charter_home: Path, shared_sandbox: Sandbox) -> None:
    _, app, held, token = _one_slot_app(charter_home, shared_sandbox)
    slots = app.state.slots
    headers = {"Authorization": f"Bearer {token}"}
    body = {"contract": "orders", "program": CANCEL_101}
    with serving(app, name="charter-api") as url:
        first = threading.Thread(
            target=lambda: httpx.post(f"{url}/v1/programs", json=body, headers=headers, timeout=60)
        )
        first.start()
        until(lambda: held.started == 1, "the first run to start")
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while queued
            httpx.post(f"{url}/v1/programs", json=body, headers=headers, timeout=0.5)
        until(lambda: slots.waiting == 0, "the queue to drop the request whose client left")
        held.release.set()
        first.join(60)
        until(lambda: slots.in_flight == 0, "the slot to be freed")
    assert held.started == 1  # the request whose client left never ran


def test_a_run_that_ends_as_a_request_starts_to_queue_hands_it_the_slot() -> None:
    """The request queues in the step whose take() failed. It joined the queue in a task of its
    own, a turn of the loop later: the run in flight ending in between freed its slot with nobody
    waiting, and the request waited for a release that never came, as did every request after it
    (take() gives no slot while anyone waits): a CI run's bench saw one request hang 120 s."""
    from charter.server._admission import RunSlots

    async def scenario() -> tuple[bool, bool, int, int]:
        slots = RunSlots(max_runs=1, queue=1)
        assert slots.take()  # a run in flight
        stays = asyncio.Event()

        async def receive() -> dict[str, Any]:  # the client stays connected
            await stays.wait()
            return {"type": "http.disconnect"}

        queued = asyncio.ensure_future(slots.wait_or_leave(receive))
        await asyncio.sleep(0)  # the request's first step: take() failed, it waits for a slot
        slots.release()  # the run in flight ends before the request's next step
        for _ in range(10):  # turns enough for any hand-over (no clock involved)
            await asyncio.sleep(0)
        handed = queued.done() and queued.result()
        if not queued.done():
            queued.cancel()
        later = slots.take()  # a request arriving afterwards, with the queued one now running
        return handed, later, slots.in_flight, slots.waiting

    handed, later, in_flight, waiting = asyncio.run(scenario())
    assert handed, "the queued request never got the slot its predecessor released"
    assert (later, in_flight, waiting) == (False, 1, 0)


def test_a_request_that_can_never_run_or_needs_no_run_is_answered_at_once_whatever_the_load(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    """Admission comes after authentication, validation, the contract's existence and a finished
    Idempotency-Key: such requests take no queue place and are never told to retry (503)."""
    log, app, held, token = _one_slot_app(charter_home, shared_sandbox)
    slots = app.state.slots
    body = {"contract": "orders", "program": 'conclude("hello")'}
    answers: dict[str, httpx.Response] = {}

    with serving(app, name="charter-api") as url:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

        def post(name: str, **kwargs: Any) -> None:
            answers[name] = client.post("/v1/programs", **({"json": body} | kwargs))

        held.release.set()
        post("finished", headers={"Idempotency-Key": "done-before"})
        assert answers["finished"].status_code == 200, answers["finished"].text
        held.release.clear()

        running = threading.Thread(target=post, args=("running",))
        running.start()
        until(lambda: held.started == 2, "the second run to start")
        # The slot is taken and the queue has room: a request without a token does not wait in it
        assert problem(httpx.post(f"{url}/v1/programs", json=body, timeout=60), 401, "unauthenticated")
        assert slots.waiting == 0
        queued = threading.Thread(target=post, args=("queued",))
        queued.start()
        until(lambda: slots.waiting == 1, "a request to queue")

        # Slots and queue full: each of these is answered as if the server were idle
        problem(httpx.post(f"{url}/v1/programs", json=body, timeout=60), 401, "unauthenticated")
        problem(
            httpx.post(f"{url}/v1/programs", json=body, headers={"Authorization": "Bearer nope"}, timeout=60),
            401,
            "unauthenticated",
        )
        problem(client.post("/v1/programs", json=body | {"programme": "x"}), 422, "invalid-request")
        problem(client.post("/v1/programs", json=body | {"contract": "no-such-contract"}), 404, "contract-not-found")
        post("replayed", headers={"Idempotency-Key": "done-before"})
        assert answers["replayed"].status_code == 200, answers["replayed"].text
        assert answers["replayed"].headers["Idempotent-Replayed"] == "true"
        assert answers["replayed"].json() == answers["finished"].json()
        # A request that needs a run is still refused, and nothing of the above ran or queued
        post("refused")
        problem(answers["refused"], 503, "overloaded")
        assert (held.started, slots.waiting, slots.refused) == (2, 1, 1)

        held.release.set()
        running.join(60)
        queued.join(60)
        assert answers["running"].status_code == answers["queued"].status_code == 200
        assert len(log.run_ids()) == 3
        client.close()


def test_max_runs_and_queue_must_be_sensible(charter_home: Path) -> None:
    # One line `error: ...` and exit 1, like every other command; above the bound too, where
    # the memory bound the flags promise would mean nothing
    for command in (["serve", "127.0.0.1:0"], ["mcp", "--http", "127.0.0.1:0"]):
        for args, bound in (
            (["--max-runs", "0"], "1 to 1024"),
            (["--max-runs", "99999999999999999999"], "1 to 1024"),
            (["--max-runs", "1025"], "1 to 1024"),
            (["--queue", "-1"], "0 to 65536"),
            (["--queue", "65537"], "0 to 65536"),
        ):
            result = charter(*command, *args)
            assert result.returncode == 1, (command, args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"error: {args[0]} "), lines
            assert bound in lines[0]


def test_a_port_in_use_is_one_error_line_before_anything_is_announced(charter_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (["serve", f"127.0.0.1:{port}"], ["mcp", "--http", f"127.0.0.1:{port}"]):
            result = charter(*command)
            assert result.returncode == 1, result.stderr
            assert "Charter" not in result.stdout + result.stderr  # never announced
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port} ")
            assert "another process listens there" in lines[0]


def test_an_ipv6_address_is_announced_as_a_url_writes_it(charter_home: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "charter", "serve", "[::1]:0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert server.stdout is not None
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "Charter API on" in line:
                break
        assert "Charter API on http://[::1]:0 " in lines[-1], lines
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


# -- a real `charter serve`: memory stays bounded under overload -------------------------------

MEMORY_MIB = 64
# Allocates up to the run's memory limit, touching every page, then says how far it got.
ALLOCATE = """
chunks = []
try:
    while True:
        chunks.append(b"\\x01" * (1 << 20))
except MemoryError:
    pass
conclude(str(len(chunks)))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def small_memory_server(charter_home: Path, tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    text = (ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    assert "limits:\n  max_calls: 50\n" in text
    contract = tmp_path / "orders.yaml"
    contract.write_text(text.replace("limits:\n", f"limits:\n  memory_mib: {MEMORY_MIB}\n", 1), encoding="utf-8")
    published = charter("contract", "publish", str(contract))
    assert published.returncode == 0, published.stderr
    added = charter("token", "add", "ada", "--principal", "ada", "--scope", "orders:read")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "charter", "serve", f"127.0.0.1:{port}", "--max-runs", "2", "--queue", "2"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "charter serve did not start"
            time.sleep(0.1)
        yield url, token, server.pid
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_memory_stays_under_base_plus_max_runs_times_the_run_limit(
    small_memory_server: tuple[str, str, int],
) -> None:
    url, token, pid = small_memory_server
    headers = {"Authorization": f"Bearer {token}"}
    body = {"contract": "orders", "program": ALLOCATE}
    warm = httpx.post(f"{url}/v1/programs", json=body, headers=headers, timeout=60)
    assert warm.status_code == 200, warm.text
    allocated = int(warm.json()["answer"])
    assert allocated >= MEMORY_MIB // 4, warm.json()  # the program did fill much of its limit
    time.sleep(0.5)  # the warm run's instance dropped, the pool refilled
    base = _status(pid, "VmRSS")

    clients = 16
    start = threading.Barrier(clients)
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(timeout=120) as client:
            start.wait()
            answers.append(client.post(f"{url}/v1/programs", json=body, headers=headers))

    threads = [threading.Thread(target=post) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)

    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 503}, [a.text for a in answers if a.status_code not in (200, 503)]
    assert statuses.count(200) >= 4  # the two slots and the queue of two at least
    for answer in answers:
        if answer.status_code == 503:
            problem(answer, 503, "overloaded")
            assert int(answer.headers["Retry-After"]) >= 1
        else:
            assert int(answer.json()["answer"]) >= MEMORY_MIB // 4
    peak = _status(pid, "VmHWM")
    bound = base + 2 * MEMORY_MIB * 2**20
    # Thread stacks, allocator arenas, the runs' host-side buffers (48 MiB), and the contract's
    # pool, which grows under misses from its base to 4 prepared instances of ~9 MiB each after
    # `base` was read (40 MiB): still far below the ~1 GiB the same load reaches unbounded.
    slack = (48 + 40) * 2**20
    assert peak <= bound + slack, f"peak RSS {peak >> 20} MiB, base {base >> 20} MiB, bound {bound >> 20} MiB"


# -- MCP over streamable HTTP: the same slots for the tools that run programs -------------------


def test_an_mcp_tool_that_runs_a_program_beyond_the_slots_is_refused_overloaded(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from charter.server._mcp import http_app

    _, service, store = charter_service(charter_home, shared_sandbox, "orders", scripted)
    token = store.add("upstream", "upstream-ai", ["orders:read"])
    held = Held(service.execute)
    service.execute = held  # type: ignore[method-assign]
    program = {"contract": "orders", "program": 'conclude("hello")'}
    with serving(http_app(service, store, "127.0.0.1", max_runs=1, queue=0), name="charter-mcp") as url:

        async def call(results: list[Any]) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
            ):
                results.append(await client.call_tool("execute_program", program))

        async def session() -> tuple[list[Any], list[Any]]:
            first: list[Any] = []
            second: list[Any] = []
            async with anyio.create_task_group() as group:
                group.start_soon(call, first)
                while held.started == 0:
                    await anyio.sleep(0.01)
                await call(second)  # the one slot is taken and no queue: refused at once
                held.release.set()
            return first, second

        first, second = anyio.run(session)
    refused = second[0]
    assert refused.is_error
    body = json.loads(refused.content[0].text)
    assert body["type"] == "urn:charter:problem:overloaded"
    assert body["retry_after"] >= 1
    # What an MCP client can do: call again after retry_after seconds; it has neither a
    # Retry-After header nor an Idempotency-Key to be told about
    assert f"call the tool again after retry_after ({body['retry_after']}) seconds" in body["detail"]
    assert "retry_after seconds" in body["title"]
    assert not {"Retry-After", "Idempotency-Key"} & set(re.findall(r"[\w-]+", body["title"] + body["detail"]))
    assert held.started == 1  # the refused call never reached the service
    assert not first[0].is_error
    assert json.loads(first[0].content[0].text)["answer"] == "hello"
