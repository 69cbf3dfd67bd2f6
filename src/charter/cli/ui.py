"""`charter ui link`: a one-time sign-in link to the review app (`charter serve`, under /ui).

The link signs in once, as the token it was made for, within --minutes. It is written to the
session store `charter serve` reads for this CHARTER_HOME ($CHARTER_HOME/ui-sessions.db, beside
the audit log); only its sha256 is kept there. Exit status: 0 printed; 1 a usage error (no such
token, a token without the `ui` scope, a bad --url or --minutes).
"""

from __future__ import annotations

import difflib
import urllib.parse
from pathlib import Path
from typing import Annotated

import typer

from charter.cli._output import fail, note
from charter.cli.serve import TokensOption
from charter.errors import CharterError, UsageError

__all__ = ["DEFAULT_URL", "MAX_LINK_MINUTES", "app", "sessions_path", "sign_in_link"]

app = typer.Typer(help="The review app served by `charter serve` under /ui.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8700"
MAX_LINK_MINUTES = 24 * 60  # a link is for handing over now, not a standing credential


def sessions_path(home: Path | None = None) -> Path:
    """The review app's session store of CHARTER_HOME (or `home`): the one `charter serve`
    opens beside its audit log."""
    from charter.registry import charter_home

    return (home or charter_home()) / "ui-sessions.db"


def sign_in_link(tokens: Path | None, name: str, *, url: str, minutes: float, home: Path | None = None) -> str:
    """`<url>/ui/sign-in?code=<code>`: signs in once, within `minutes`, as the token `name` of
    the token file `tokens` (default $CHARTER_HOME/tokens.yaml). Raises UsageError naming the
    token file for an unknown token (with the names it holds) or one without the `ui` scope,
    and for a `url` that is not http(s)://HOST[:PORT] or `minutes` outside 1..MAX_LINK_MINUTES."""
    from charter.server import TokenStore
    from charter.ui import UI_SCOPE, SessionStore

    base = _base_url(url)
    if not 1 <= minutes <= MAX_LINK_MINUTES:
        raise UsageError(f"--minutes {minutes:g} is out of range: give 1 to {MAX_LINK_MINUTES} (a day)")
    store = TokenStore(tokens)
    entry = store.named(name)
    if entry is None:
        names = [e.name for e in store.entries()]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(names) or "none; add one with `charter token add NAME --principal ID --scope ui`"
        raise UsageError(f"{store.path}: no token is named {name!r} (tokens: {known}){hint}")
    if UI_SCOPE not in entry.scopes:
        scopes = " ".join(f"--scope {s}" for s in [*entry.scopes, UI_SCOPE])
        raise UsageError(
            f"{store.path}: the token {name!r} does not hold the {UI_SCOPE!r} scope the review app signs in with; "
            f"tokens are not edited in place: `charter token revoke {name}` then "
            f"`charter token add {name} --principal {entry.principal} {scopes}` (a new token, printed once)"
        )
    sessions = SessionStore(sessions_path(home))
    try:
        code = sessions.create_link(entry.sha256, entry.principal, seconds=minutes * 60)
    finally:
        sessions.close()
    return f"{base}/ui/sign-in?code={code}"


def _base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"--url {url!r} is not the server's address: give http(s)://HOST[:PORT], e.g. {DEFAULT_URL}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@app.command("link")
def link(
    name: Annotated[str, typer.Argument(metavar="TOKEN-NAME", help="The token to sign in as (`charter token list`).")],
    url: Annotated[str, typer.Option("--url", help="Where `charter serve` answers.")] = DEFAULT_URL,
    minutes: Annotated[int, typer.Option("--minutes", help="How long the link may be used (once).")] = 15,
    tokens: TokensOption = None,
) -> None:
    """Print a one-time sign-in link to the review app for the token TOKEN-NAME.

    The token must hold the `ui` scope. The link signs in once, within --minutes; a used or
    expired one is refused. It is written to $CHARTER_HOME/ui-sessions.db, where `charter serve`
    on this CHARTER_HOME reads it.
    """
    try:
        printed = sign_in_link(tokens, name, url=url, minutes=minutes)
    except CharterError as error:
        fail(error)
    print(printed)
    note(f"signs in once as token {name!r} within {minutes} minutes; open it in the browser that will use it")
