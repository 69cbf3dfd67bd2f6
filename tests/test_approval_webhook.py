"""The approval webhook alone: its key file, its signature, and delivery to a real loopback
receiver (retried with backoff, never holding up the caller); the receiver is tests.hook_receiver."""

from __future__ import annotations

import hmac
import json
import time
from pathlib import Path

import pytest

from charter.approvals import (
    SIGNATURE_HEADER,
    ApprovalWebhook,
    approval_event,
    load_or_create_webhook_key,
    plain_http_warning,
    sign,
    verify_signature,
)
from charter.errors import UsageError
from tests.hook_receiver import receiving


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    return load_or_create_webhook_key(tmp_path / "keys")


VIEW = {
    "approval_id": "ab" * 16,
    "run_id": "cd" * 16,
    "contract": "payments",
    "version": "1.0.0",
    "operation": "send_payment",
    "call": 3,
    "reason": "a payment above 100.00",
    "principal": "ada",
    "requested_at": "2026-11-29T20:00:00.000000+00:00",
    "expires": "2026-11-30T20:00:00.000000+00:00",
    "status": "pending",
    # What the gate read and the program: never sent to a notifier.
    "program": "acct = payments.get_account(...)",
    "arguments": '{"recipient": "DE89370400440532013000"}',
    "observed": {"balance": "5000.00"},
    "lookups": [{"name": "payee", "value": "DE89370400440532013000"}],
}
EVENT = {
    "type": "approval.requested",
    "approval": {
        **{name: VIEW[name] for name in ("approval_id", "contract", "version", "operation", "call", "reason")},
        **{name: VIEW[name] for name in ("principal", "requested_at", "expires")},
        "links": {"approval": f"/v1/approvals/{'ab' * 16}", "run": f"/v1/runs/{'cd' * 16}"},
    },
}


def test_the_key_is_made_once_private_and_refused_when_shared(tmp_path: Path) -> None:
    first = load_or_create_webhook_key(tmp_path / "keys")
    path = tmp_path / "keys" / "webhook.key"
    assert (len(first), path.stat().st_mode & 0o777) == (64, 0o600)
    assert load_or_create_webhook_key(tmp_path / "keys") == first == path.read_text().strip().encode()
    path.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        load_or_create_webhook_key(tmp_path / "keys")
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(UsageError, match="64 lowercase hex"):
        load_or_create_webhook_key(tmp_path / "keys")


def test_a_signature_verifies_only_the_same_body_key_and_a_recent_time(key: bytes) -> None:
    body = b'{"type":"approval.requested"}'
    header = sign(key, body, timestamp=1_700_000_000)
    expected = hmac.new(key, b"1700000000." + body, "sha256").hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(key, header, body, now=1_700_000_100)
    assert not verify_signature(key, header, body + b" ", now=1_700_000_100)
    assert not verify_signature(b"f" * 64, header, body, now=1_700_000_100)
    assert not verify_signature(key, header, body, now=1_700_000_000 + 301)  # a replayed old delivery
    assert not verify_signature(key, header.replace("t=1700000000", "t=1700000050"), body, now=1_700_000_100)
    for broken in ("", "v1=" + expected, "t=x,v1=" + expected, "t=1,t=2,v1=" + expected):
        assert not verify_signature(key, broken, body, now=1_700_000_100)


def test_a_delivery_is_signed_and_retried_with_backoff_until_accepted(key: bytes) -> None:
    with receiving(statuses=[500, 503]) as receiver:
        webhook = ApprovalWebhook(receiver.url, key, backoff=0.05)
        webhook.notify(VIEW)
        receiver.wait_for(3)
        webhook.stop()
        assert [status for _, _, status in receiver.deliveries] == [500, 503, 204]
        bodies = {body for _, body, _ in receiver.deliveries}
        assert len(bodies) == 1  # the same event each time
        (body,) = bodies
        assert json.loads(body) == EVENT
        assert b"DE89" not in body
        assert b"5000" not in body
        assert all(verify_signature(key, headers[SIGNATURE_HEADER], body) for headers, _, _ in receiver.deliveries)


def test_delivery_gives_up_after_five_tries(key: bytes) -> None:
    with receiving(statuses=[500] * 10) as receiver:
        webhook = ApprovalWebhook(receiver.url, key, backoff=0.01)
        webhook.notify(VIEW)
        receiver.wait_for(5)
        time.sleep(0.3)  # a sixth try would have come by now (backoff 0.01 doubling: 0.16 s)
        webhook.stop()
        assert len(receiver.deliveries) == 5


def test_notify_never_waits_for_the_receiver(key: bytes) -> None:
    with receiving(delay=2.0) as receiver:
        webhook = ApprovalWebhook(receiver.url, key)
        webhook.notify(VIEW)
        webhook.notify(VIEW)
        assert not receiver.arrived.is_set()  # it returned before the receiver had answered
        receiver.wait_for(1)
        webhook.stop(timeout=0.1)


def test_a_webhook_url_must_be_http() -> None:
    with pytest.raises(UsageError, match="http"):
        ApprovalWebhook("file:///etc/passwd", b"0" * 64)


def test_the_event_carries_what_a_notifier_needs_and_nothing_the_gate_read() -> None:
    event = approval_event(VIEW)
    assert event == EVENT
    assert not {"program", "arguments", "observed", "lookups", "status"} & set(event["approval"])


def test_plain_http_to_a_host_beyond_loopback_is_warned_of() -> None:
    for url in ("http://hooks.example.com/x", "http://10.0.0.5:8080/hook", "http://[2001:db8::1]/h"):
        warning = plain_http_warning(url)
        assert warning is not None
        assert "https://" in warning
    for url in ("https://hooks.example.com/x", "http://127.0.0.1:8799/hook", "http://localhost/h", "http://[::1]/h"):
        assert plain_http_warning(url) is None
