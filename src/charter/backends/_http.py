"""Operations bound to an HTTP service: one request per allowed call, over a lean
`http.client` pool (`_lean`; httpx when a transport is given).

What a demanding caller of a real service needs, and what this does:

- Writes are sent exactly once. A write that reached the service and got no answer
  (timeout, dropped connection, a 5xx) may have taken effect: it fails *in doubt*, the
  receipt says so, and nothing here sends it again. Only a write that provably never left
  (the connection could not be opened) is reported as not sent.
- Every write carries `Idempotency-Key` (the key its decision receipt holds) and
  `Charter-Receipt` (run/call), so a service that honours the key applies a repeated write
  once, and its logs point back to the audit record.
- Reads retry after transport errors and 5xx answers, `read_retries` times, with backoff,
  never past the run's deadline.
- No call outlives its run: every connect, write and read is bounded by what remains of the
  run's wall time (`_deadline`), so a service that trickles its answer is cut off at the
  deadline like one that never answers (BACKEND_TIMEOUT, in doubt for a write). That is why
  the backend is not `blocking`: the gate may call it on the run's own thread, no watchdog.
- A service that returns an `ETag` on reads gets it back as `If-Match` on the write the
  gate decided on that read: a change in between is a 412, reported as PreconditionFailed,
  and the write is not made.
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any, TypedDict
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from charter.backends._base import BackendFailure, BackendNotFound, CallContext, PreconditionFailed, error_text
from charter.backends._deadline import until
from charter.backends._lean import LeanClient, LeanRequest, LeanResponse
from charter.compiler.artifact import CompiledContract, HttpEndpointSpec, OperationRule
from charter.errors import UsageError

__all__ = ["HttpBackend", "service_url", "service_url_variable"]

_json = msgspec.json.Encoder(decimal_format="string")
_Client = httpx.Client | LeanClient
_Request = httpx.Request | LeanRequest
_Response = httpx.Response | LeanResponse
_ETAGS_KEPT = 10_000  # (run, entity, key) -> ETag of its latest read; enough for any run in flight


def service_url_variable(service: str) -> str:
    """The environment variable that says where `service` runs: CHARTER_SERVICE_<SERVICE>_URL."""
    return f"CHARTER_SERVICE_{service.upper()}_URL"


def service_url(contract: CompiledContract, service: str, default: str | None) -> str:
    """The base URL of `service`: its variable (`service_url_variable`), else the contract's default."""
    variable = service_url_variable(service)
    url = os.environ.get(variable) or default
    if not url:
        raise UsageError(
            f"contract {contract.name} {contract.version} calls HTTP service '{service}', whose address is not "
            f"known: set {variable} (or give binding.http.base_url in the contract)"
        )
    return url.rstrip("/")


