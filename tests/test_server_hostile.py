"""The HTTP API under hostile input: bodies past the limit while streaming, malformed and
hostile JSON, wrong media types, and a fuzz run; every answer is a 4xx problem, never a 5xx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.server import TokenStore
from tests import test_server
from tests.conftest import ROOT
from tests.test_server import Api, problem

api = test_server.api  # the same fixture: a real uvicorn over the real orders service, per test

MIB = 1_048_576
POST_ROUTES = ("/v1/intents", "/v1/programs")
JSON = {"Content-Type": "application/json"}


# -- fault 1: the body limit holds while a chunked body streams --------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    """`charter serve` as a real process, one for this module: (its URL, a bearer token, its pid)."""
    home = tmp_path_factory.mktemp("served") / "home"
    token = TokenStore(home / "tokens.yaml").add("ada", "ada", ["orders:read", "orders:write"])
    port = _free_port()
    log = home / "serve.log"  # a file, not a pipe nobody reads: a full pipe would stall the server
    process = subprocess.Popen(
        [sys.executable, "-m", "charter", "serve", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, "CHARTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"charter serve did not start: {log.read_text(encoding='utf-8')}")
        yield url, token, process.pid
    finally:
        process.terminate()
        process.wait(15)


def _stream(url: str, method: str, path: str, headers: dict[str, str], total: int) -> tuple[httpx.Response, int]:
    """Send `total` bytes of JSON-looking body chunked (no Content-Length); the bytes actually sent."""
    chunk = b'{"contract": "orders", "program": "' + b"x" * 65_000
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        while sent < total:
            sent += len(chunk)
            yield chunk

    with httpx.Client(timeout=60) as client:
        response = client.request(method, f"{url}{path}", content=body(), headers=headers)
    return response, sent


@pytest.mark.parametrize("with_token", [False, True])
def test_a_chunked_body_past_the_limit_is_refused_while_it_streams(
    served: tuple[str, str, int], with_token: bool
) -> None:
    url, token, pid = served
    headers = {**JSON, **({"Authorization": f"Bearer {token}"} if with_token else {})}
    # Warm up (first requests import and allocate), then measure the server process alone.
    for _ in range(3):
        httpx.post(f"{url}/v1/programs", content=b"{}", headers=headers, timeout=30)
    before = _rss_kib(pid)
    total = 60 * MIB
    for method, path in [("POST", p) for p in POST_ROUTES] + [("GET", "/v1/contracts"), ("POST", "/v1/nothing")]:
        response, sent = _stream(url, method, path, headers, total)
        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert response.request.headers["transfer-encoding"] == "chunked"
        body = problem(response, 413, "payload-too-large")
        assert "passed that while streaming" in str(body["detail"])
        assert response.headers["connection"] == "close"
        # Refused as soon as the limit was passed: most of the 60 MB was never sent.
        assert sent < 16 * MIB, f"{method} {path}: {sent} bytes sent before the answer"
    grown = _rss_kib(pid) - before
    assert grown < 16 * 1024, f"the server grew by {grown} KiB reading bodies it refused"
    assert httpx.get(f"{url}/v1/contracts", headers=headers, timeout=30).status_code == (200 if with_token else 401)


def test_a_declared_length_past_the_limit_is_refused_before_a_byte_is_read(served: tuple[str, str, int]) -> None:
    url, _, _ = served
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as raw:
        # Only the head is sent: the answer must come without the server waiting for the body.
        raw.sendall(
            b"POST /v1/programs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        answer = b""
        while chunk := raw.recv(65_536):  # the server closes after answering
            answer += chunk
        head = answer.decode("latin-1")
    assert head.startswith("HTTP/1.1 413 ")
    assert "urn:charter:problem:payload-too-large" in head


# -- fault 2 and 11: malformed bodies are precise 4xx problems ---------------------------------


@pytest.mark.parametrize(
    ("body", "status", "kind", "words"),
    [
        (b'{"contract": "orders", x}', 400, "invalid-json", "invalid JSON at line 1, column 24"),
        (b'{"contract": "orders",\n "program": }', 400, "invalid-json", "invalid JSON at line 2, column 13"),
        (b'{"contract": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "invalid-json", "nested deeper than 32"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid-json", "nested deeper than 32"),
        (b'{"contract": 1e400, "program": "x"}', 400, "invalid-json", "beyond the range of a double"),
        (b'{"contract": ' + b"9" * 5000 + b', "program": "x"}', 400, "invalid-json", "does not fit in 64 bits"),
        (b'{"contract": NaN, "program": "x"}', 400, "invalid-json", "NaN is not a JSON number"),
        (b'{"contract": "orders", "contract": "x", "program": "x"}', 400, "invalid-json", "duplicate key 'contract'"),
        (b'{"contract": "orders", "program": "\\ud800"}', 400, "invalid-json", "lone surrogate (\\ud800)"),
        (b'{"contract": "orders", "program": "conclude(1)\\u0000"}', 400, "invalid-json", "NUL"),
        (
            b'{"contract": "orders", "program": "\xff"}',
            400,
            "invalid-json",
            "not UTF-8: byte 0xff at line 1, column 36",
        ),
        (b'\xef\xbb\xbf{"contract": "orders", "program": "x"}', 400, "invalid-json", "byte order mark"),
        (b"", 400, "invalid-json", "the body is empty"),
        (b'["orders"]', 422, "invalid-request", "body: Input should be a valid dictionary"),
    ],
)
def test_a_hostile_json_body_is_a_400_naming_what_is_wrong(
    api: Api, body: bytes, status: int, kind: str, words: str
) -> None:
    with api.client() as client:
        for path in POST_ROUTES:
            detail = str(problem(client.post(path, content=body, headers=JSON), status, kind)["detail"])
            assert words in detail, detail
    assert api.log.run_ids() == []


@pytest.mark.parametrize(
    "content_type", [None, "application/x-www-form-urlencoded", "text/plain", "application/json; charset=latin-1"]
)
def test_a_body_not_sent_as_json_is_415_naming_the_header(api: Api, content_type: str | None) -> None:
    body = json.dumps({"contract": "orders", "program": "conclude('hi')"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    with api.client() as client:
        response = client.post("/v1/programs", content=body, headers=headers)
        charset = client.post("/v1/programs", content=body, headers={"Content-Type": "application/json; charset=UTF-8"})
    assert "Content-Type: application/json" in str(problem(response, 415, "unsupported-media-type")["detail"])
    assert charset.json()["status"] == "done"
    assert len(api.log.run_ids()) == 1


def test_the_readme_curl_example_works(api: Api) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme[readme.index("## Serving: the HTTP API and MCP") :].split("```")[1]
    assert 'curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json"' in example
    curl = subprocess.run(
        [
            "curl", "-sS", "-H", f"Authorization: Bearer {api.tokens['ada']}", "-H", "Content-Type: application/json",
            "-d", '{"contract": "orders", "intent": "Cancel order 101"}', f"{api.url}/v1/intents",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if curl.returncode == 127:
        pytest.skip("no curl")
    assert json.loads(curl.stdout)["status"] == "done", curl.stdout


def test_a_method_not_allowed_names_the_allowed_ones(api: Api) -> None:
    with api.client() as client:
        for method, path, allowed in [
            ("DELETE", "/v1/contracts", {"GET"}),
            ("GET", "/v1/programs", {"POST"}),
            ("PUT", "/v1/runs/" + "0" * 32, {"GET"}),
        ]:
            response = client.request(method, path)
            problem(response, 405, "method-not-allowed")
            assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/contracts/orders/" + "9" * 5000, {}),
        ("/v1/contracts/orders/1." + "9" * 5000, {}),
        ("/v1/programs", {"Idempotency-Key": ""}),
        ("/v1/programs", {"Idempotency-Key": "k" * 300}),
        ("/v1/programs", {"Idempotency-Key": "a b"}),
        ("/v1/runs/" + "f" * 5000, {}),
    ],
)
def test_hostile_paths_and_headers_are_4xx(api: Api, path: str, headers: dict[str, str]) -> None:
    with api.client() as client:
        if path == "/v1/programs":
            response = client.post(path, json={"contract": "orders", "program": "conclude('x')"}, headers=headers)
        else:
            response = client.get(path, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert api.log.run_ids() == []


# -- the fuzz run: generated hostile bodies, every POST route, with and without a token ---------


def _nest(depth: int, opener: bytes, closer: bytes, inner: bytes = b"1") -> bytes:
    return opener * depth + inner + closer * depth


def _doc(contract: bytes = b'"orders"', second: bytes = b'"conclude(1)"', key: bytes = b"program") -> bytes:
    return b'{"contract": ' + contract + b', "' + key + b'": ' + second + b"}"


_depth = st.integers(100, 100_000)
_digits = st.integers(21, 10_000)
_shapes = st.one_of(
    # depth, top level and inside a field
    st.builds(lambda d: _nest(d, b"[", b"]"), _depth),
    st.builds(lambda d: _nest(d, b'{"a": ', b"}"), _depth),
    st.builds(lambda d: _doc(contract=_nest(d, b"[", b"]")), _depth),
    st.builds(lambda d: _nest(d, b"[", b""), _depth),  # never closed
    # huge numbers
    st.builds(lambda n: _doc(contract=b"1" * n), _digits),
    st.builds(lambda n: _doc(second=b"-" + b"9" * n), _digits),
    st.sampled_from(
        [b"1e400", b"-1e400", b"1e-99999", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400 + b".5"]
    ).map(lambda n: _doc(contract=n)),
    # duplicate keys
    st.integers(2, 50).map(lambda n: b"{" + b", ".join([b'"contract": "orders"'] * n) + b', "program": "x"}'),
    # lone surrogates, NUL, control characters, invalid UTF-8, BOM
    st.sampled_from([b"\\ud800", b"\\udfff", b"\\udbff\\u0041", b"\\u0000", b"\x00", b"\x01", b"\n"]).map(
        lambda s: _doc(second=b'"conclude(1)' + s + b'"')
    ),
    st.binary(min_size=1, max_size=64).map(lambda b: _doc(second=b'"' + b + b'"')),
    st.sampled_from([b"\xed\xa0\x80", b"\xff", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]).map(
        lambda b: _doc(contract=b'"' + b + b'"')
    ),
    st.just(b"\xef\xbb\xbf" + _doc()),
    st.just(b"\xff\xfe" + _doc().decode().encode("utf-16-le")),
    # wrong top-level types, truncated and arbitrary documents
    st.sampled_from([b"null", b"true", b"1", b'"orders"', b"[]", b'[{"contract": "orders"}]', b"{}", b" ", b"{"]),
    st.integers(0, 40).map(lambda n: _doc()[:n]),
    st.binary(max_size=256),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
    # very long strings (some past the 1 MiB limit) and many keys
    st.integers(1_000, 1_200_000).map(lambda n: _doc(contract=b'"' + b"o" * n + b'"')),
    st.integers(1_000, 400_000).map(lambda n: _doc(second=b'"' + b"x" * n + b'"', key=b"intent")),
    st.integers(3, 30_000).map(lambda n: b"{" + b", ".join(b'"k%d": %d' % (i, i) for i in range(n)) + b"}"),
    st.integers(1, 300_000).map(lambda n: b'{"' + b"k" * n + b'": 1, "contract": "x", "program": "x"}'),
    # valid JSON, wrong values: unknown contracts and refs, wrong types, empty text
    st.builds(
        lambda c, p: json.dumps({"contract": c, "program": p}).encode(),
        st.text(max_size=300).filter(lambda c: c.strip().partition("@")[0] != "orders"),
        st.one_of(st.text(max_size=50), st.integers(), st.none(), st.lists(st.integers(), max_size=3)),
    ),
)
_content_types = st.sampled_from(
    ["application/json"] * 6
    + [None, "text/plain", "application/json; charset=utf-16", "application/x-www-form-urlencoded"]
)


# What h11 lets a client put in a header value: visible ASCII, spaces and tabs inside.
_header_values = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300),
    st.builds(
        lambda s, t: f"{s} {t}".strip(),
        st.sampled_from(["Bearer", "bearer", "Basic", "Bearer  ", "chr_"]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=100),
    ),
)


def _assert_a_problem(response: httpx.Response, sent: bytes) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500], sent[:200])
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text[:200]
        body = response.json()
        assert body["type"].startswith("urn:charter:problem:"), body
        assert body["status"] == response.status_code


def test_hostile_json_never_gets_a_5xx(api: Api) -> None:
    anonymous = httpx.Client(base_url=api.url, timeout=60)
    clients = {"token": api.client(), "none": anonymous}
    count = 0
    started = time.monotonic()

    @given(body=_shapes, content_type=_content_types, authorization=_header_values, key=_header_values)
    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(body: bytes, content_type: str | None, authorization: str, key: str) -> None:
        nonlocal count
        headers = {"Content-Type": content_type} if content_type else {}
        for client in clients.values():
            for path in POST_ROUTES:
                _assert_a_problem(client.post(path, content=body, headers=headers), body)
                count += 1
        # The same body with a hostile Authorization and Idempotency-Key (a real token's prefix).
        hostile = {**headers, "Authorization": authorization, "Idempotency-Key": key}
        _assert_a_problem(anonymous.post(POST_ROUTES[count % 2], content=body, headers=hostile), body)
        count += 1

    try:
        fuzz()
        elapsed = time.monotonic() - started
        print(f"\nhostile JSON fuzz: {count} requests in {elapsed:.1f} s")
        assert count >= 2000
        # Healthy afterwards: a normal request runs.
        with api.client() as client:
            ran = client.post("/v1/programs", json={"contract": "orders", "program": "conclude('ok')"})
        assert (ran.status_code, ran.json()["status"], ran.json()["answer"]) == (200, "done", "ok")
    finally:
        for client in clients.values():
            client.close()
