"""Hostile MCP traffic against a real `charter mcp --http` process: generated tool names (real,
look-alike, unknown), arguments of wrong types, missing, extra, huge, deeply nested or with lone
surrogates, and malformed JSON-RPC frames, all with a valid token. No answer may be an internal
error (HTTP 5xx, JSON-RPC -32603, or a tool error of type internal), and the server must still
serve a normal call afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, charter

HAPPY = ROOT / "tests" / "data" / "model" / "happy.json"
EXAMPLES = 520  # generated requests; the issue asks for at least 500
TOOLS = ["operate_orders", "operate_invoices", "execute_program", "audit_run"]
LOOK_ALIKES = [
    "operate_order",
    "operate_orders ",
    "OPERATE_ORDERS",
    "operate_orders@1",
    "operate_orders@1.0.0",
    "operate_",
    "operate_\u043erders",  # Cyrillic o
    "execute_program\u200b",
    "\u0430udit_run",  # Cyrillic a
    "audit_run/../execute_program",
    "",
    "\ud800",
]
FIELDS = ["intent", "version", "contract", "program", "run_id"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mcp_http(charter_home: Path) -> Iterator[tuple[str, str]]:
    from charter.server import TokenStore
    from examples.orders import backend

    backend.seed()
    for name in ("orders", "invoices"):
        assert charter("contract", "publish", f"contracts/{name}.yaml").returncode == 0
    token = TokenStore(charter_home / "tokens.yaml").add("fuzz", "fuzzer", ["orders:read", "invoices:read"])
    port = _free_port()
    args = [sys.executable, "-m", "charter", "mcp", "--http", f"127.0.0.1:{port}", "--replay", str(HAPPY)]
    args += ["--tokens", str(charter_home / "tokens.yaml")]
    process = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                assert time.monotonic() < deadline, "charter mcp --http did not start"
                time.sleep(0.1)
        yield url, token
    finally:
        process.terminate()
        process.wait(15)


# -- what is sent -------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=40)
# Lone surrogates travel as \ud800 escapes (json.dumps' ensure_ascii); an escaped pair is a valid character.
_surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00", "orders\ud800", "\udc00" * 3])
_scalars = st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30) | st.floats() | _text | _surrogates
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4))


def _nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def _deep_call(name: str, field: str, depth: int) -> bytes:
    """A tools/call whose argument nests deeper than any encoder here would write."""
    value = "[" * depth + "]" * depth
    head = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {field: 0}}}
    return json.dumps(head).replace(f'"{field}": 0', f'"{field}": {value}').encode()


_hostile = (
    _json
    | st.builds(_nested, st.integers(10, 900), st.sampled_from(["list", "dict"]))  # json.dumps' own limit
    | st.integers(1_000, 300_000).map(lambda n: "x" * n)
    | st.sampled_from(["orders", "orders@1", "orders@1.0.0", "ordrs", "0" * 32, "conclude(1)", "\ud800\udfff"])
)
_names = st.sampled_from(TOOLS) | st.sampled_from(TOOLS) | st.sampled_from(LOOK_ALIKES) | _text | _surrogates
_values = (
    _hostile
    | _text
    | _surrogates
    | st.sampled_from(["orders", "invoices@1", "conclude(1)", "Cancel order 101", "a" * 4001])
)
_arguments = st.one_of(
    st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, _values)),
    st.dictionaries(st.sampled_from(FIELDS) | _text, _values, max_size=4),
    _hostile,
)


@st.composite
def _tool_calls(draw: st.DrawFn) -> bytes:
    params: dict[str, Any] = {"name": draw(_names)}
    if draw(st.booleans()):
        params["arguments"] = draw(_arguments)
    frame = {"jsonrpc": "2.0", "id": draw(st.integers(0, 2**31)), "method": "tools/call", "params": params}
    return json.dumps(frame).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes


_programs = _text | st.sampled_from(
    [
        "conclude(1)",
        "refuse('no')",
        "orders.cancel_order(id=101, reason='x')\nconclude('x')",  # the token may only read
        "import os\nconclude(os.getcwd())",
        "conclude(str(orders.get_order(id=102).status), data={'a': [1] * 100, 'b': None})",
        "raise ValueError('boom')",
        "conclude(",
    ]
)
_near_valid = st.one_of(  # well-shaped calls: they get past the schema to the service
    st.fixed_dictionaries(
        {
            "name": st.just("execute_program"),
            "arguments": st.fixed_dictionaries(
                {
                    "contract": st.sampled_from(["orders", "orders@1", "invoices@1.0.0", "ordrs", "orders@9"]),
                    "program": _programs,
                }
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["operate_orders", "operate_invoices"]),
            "arguments": st.fixed_dictionaries(
                {"intent": _text | st.just("Cancel order 101")},
                optional={"version": st.sampled_from(["1", "2", "1.0"])},
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "name": st.just("audit_run"),
            "arguments": st.fixed_dictionaries({"run_id": st.text("0123456789abcdef", min_size=32, max_size=32)}),
        }
    ),
).map(lambda params: json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode())

_methods = st.sampled_from(
    ["tools/call", "tools/list", "resources/read", "resources/list", "initialize", "ping", "nope", ""]
)
_frames = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | _json,
        "id": st.integers() | _text | st.none() | _json,
        "method": _methods | _text | _json,
        "params": _json | st.fixed_dictionaries({"uri": _hostile}),
    },
)
_raw = st.sampled_from(
    [b"", b"{", b"[]", b"[{}]", b"null", b"\xff\xfe", b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"' * 3]
) | st.binary(max_size=200)
_bodies = st.one_of(
    _tool_calls(),  # most of the traffic: calls that reach the tools
    _tool_calls(),
    _near_valid,
    _near_valid,
    _frames.map(lambda f: json.dumps(f).encode()),
    st.lists(_frames, min_size=1, max_size=3).map(lambda fs: json.dumps(fs).encode()),
    _raw,
    st.builds(_deep_call, st.sampled_from(TOOLS), st.sampled_from(FIELDS), st.integers(1_000, 50_000)),
)


# -- the run ------------------------------------------------------------------------------------


def _assert_no_internal_error(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    assert "_ToolError" not in response.text
    try:
        body = response.json()
    except ValueError:
        return
    for message in body if isinstance(body, list) else [body]:
        if not isinstance(message, dict):
            continue
        error = message.get("error")
        if isinstance(error, dict):
            assert error.get("code") != -32603, error
        result = message.get("result")
        if isinstance(result, dict) and result.get("isError"):
            problem = result.get("structuredContent") or {}
            # A tool error is the HTTP API's problem: a stable public type, never a class name.
            assert str(problem.get("type")).startswith("urn:charter:problem:"), problem
            assert problem["type"] != "urn:charter:problem:internal", problem


def test_hostile_mcp_requests_get_no_internal_error_and_the_server_stays_healthy(
    mcp_http: tuple[str, str],
) -> None:
    url, token = mcp_http
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    sent: list[int] = []
    started = time.monotonic()
    with httpx.Client(headers=headers, timeout=60) as http:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=_bodies)
        def hostile(body: bytes) -> None:
            sent.append(len(body))
            _assert_no_internal_error(http.post(url, content=body))

        hostile()
        elapsed = time.monotonic() - started

        # Healthy after: a normal call succeeds.
        program = "conclude(orders.get_order(id=102).status)"
        frame = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "execute_program", "arguments": {"contract": "orders", "program": program}},
        }
        response = http.post(url, json=frame)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["structuredContent"]["status"] == "done"
    assert result["structuredContent"]["answer"] == "confirmed"
    assert len(sent) >= 500
    print(f"\nMCP fuzz: {len(sent)} hostile requests in {elapsed:.1f} s, no internal error")
