"""The HTTP API's parts as `charter serve` builds them, for the server tests' fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from charter.agent import Charter, ScriptedModel
from charter.agent._model import ModelRequest
from charter.audit import AuditLog
from charter.contract import load_contract
from charter.registry import Registry
from charter.sandbox import Sandbox
from charter.server import CharterService, TokenStore
from tests.conftest import ROOT


def charter_service(
    home: Path, sandbox: Sandbox, contract: str, model: Callable[[ModelRequest], str]
) -> tuple[AuditLog, CharterService, TokenStore]:
    """The audit log, service and (empty) token store of a server in `home` (CHARTER_HOME) with
    `contracts/<contract>.yaml` published and the Runtime Agent answering through `model`."""
    registry = Registry()
    path = ROOT / "contracts" / f"{contract}.yaml"
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = AuditLog(home / "audit.db")
    agent = Charter(model=ScriptedModel(model), audit=log, sandbox=sandbox)
    service = CharterService.create(registry=registry, audit=log, agent=agent)
    return log, service, TokenStore(home / "tokens.yaml")