class HttpBackend:
    """Performs a contract's HTTP-bound operations. Thread-safe; one connection pool per service."""

    blocking: bool = False  # every socket operation ends by the run's deadline (`_deadline`)

    def __init__(self, contract: CompiledContract, *, transport: httpx.BaseTransport | None = None) -> None:
        """`transport`: send through httpx with this transport (a test's, a proxy's) instead
        of the lean client; its timeouts are then httpx's, per operation."""
        self._rules = {name: rule for name, rule in contract.gate.operations.items() if rule.binding.http}
        self._clients: dict[str, _Client] = {}
        headers = {"User-Agent": "charter", "Accept": "application/json"}
        for rule in self._rules.values():
            endpoint = rule.binding.http
            assert endpoint is not None
            if endpoint.service not in self._clients:
                base_url = service_url(contract, endpoint.service, endpoint.base_url)
                if transport is None and not _proxied(base_url):
                    self._clients[endpoint.service] = LeanClient(base_url, headers=headers)
                    continue
                # httpx: a given transport, or the environment's proxy (HTTP_PROXY...) for this service
                self.blocking = True  # httpx bounds each operation, not the call: under the watchdog
                self._clients[endpoint.service] = httpx.Client(
                    base_url=base_url,
                    transport=transport,
                    headers=headers,
                    follow_redirects=False,  # a write must not be re-sent to another address
                )
        self._etags: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._etags_lock = threading.Lock()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        rule = self._rules.get(operation)
        if rule is None or rule.binding.http is None:
            raise LookupError(f"HttpBackend has no endpoint for {operation!r}")
        endpoint = rule.binding.http
        request = self._request(rule, endpoint, arguments, context)
        with until(context.deadline if context is not None else None):
            if rule.kind == "write":
                response = self._send_write(rule, endpoint, request, context)
            else:
                response = self._send_read(rule, endpoint, request, context)
        self._remember_etag(rule, arguments, context, response)
        return self._result(rule, endpoint, response)

    # -- building the request -------------------------------------------------------------

    def _request(
        self,
        rule: OperationRule,
        endpoint: HttpEndpointSpec,
        arguments: Mapping[str, Any],
        context: CallContext | None,
    ) -> _Request:
        path = endpoint.path
        for name in endpoint.path_params:
            path = path.replace("{" + name + "}", quote(_text(arguments[name]), safe=""))
        query: list[tuple[str, str | int | float | bool | None]] = [
            (name, _text(item))
            for name in endpoint.query
            if arguments.get(name) is not None
            for item in (arguments[name] if isinstance(arguments[name], list) else [arguments[name]])
        ]
        headers: dict[str, str] = {}
        content = None
        if endpoint.method != "GET" and (endpoint.body or rule.kind == "write"):
            content = _json.encode({name: arguments.get(name) for name in endpoint.body if name in arguments})
            headers["Content-Type"] = "application/json"
        if context is not None and rule.kind == "write":
            headers["Charter-Receipt"] = f"{context.run_id}/{context.call}"
            if context.idempotency_key:
                headers["Idempotency-Key"] = context.idempotency_key
            if context.precondition is not None:
                etag = self._etag(context.run_id, context.precondition.entity, context.precondition.key)
                if etag is not None:
                    headers["If-Match"] = etag
        client = self._clients[endpoint.service]
        return client.build_request(endpoint.method, path, params=query, content=content, headers=headers)

    # -- sending --------------------------------------------------------------------------

    def _send_write(
        self, rule: OperationRule, endpoint: HttpEndpointSpec, request: _Request, context: CallContext | None
    ) -> _Response:
        where = f"{rule.name} ({request.method} {request.url})"
        timeout = _timeout(endpoint, context, where)
        try:
            response = _send(self._clients[endpoint.service], request, timeout)
        except httpx.ConnectError as error:
            raise BackendFailure(
                "BACKEND_UNREACHABLE",
                f"{where}: the service could not be reached; nothing was sent. {_where_from(endpoint.service)}",
                **_withheld(error),
            ) from None
        except httpx.PoolTimeout:
            raise BackendFailure("BACKEND_UNREACHABLE", f"{where}: no connection was free; nothing was sent") from None
        except (httpx.TimeoutException, httpx.TransportError) as error:
            kind = (
                "no answer came within the time limit"
                if isinstance(error, httpx.TimeoutException)
                else "the connection broke before the answer"
            )
            raise BackendFailure(
                "BACKEND_TIMEOUT" if isinstance(error, httpx.TimeoutException) else "BACKEND_DISCONNECTED",
                f"{where} was sent and {kind}: it may have taken effect. It was not sent again; "
                f"read the {rule.entity or 'entity'} to learn its state, and do not repeat the write in this run",
                in_doubt=True,
                **_withheld(error),
            ) from None
        except BaseException as error:  # a transport or hook's own failure, even SystemExit: its text withheld
            raise BackendFailure(
                "BACKEND_ERROR",
                f"{where} failed while it was being sent ({type(error).__name__}): it may have taken effect. "
                f"It was not sent again; read the {rule.entity or 'entity'} to learn its state",
                in_doubt=True,
                **_withheld(error),
            ) from None
        if response.status_code >= 500:
            # A 5xx body is the service's failure, not a message to callers: it is withheld.
            raise BackendFailure(
                "BACKEND_ERROR",
                f"{where} was answered {response.status_code}: the service failed while "
                "handling it, so it may have taken effect. It was not sent again",
                in_doubt=True,
                detail=_detail(response),
                detail_type=f"HTTP {response.status_code}",
            )
        _raise_for_client_error(where, response)
        return response

    def _send_read(
        self, rule: OperationRule, endpoint: HttpEndpointSpec, request: _Request, context: CallContext | None
    ) -> _Response:
        where = f"{rule.name} ({request.method} {request.url})"
        tries = endpoint.read_retries + 1
        problem = ""
        withheld: _Detail | None = None
        for attempt in range(tries):
            if attempt:
                _pause(attempt, context)
            timeout = _timeout(endpoint, context, where)
            try:
                response = _send(self._clients[endpoint.service], request, timeout)
            except httpx.TimeoutException:
                problem, code, withheld = "no answer came within the time limit", "BACKEND_TIMEOUT", None
                continue
            except httpx.ConnectError as error:
                problem, code = f"it could not be reached. {_where_from(endpoint.service)}", "BACKEND_UNREACHABLE"
                withheld = _withheld(error)
                continue
            except httpx.TransportError as error:
                problem, code, withheld = "the connection broke", "BACKEND_UNREACHABLE", _withheld(error)
                continue
            except BaseException as error:  # a transport or hook's own failure: not retried, text withheld
                raise BackendFailure(
                    "BACKEND_ERROR", f"{where} failed ({type(error).__name__})", **_withheld(error)
                ) from None
            if response.status_code >= 500:
                problem, code = f"answered {response.status_code}", "BACKEND_ERROR"
                withheld = _Detail(detail=_detail(response), detail_type=f"HTTP {response.status_code}")
                continue
            _raise_for_client_error(where, response)
            return response
        message = f"{where} failed {tries} times; the last: {problem}"
        if withheld is None:
            raise BackendFailure(code, message)
        raise BackendFailure(code, message, **withheld)

    # -- the response ---------------------------------------------------------------------

    def _result(self, rule: OperationRule, endpoint: HttpEndpointSpec, response: _Response) -> Any:
        where = f"{rule.name} ({response.request.method} {response.request.url})"
        if rule.returns is None and not response.content:
            return None
        try:
            body = msgspec.json.decode(response.content)
        except msgspec.DecodeError as error:
            raise BackendFailure(
                "BAD_RESPONSE",
                f"{where}: the service answered {response.status_code} with no JSON",
                **_withheld(error),
            ) from None
        return _pointer(body, endpoint.result, where)

    def _remember_etag(
        self, rule: OperationRule, arguments: Mapping[str, Any], context: CallContext | None, response: _Response
    ) -> None:
        etag = response.headers.get("ETag")
        if context is None or etag is None or rule.entity is None or rule.key is None:
            return
        slot = (context.run_id, rule.entity, _key(arguments.get(rule.key)))
        with self._etags_lock:
            self._etags[slot] = etag
            self._etags.move_to_end(slot)
            while len(self._etags) > _ETAGS_KEPT:
                self._etags.popitem(last=False)

    def _etag(self, run_id: str, entity: str, key: Any) -> str | None:
        with self._etags_lock:
            return self._etags.get((run_id, entity, _key(key)))


