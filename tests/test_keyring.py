"""The keyring (issue 19): per-worker signing keys, rotation, revocation with a not-after
time, unknown keys, and a strictly loaded keyring file. Real SQLite logs, the real
`charter keys` command."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from charter.audit import AuditLog, Opened, Sealed, StoredReceipt, Verification, verify_log
from charter.audit._keyring import Keyring, trusted_keys
from charter.audit.keys import load_or_create_signing_key, read_public_key
from charter.audit.receipts import text_sha256
from charter.errors import AuditError, UsageError
from tests.conftest import charter


def write_run(log: AuditLog, at: str) -> list[StoredReceipt]:
    """One run (an opening and its seal) recorded at time `at`: the receipts as stored."""
    run_id = secrets.token_hex(16)
    recorder = log.open_run(
        Opened(
            run_id=run_id,
            seq=0,
            at=at,
            intent="test",
            program="conclude('x')",
            program_sha256=text_sha256("conclude('x')"),
            principal="ada",
            scopes=(),
            contract="c",
            version="1.0.0",
            contract_sha256="c" * 64,
            clock=at,
            seed=1,
            limits={},
            host="test",
            pid=1,
        )
    )
    recorder.seal(
        Sealed(
            run_id=run_id,
            seq=0,
            at=at,
            status="completed",
            outcome="{}",
            calls=0,
            wall_ms=1.0,
            cpu_ms=1.0,
            receipts=0,
            in_doubt=(),
        )
    )
    return list(log.stored(run_id))


def verify(log: AuditLog) -> Verification:
    return verify_log(log, log.trusted_keys(), every_signature=True)


def ok(result: object) -> None:
    assert getattr(result, "returncode", None) == 0, (getattr(result, "stdout", ""), getattr(result, "stderr", ""))


def test_rotated_keys_verify_old_receipts_revoked_and_unknown_keys_are_reported(
    charter_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ok(charter("keys", "new", "worker-a"))
    ok(charter("keys", "new", "worker-b"))
    keys_dir = charter_home / "keys"
    a = read_public_key(keys_dir / "worker-a.pub").key_id
    path = charter_home / "audit.db"

    monkeypatch.setenv("CHARTER_SIGNING_KEY", "worker-a")  # the worker's key, picked by AuditLog
    log_a = AuditLog(path)
    january = write_run(log_a, "2026-01-10T12:00:00+00:00")
    march = write_run(log_a, "2026-03-10T12:00:00+00:00")
    assert {r.decoded().key_id for r in january + march} == {a}

    monkeypatch.setenv("CHARTER_SIGNING_KEY", "worker-b")  # rotated: new receipts by B
    log_b = AuditLog(path)
    april = write_run(log_b, "2026-04-10T12:00:00+00:00")
    assert {r.decoded().key_id for r in april} == {read_public_key(keys_dir / "worker-b.pub").key_id}
    report = verify(log_b)
    assert report.ok, report.findings  # A, rotated out but listed, still verifies its receipts
    assert report.signatures_checked == 6

    ok(charter("keys", "revoke", a, "--not-after", "2026-02-01T00:00:00Z", "--note", "laptop stolen"))
    report = verify(log_b)
    revoked = f"signed by key {a} (worker-a) after it was revoked (not after 2026-02-01T00:00:00+00:00)"
    assert [str(f) for f in report.findings] == [
        f"receipt {r.log_seq} (run {r.run_id}): {revoked}" for r in march
    ]  # exactly the receipts A signed after its not-after: January's still verify

    # A key no keyring lists (an intruder's, or a worker nobody added) is reported on each receipt.
    stranger = load_or_create_signing_key(tmp_path / "elsewhere", "stranger")
    unknown = write_run(AuditLog(path, key=stranger), "2026-04-11T12:00:00+00:00")
    report = verify(log_b)
    assert [str(f) for f in report.findings][2:] == [
        f"receipt {r.log_seq} (run {r.run_id}): signed by unknown key {stranger.key_id}, which is not among the "
        "trusted keys (`charter keys list`)"
        for r in unknown
    ]

    # The revoked key signs nothing more: the writer refuses it before any receipt.
    monkeypatch.setenv("CHARTER_SIGNING_KEY", "worker-a")
    with pytest.raises(UsageError, match=r"keys/worker-a.key \(worker-a, id [0-9a-f]{16}\) was revoked"):
        AuditLog(path).signing_key  # noqa: B018
    listed = Keyring.load(keys_dir / "keyring.yaml").find("worker-a")
    assert listed.note == "laptop stolen"


def test_a_keyring_made_later_lists_the_existing_key_so_old_logs_verify(
    charter_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(charter_home / "audit.db")
    write_run(log, "2026-01-10T12:00:00+00:00")  # signed by keys/receipts.key, no keyring yet
    assert not (charter_home / "keys" / "keyring.yaml").exists()
    assert verify(log).ok  # the .pub files are the keyring

    made = charter("keys", "new", "worker-1")
    ok(made)
    assert "listed existing key receipts" in made.stdout
    ring = Keyring.load(charter_home / "keys" / "keyring.yaml")
    assert [e.name for e in ring.entries] == ["receipts", "worker-1"]
    monkeypatch.setenv("CHARTER_SIGNING_KEY", "worker-1")
    write_run(AuditLog(charter_home / "audit.db"), "2026-01-11T12:00:00+00:00")
    assert verify(log).ok

    # Once a keyring exists, only it is trusted: a .pub dropped in keys/ is not.
    stray = load_or_create_signing_key(charter_home / "keys", "stray")
    assert stray.key_id not in trusted_keys(charter_home / "keys")


def test_only_the_default_key_is_made_on_first_use_and_an_operators_keyring_lists_every_signer(
    charter_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ok(charter("keys", "new", "worker-1"))
    # A name that names no key (a typo, or a name an attacker chose) is refused, never made and
    # trusted on the spot (it once was: the README-only attack, F3); nothing is left behind.
    monkeypatch.setenv("CHARTER_SIGNING_KEY", "worker-2")
    with pytest.raises(UsageError, match=r"there is no signing key .*worker-2\.key .*charter keys new worker-2"):
        AuditLog(charter_home / "audit.db").signing_key  # noqa: B018
    assert not (charter_home / "keys" / "worker-2.key").exists()
    ok(charter("keys", "new", "worker-2"))
    log = AuditLog(charter_home / "audit.db")
    write_run(log, "2026-01-10T12:00:00+00:00")
    ring = Keyring.load(charter_home / "keys" / "keyring.yaml")
    assert [e.name for e in ring.entries] == ["worker-1", "worker-2"]
    assert verify(log).ok

    # An operator's keyring elsewhere is theirs: a key it does not list is refused, naming the fix.
    operator = tmp_path / "operator" / "keyring.yaml"
    ok(charter("keys", "add", str(charter_home / "keys" / "worker-1.pub"), "--name", "w1", "--keyring", str(operator)))
    ok(charter("keys", "new", "worker-3"))  # listed in the local keyring, not in the operator's
    monkeypatch.setenv("CHARTER_KEYRING", str(operator))
    monkeypatch.setenv("CHARTER_SIGNING_KEY", "worker-3")
    with pytest.raises(UsageError, match=r"is not in the keyring .*charter keys add .*worker-3\.pub --name worker-3"):
        AuditLog(charter_home / "audit.db").signing_key  # noqa: B018
    assert [e.name for e in Keyring.load(operator).entries] == ["w1"]  # nothing seeded into an operator's


def test_keys_list_shows_the_keyring(charter_home: Path) -> None:
    ok(charter("keys", "new", "worker-1"))
    ok(charter("keys", "revoke", "worker-1", "--not-after", "2026-05-01T00:00:00+02:00"))
    listed = charter("keys", "list")
    ok(listed)
    key_id = read_public_key(charter_home / "keys" / "worker-1.pub").key_id
    assert f"{key_id}  worker-1  added " in listed.stdout
    assert "revoked, not after 2026-04-30T22:00:00+00:00" in listed.stdout


GOOD_KEY = "9d1c5e3a3bd5a4a0f6f5b3b1c0a5f1d2e7c4b8a9f0e1d2c3b4a5968778695a4b"


def keyring_text(public_key: str = GOOD_KEY, key_id: str | None = None, extra: str = "") -> str:
    from charter.audit.keys import key_id_of

    try:
        derived = key_id_of(bytes.fromhex(public_key))
    except ValueError:
        derived = "0" * 16
    return (
        "version: 1\n"
        "keys:\n"
        f"  - key_id: '{key_id or derived}'\n"
        f"    public_key: {public_key}\n"
        "    name: worker-1\n"
        "    added: '2026-11-30T04:00:00+00:00'\n"
        "    not_after: null\n"
        f"{extra}"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            keyring_text(public_key="abc"),
            ":4: keys.0.public_key: must be the raw Ed25519 public key as 64 hex digits (as in keys/NAME.pub)",
        ),
        (
            keyring_text(key_id="0123456789abcdef"),
            ":3: keys.0: key_id '0123456789abcdef' is not the id of public_key, which is",
        ),
        (keyring_text(extra="    expires: tomorrow\n"), ":8: keys.0.expires: Extra inputs are not permitted"),
        (keyring_text().replace("'2026-11-30T04:00:00+00:00'", "'yesterday'"), ":6: keys.0.added: Input should be"),
        (keyring_text().replace("version: 1", "version: 0"), ":1: version: Input should be 1"),
        (keyring_text().replace("version: 1", "version: 2"), "format version 2, newer than version 1"),
        ("keys: [\n", ":2:1: invalid YAML"),
    ],
)
def test_a_malformed_keyring_is_refused_naming_file_line_field_and_fix(
    charter_home: Path, text: str, expected: str
) -> None:
    path = charter_home / "keys" / "keyring.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as raised:
        trusted_keys(charter_home / "keys")
    assert str(raised.value).startswith(str(path))
    assert expected in str(raised.value)
    result = charter("audit", "verify")  # the CLI says the same, exit 1, and verifies nothing
    assert result.returncode == 1
    assert expected in result.stderr


def test_a_key_named_twice_is_refused(charter_home: Path) -> None:
    path = charter_home / "keys" / "keyring.yaml"
    path.parent.mkdir(parents=True)
    entry = keyring_text().split("keys:\n")[1]
    path.write_text(keyring_text() + entry, encoding="utf-8")
    with pytest.raises(UsageError, match=r"keyring.yaml:\d+: .*is listed twice: keep one entry"):
        trusted_keys(charter_home / "keys")


def test_a_bad_signing_key_name_is_refused(monkeypatch: pytest.MonkeyPatch, charter_home: Path) -> None:
    monkeypatch.setenv("CHARTER_SIGNING_KEY", "../escape")
    with pytest.raises(UsageError, match=re.escape("CHARTER_SIGNING_KEY '../escape' is not a key name")):
        AuditLog(charter_home / "audit.db").signing_key  # noqa: B018
    assert not (charter_home / "escape.key").exists()


def test_a_key_revoked_while_the_process_runs_signs_no_new_run(
    charter_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`charter keys revoke` reaches a running process: the next run it would open is refused
    (AuditError: the server answers 503), where the process went on signing with the revoked key
    until it stopped (README-only attack, F4)."""
    ok(charter("keys", "new", "worker-1"))
    monkeypatch.setenv("CHARTER_SIGNING_KEY", "worker-1")
    log = AuditLog(charter_home / "audit.db")
    write_run(log, "2026-01-10T12:00:00+00:00")
    ok(charter("keys", "revoke", "worker-1", "--not-after", "now"))
    with pytest.raises(AuditError, match=r"no run can be signed: the signing key keys/worker-1\.key .* was revoked"):
        write_run(log, "2026-01-10T12:00:01+00:00")
    assert len(log.run_ids()) == 1
