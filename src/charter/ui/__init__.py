"""The review app: web pages under /ui where engineers and auditors read, verify and replay
runs, and decide approvals. Served by `charter serve` from the same `CharterService` as the
HTTP API; sign-in by a one-time link (`charter ui link`) or an API token holding the `ui`
scope, exchanged for a session cookie (`SessionStore`)."""

from charter.ui._app import COOKIE, UI_SCOPE, UiContext, UiError, Viewer, mount_ui
from charter.ui._sessions import ABSOLUTE_SECONDS, IDLE_SECONDS, LINK_SECONDS, Session, SessionStore

__all__ = [
    "ABSOLUTE_SECONDS",
    "COOKIE",
    "IDLE_SECONDS",
    "LINK_SECONDS",
    "UI_SCOPE",
    "Session",
    "SessionStore",
    "UiContext",
    "UiError",
    "Viewer",
    "mount_ui",
]