class _Detail(TypedDict):
    detail: str
    detail_type: str


def _withheld(error: BaseException) -> _Detail:
    """An exception's text as BackendFailure's withheld detail (it may name hosts, paths, data)."""
    return {"detail": error_text(error), "detail_type": f"{type(error).__module__}.{type(error).__qualname__}"}


def _proxied(url: str) -> bool:
    """Does the environment send requests to `url` through a proxy (HTTP_PROXY, NO_PROXY...)?"""
    parts = urlsplit(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")


def _where_from(service: str) -> str:
    variable = service_url_variable(service)
    return f"Is the service running? Its address comes from {variable} or the contract's base_url"


def _timeout(endpoint: HttpEndpointSpec, context: CallContext | None, where: str) -> dict[str, float]:
    """The endpoint's timeout, cut to what remains of the run's wall time."""
    seconds = endpoint.timeout_seconds
    if context is not None:
        seconds = min(seconds, context.deadline - time.monotonic())
    if seconds <= 0:
        raise BackendFailure("BACKEND_TIMEOUT", f"{where}: the run's wall time ran out before it was sent")
    return {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}


def _send(client: _Client, request: _Request, timeout: dict[str, float]) -> _Response:
    request.extensions["timeout"] = timeout  # per attempt: what remains of the run's wall time
    return client.send(request)  # type: ignore[arg-type]  # each client sends its own requests


def _pause(attempt: int, context: CallContext | None) -> None:
    delay = min(1.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2)  # jitter, not secrecy
    if context is not None:
        delay = min(delay, max(0.0, context.deadline - time.monotonic() - 0.01))
    time.sleep(delay)


def _raise_for_client_error(where: str, response: _Response) -> None:
    status = response.status_code
    if status < 400:
        return
    detail = _detail(response)
    if status == 404:
        raise BackendNotFound("NOT_FOUND", f"{where}: not found ({detail})")
    if status == 412:
        # The service's own words first: they name the entity and what changed.
        raise PreconditionFailed(f"{detail} (412 from {response.request.method} {response.request.url})")
    if status == 409:
        raise BackendFailure("CONFLICT", f"{where}: the service refused it as a conflict ({detail})")
    raise BackendFailure("BACKEND_REJECTED", f"{where}: the service answered {status} ({detail})")


def _detail(response: _Response) -> str:
    """The service's own words: a problem+json `detail`, a JSON `detail`, or the start of its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict):
        for field in ("detail", "message", "title", "error"):
            if isinstance(body.get(field), str):
                return str(body[field])[:300]
    return response.text[:200]


def _pointer(body: Any, pointer: str, where: str) -> Any:
    """Resolve an RFC 6901 JSON pointer."""
    value = body
    for raw in pointer.split("/")[1:] if pointer else ():
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and token in value:
            value = value[token]
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            raise BackendFailure("BAD_RESPONSE", f"{where}: the response has nothing at {pointer}")
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):  # a datetime too: RFC 3339 / ISO 8601 either way
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _key(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")
