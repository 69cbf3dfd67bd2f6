"""The approval webhook: `charter serve --approval-webhook URL` tells a receiver of every new
approval request, so a reviewer hears of it without polling.

Each delivery is a POST of JSON `{"type": "approval.requested", "approval": {...}}`: only what
a notifier needs (`approval_event`): the approval id, contract, version, operation, call
number, the rule's reason, the requester, requested_at, expires, and `links` (server paths:
`approval`, GET /v1/approvals/{id}, and `run`, GET /v1/runs/{id}). Never the program, the
arguments nor what the gate read (balances, payees' IBANs...): a notification endpoint often
lives with a third party; a reviewer fetches the details through the authenticated API. With
the header

    Charter-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

keyed with the deployment's webhook key: the 64 hex characters in `keys/webhook.key` (beside
the audit log's signing key; made on first use, mode 0600; `charter approvals webhook-key`
prints it), used as ASCII bytes. A plain http:// URL to a host other than loopback sends the
event readable to the network: `plain_http_warning` says so (`charter serve` prints it).
The receiver recomputes the HMAC over the exact body bytes
and refuses a stale `t` (`verify_signature`), so a captured delivery cannot be replayed later.

Deliveries run on one daemon thread, off every request and run: a slow or failing receiver
never delays a run. A delivery that fails (a connection error, a timeout, any status but
2xx) is retried with exponential backoff, five tries in all, then dropped with a log line:
the approval itself is in the audit log whatever the receiver does (`GET /v1/approvals`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from charter.errors import UsageError

__all__ = [
    "EVENT_FIELDS",
    "SIGNATURE_HEADER",
    "ApprovalWebhook",
    "approval_event",
    "load_or_create_webhook_key",
    "plain_http_warning",
    "sign",
    "verify_signature",
]

_log = logging.getLogger("charter.approvals.webhook")

SIGNATURE_HEADER = "Charter-Signature"
_KEY_NAME = "webhook.key"
_KEY_HEX = 64  # 32 random bytes, as hex text
_TOLERANCE_SECONDS = 300  # how old a signature a receiver accepts by default

# What a notifier needs of a request, and no more (see the module): `principal` is the requester.
EVENT_FIELDS = (
    "approval_id",
    "contract",
    "version",
    "operation",
    "call",
    "reason",
    "principal",
    "requested_at",
    "expires",
)


def approval_event(view: Any) -> dict[str, Any]:
    """The `approval.requested` event for `view` (an ApprovalView or its plain JSON form):
    `{"type": "approval.requested", "approval": {EVENT_FIELDS..., "links": {"approval": path,
    "run": path}}}`; a field the view lacks is left out."""
    plain = msgspec.to_builtins(view)
    approval = {name: plain[name] for name in EVENT_FIELDS if name in plain}
    links = {}
    if "approval_id" in plain:
        links["approval"] = f"/v1/approvals/{plain['approval_id']}"
    if "run_id" in plain:
        links["run"] = f"/v1/runs/{plain['run_id']}"
    approval["links"] = links
    return {"type": "approval.requested", "approval": approval}


def plain_http_warning(url: str) -> str | None:
    """A warning when `url` is plain http:// to a host that is not loopback (localhost,
    127.0.0.0/8, ::1): each event then crosses the network unencrypted. None otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return None
    host = parts.hostname or ""
    try:
        loopback = ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"the approval webhook {url} is plain http:// to {host!r}, not loopback: each event (approval id, "
        "operation, reason, requester) crosses the network unencrypted; use https://"
    )


def load_or_create_webhook_key(keys_dir: Path) -> bytes:
    """The webhook signing key (`keys_dir/webhook.key`: 64 hex characters), made on first use.

    Returns the key as the ASCII bytes of its hex text: what `charter approvals webhook-key`
    prints is exactly what a receiver keys its HMAC with. Raises UsageError if the file is
    readable by others or does not hold 64 hex characters."""
    path = keys_dir / _KEY_NAME
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        try:  # 0600 from the start; O_EXCL: of two processes starting at once, one makes it
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(_KEY_HEX // 2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UsageError(f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if len(text) != _KEY_HEX or any(c not in "0123456789abcdef" for c in text):
        raise UsageError(f"{path} does not hold a webhook key (64 lowercase hex characters); remove it to make one")
    return text.encode("ascii")


def sign(key: bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The `Charter-Signature` header value for `body`: `t=<unix seconds>,v1=<hex HMAC-SHA256>`
    over `b"<t>." + body`."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify_signature(
    key: bytes, header: str, body: bytes, *, tolerance: float = _TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """Whether `header` (a `Charter-Signature` value) signs `body` with `key`, made at most
    `tolerance` seconds from `now`: what a receiver checks before trusting a delivery."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(key, body, timestamp=t).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


class ApprovalWebhook:
    """Delivers `approval.requested` events to `url` on a daemon thread.

    `notify(view)` only queues (it never blocks nor raises); the thread POSTs each event
    signed with `key`, trying up to `tries` times, waiting `backoff` seconds after the first
    failure and twice as long after each next one. `stop()` ends the thread after the event
    it is delivering. `on_attempt(approval_id, status)` (tests, logs) is told of each
    attempt's HTTP status (0 when no response came)."""

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        tries: int = 5,
        backoff: float = 1.0,
        timeout: float = 10.0,
        on_attempt: Callable[[str, int], None] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"the approval webhook {url!r} is not an http:// or https:// URL")
        self.url, self._key = url, key
        self._tries, self._backoff, self._timeout = max(1, tries), backoff, timeout
        self._on_attempt = on_attempt
        self._queue: queue.Queue[Mapping[str, Any] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def notify(self, view: Any) -> None:
        """Queue an `approval.requested` event for `view` (an ApprovalView or its plain JSON
        form; `approval_event` says what is sent). Returns at once; starts the delivery thread
        on first use."""
        event = approval_event(view)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver_all, name="charter-approval-webhook", daemon=True)
                self._thread.start()
        self._queue.put(event)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._queue.put(None)
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _deliver_all(self) -> None:
        with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:
            while True:
                event = self._queue.get()
                if event is None or self._stopping.is_set():
                    return
                try:
                    self._deliver(client, event)
                except Exception:  # never let one event end the thread
                    _log.exception("approval webhook: delivering an event to %s failed", self.url)

    def _deliver(self, client: httpx.Client, event: Mapping[str, Any]) -> None:
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode("utf-8")
        approval_id = str(event["approval"].get("approval_id", "")) if isinstance(event["approval"], dict) else ""
        wait = self._backoff
        for attempt in range(1, self._tries + 1):
            status = 0
            try:
                response = client.post(
                    self.url,
                    content=body,
                    headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._key, body)},
                )
                status = response.status_code
            except httpx.HTTPError as error:
                _log.warning("approval webhook: %s (try %d of %d): %s", self.url, attempt, self._tries, error)
            if self._on_attempt is not None:
                self._on_attempt(approval_id, status)
            if 200 <= status < 300:
                return
            if attempt < self._tries:
                if self._stopping.wait(wait):
                    return
                wait *= 2
        _log.error("approval webhook: %s did not accept approval %s after %d tries", self.url, approval_id, self._tries)
