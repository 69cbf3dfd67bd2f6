"""Charter's exceptions, in one hierarchy.

    CharterError
    ├── UsageError              the caller must fix its input; nothing was changed
    │   ├── ContractError       a contract source is malformed (carries every problem found)
    │   ├── RegistryError       the registry refused a request
    │   │   ├── ContractNotFound
    │   │   ├── VersionConflict     same version with other content, or not newer than the latest
    │   │   ├── ChangeRefused       a breaking change without a major bump, or an unapproved relaxation
    │   │   └── UndecidedDraft      a draft whose `to_decide:` list still holds items
    │   ├── RunNotFound         no run in the audit log has that id
    │   ├── InvalidPrincipal    a principal id or scope is not valid, or looks like a known principal
    │   ├── SchemaMismatch      a store is at another schema version (`charter db upgrade`)
    │   ├── MissingApiKey       the Runtime Agent needs ANTHROPIC_API_KEY (or a model given in code)
    │   └── ModelRequestsBlocked    real model requests are switched off (tests)
    ├── ModelUnavailable        the model gave no answer, after bounded retries (a run ends failed)
    │   ├── ScriptExhausted     a ScriptedModel was asked more often than it has answers
    │   └── RecordingMismatch   a recording (--replay) holds no exchange for the request
    ├── AuditError              the audit log could not be written or read (a run fails closed)
    └── StoreUnavailable        the database is unreachable for now (HTTP 503 with Retry-After)

Usage errors are kept apart from run outcomes (denied, timed out, failed), which are
values a run returns, not exceptions a caller has to catch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AuditError",
    "ChangeRefused",
    "CharterError",
    "ContractError",
    "ContractNotFound",
    "InvalidPrincipal",
    "MissingApiKey",
    "ModelRequestsBlocked",
    "ModelUnavailable",
    "Problem",
    "RecordingMismatch",
    "RegistryError",
    "RunNotFound",
    "SchemaMismatch",
    "ScriptExhausted",
    "StoreUnavailable",
    "UndecidedDraft",
    "UsageError",
    "VersionConflict",
]


class CharterError(Exception):
    """Base of every exception Charter raises on purpose."""


class UsageError(CharterError):
    """The input was wrong; the message says where and how to fix it."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a contract source, located as precisely as we can."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ContractError(UsageError):
    """A contract source failed to load or check. `problems` lists every finding, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RegistryError(UsageError):
    """The registry refused a request."""


class ContractNotFound(RegistryError):
    """No published contract (or version) has that name."""


class VersionConflict(RegistryError):
    """A version was published with other content, or is not newer than the latest."""


class ChangeRefused(RegistryError):
    """Publishing would make a breaking change without a major bump, or relax a boundary unapproved.

    `changes` holds the offending changes so a caller can show them.
    """

    def __init__(self, message: str, changes: Sequence[object]) -> None:
        self.changes = tuple(changes)
        super().__init__(message)


class UndecidedDraft(RegistryError):
    """A contract still lists items under `to_decide:` (a draft from import-openapi); `items` holds them."""

    def __init__(self, message: str, items: Sequence[str]) -> None:
        self.items = tuple(items)
        super().__init__(message)


class InvalidPrincipal(UsageError, ValueError):
    """A principal id or scope is not valid (charter.principal says which are), or an id looks
    like a known principal's. A ValueError too, so validators (pydantic, msgspec) report it."""


class RunNotFound(UsageError):
    """No run in the audit log has that id (or the prefix given matches several)."""


class SchemaMismatch(UsageError):
    """A store's schema version is not this release's: `found` older (run `charter db upgrade`)
    or newer (a later release wrote it) than `expected`."""

    def __init__(self, message: str, *, found: int, expected: int) -> None:
        super().__init__(message)
        self.found = found
        self.expected = expected


class AuditError(CharterError):
    """The audit log could not be written or read. A gate that cannot write its receipt denies.

    `opened_run`: set when a run had been opened (its program started, and may have acted)
    before this error: a server must not let a retry under the same Idempotency-Key run again."""

    opened_run: str | None = None


class MissingApiKey(UsageError):
    """The Runtime Agent was asked to use Claude but ANTHROPIC_API_KEY is not set."""


class ModelRequestsBlocked(UsageError):
    """A real model request was attempted while CHARTER_ALLOW_MODEL_REQUESTS=0 (as in tests)."""


class ModelUnavailable(CharterError):
    """The model gave no usable answer: the API failed past its retries, or refused the request.

    `tries` counts the HTTP requests made. The Runtime Agent turns this into a `failed`
    conclusion; nothing reaches the backend from a request that never got a program.
    """

    def __init__(self, message: str, *, tries: int) -> None:
        super().__init__(message)
        self.tries = tries


class ScriptExhausted(ModelUnavailable):
    """A ScriptedModel was asked for more answers than its script holds."""


class RecordingMismatch(ModelUnavailable):
    """A recording of model responses (`--replay FILE`) holds no exchange for the request made:
    a local error naming the file, never a Messages API error and never the prompt."""


class StoreUnavailable(CharterError):
    """A store's database cannot be reached now (PostgreSQL restarting, the pool exhausted): nothing
    was changed; the same request may succeed after `retry_after` seconds. Servers answer 503 with
    Retry-After."""

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after
