"""The versioned contract registry and the change classifier it publishes with."""

from charter.registry.diff import Change, ChangeKind, diff_contracts
from charter.registry.store import PublishResult, Registry, VersionInfo, charter_home, parse_ref

__all__ = [
    "Change",
    "ChangeKind",
    "PublishResult",
    "Registry",
    "VersionInfo",
    "charter_home",
    "diff_contracts",
    "parse_ref",
]
