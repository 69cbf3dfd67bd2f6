"""The review app's session store (real SQLite files, an injected clock) and `charter ui link`
(the real command, as a process)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from charter.server import TokenStore
from charter.ui import ABSOLUTE_SECONDS, IDLE_SECONDS, LINK_SECONDS, SessionStore
from tests.conftest import charter

TOKEN_SHA = "a" * 64


@dataclass
class Clock:
    now: float = field(default=1_800_000_000.0)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> SessionStore:
    return SessionStore(tmp_path / "ui-sessions.db", clock=clock)


def test_only_digests_of_codes_and_session_ids_are_stored(tmp_path: Path, store: SessionStore) -> None:
    code = store.create_link(TOKEN_SHA, "ana")
    session = store.start(TOKEN_SHA, "ana")
    store.close()
    written = b"".join(path.read_bytes() for path in tmp_path.glob("ui-sessions.db*"))
    assert b"ana" in written  # the file was read: the principal is there
    assert code.encode() not in written
    assert session.id.encode() not in written


def test_the_store_is_readable_by_its_owner_only(tmp_path: Path, store: SessionStore) -> None:
    store.start(TOKEN_SHA, "ana")
    files = list(tmp_path.glob("ui-sessions.db*"))
    assert len(files) >= 2  # the database and its write-ahead log
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, path.name


def test_a_link_is_redeemed_once_within_its_time(store: SessionStore, clock: Clock) -> None:
    first = store.create_link(TOKEN_SHA, "ana")
    assert store.redeem_link(first) == (TOKEN_SHA, "ana")
    assert store.redeem_link(first) is None
    late = store.create_link(TOKEN_SHA, "ana", seconds=60)
    clock.now += 60
    assert store.redeem_link(late) is None
    assert store.redeem_link("never-issued") is None
    fresh = store.create_link(TOKEN_SHA, "ana")
    clock.now += LINK_SECONDS - 1
    assert store.redeem_link(fresh) == (TOKEN_SHA, "ana")


def test_a_session_lives_while_used_up_to_its_absolute_limit(store: SessionStore, clock: Clock) -> None:
    session = store.start(TOKEN_SHA, "ana")
    started = clock.now
    while clock.now + IDLE_SECONDS <= started + ABSOLUTE_SECONDS:
        clock.now += IDLE_SECONDS  # exactly the idle limit: still alive
        alive = store.get(session.id)
        assert alive is not None
        assert alive.csrf == session.csrf
    clock.now = started + ABSOLUTE_SECONDS + 0.5
    assert store.get(session.id) is None


def test_an_idle_session_ends_and_stays_ended(store: SessionStore, clock: Clock) -> None:
    session = store.start(TOKEN_SHA, "ana")
    clock.now += IDLE_SECONDS + 0.5
    assert store.get(session.id) is None
    clock.now -= IDLE_SECONDS  # even a clock that steps back does not revive it: the row is gone
    assert store.get(session.id) is None


def test_start_always_makes_a_new_id_and_ends_the_replaced_one(store: SessionStore) -> None:
    first = store.start(TOKEN_SHA, "ana")
    second = store.start(TOKEN_SHA, "ana", replacing=first.id)
    assert second.id != first.id
    assert second.csrf != first.csrf
    assert store.get(first.id) is None
    assert store.get(second.id) is not None
    store.end(second.id)
    assert store.get(second.id) is None
    store.end(second.id)  # ending twice is nothing


def test_expired_rows_are_deleted_when_a_session_starts(store: SessionStore, clock: Clock) -> None:
    store.create_link(TOKEN_SHA, "ana", seconds=60)
    store.start(TOKEN_SHA, "ana")
    clock.now += IDLE_SECONDS + 1
    store.start(TOKEN_SHA, "bob")
    rows = store._db.execute("SELECT principal FROM sessions").fetchall()
    links = store._db.execute("SELECT count(*) FROM sign_in_links").fetchone()
    assert rows == [("bob",)]
    assert links == (0,)


def test_two_stores_on_one_file_share_sessions(tmp_path: Path, clock: Clock) -> None:
    # Several server processes on one CHARTER_HOME: a session started by one is live in the other.
    one = SessionStore(tmp_path / "s.db", clock=clock)
    other = SessionStore(tmp_path / "s.db", clock=clock)
    session = one.start(TOKEN_SHA, "ana")
    seen = other.get(session.id)
    assert seen is not None
    assert seen.principal == "ana"
    code = other.create_link(TOKEN_SHA, "ana")
    assert one.redeem_link(code) is not None
    assert other.redeem_link(code) is None


# -- charter ui link -----------------------------------------------------------------------------


def test_ui_link_prints_a_link_the_servers_store_redeems(charter_home: Path) -> None:
    token = TokenStore(charter_home / "tokens.yaml")
    token.add("ana-review", "ana", ["ui", "audit:read"])
    done = charter("ui", "link", "ana-review")
    assert done.returncode == 0, done.stderr
    found = re.fullmatch(r"http://127\.0\.0\.1:8700/ui/sign-in\?code=([A-Za-z0-9_-]{43})\n", done.stdout)
    assert found, done.stdout
    assert "within 15 minutes" in done.stderr
    entry = token.named("ana-review")
    assert entry is not None
    store = SessionStore(charter_home / "ui-sessions.db")
    (valid,) = store._db.execute("SELECT expires - created FROM sign_in_links").fetchone()
    assert valid == pytest.approx(15 * 60)
    assert store.redeem_link(found.group(1)) == (entry.sha256, "ana")


def test_ui_link_takes_the_servers_url_and_a_lifetime(charter_home: Path) -> None:
    TokenStore(charter_home / "tokens.yaml").add("ana", "ana", ["ui"])
    done = charter("ui", "link", "ana", "--url", "https://review.example.com:8443/", "--minutes", "60")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("https://review.example.com:8443/ui/sign-in?code=")
    store = SessionStore(charter_home / "ui-sessions.db")
    (valid,) = store._db.execute("SELECT expires - created FROM sign_in_links").fetchone()
    assert valid == pytest.approx(3600)


def test_ui_link_refuses_an_unknown_token_naming_the_known_ones(charter_home: Path) -> None:
    tokens = TokenStore(charter_home / "tokens.yaml")
    tokens.add("ana-review", "ana", ["ui"])
    tokens.add("upstream-ai", "upstream-ai", ["orders:read"])
    done = charter("ui", "link", "ana-reviev")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "error: " in done.stderr
    assert "no token is named 'ana-reviev' (tokens: ana-review, upstream-ai); did you mean 'ana-review'?" in done.stderr
    assert not (charter_home / "ui-sessions.db").exists()


def test_ui_link_refuses_a_token_without_the_ui_scope_saying_how_to_add_one(charter_home: Path) -> None:
    TokenStore(charter_home / "tokens.yaml").add("upstream-ai", "upstream-ai", ["orders:read"])
    done = charter("ui", "link", "upstream-ai")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "the token 'upstream-ai' does not hold the 'ui' scope" in done.stderr
    assert (
        "`charter token revoke upstream-ai` then "
        "`charter token add upstream-ai --principal upstream-ai --scope orders:read --scope ui`"
    ) in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--minutes", "0"], "--minutes 0 is out of range: give 1 to 1440"),
        (["--minutes", "100000"], "--minutes 100000 is out of range"),
        (["--url", "127.0.0.1:8700"], "--url '127.0.0.1:8700' is not the server's address"),
        (["--url", "ftp://x/"], "is not the server's address: give http(s)://HOST[:PORT]"),
        (["--url", "http://x/?next=evil"], "is not the server's address"),
    ],
)
def test_ui_link_refuses_a_bad_url_or_lifetime(charter_home: Path, args: list[str], says: str) -> None:
    TokenStore(charter_home / "tokens.yaml").add("ana", "ana", ["ui"])
    done = charter("ui", "link", "ana", *args)
    assert done.returncode == 1
    assert says in done.stderr
    assert done.stdout == ""
