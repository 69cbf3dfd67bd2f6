"""Shared fixtures: a scratch CHARTER_HOME per test and contract files written on demand."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from charter.audit import AuditLog
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.db import close_pools
from charter.principal import Principal
from charter.runner import Execution, Runner
from charter.sandbox import Sandbox
from tests._pg import PgServer

# No test may reach a real model: the package refuses real requests while this is "0"
# (subprocesses inherit it), no key is there to send, and below, httpx2's real transport
# (the anthropic SDK's) refuses every host but loopback.
os.environ["CHARTER_ALLOW_MODEL_REQUESTS"] = "0"
os.environ.pop("ANTHROPIC_API_KEY", None)
os.environ.pop("ANTHROPIC_AUTH_TOKEN", None)
# No baked sandbox components unless a test asks for one (tests/test_baked.py): a build costs
# ~15 s of CPU per contract surface, and `charter serve` subprocesses would bake every contract.
os.environ["CHARTER_BAKE"] = "0"

ROOT = Path(__file__).resolve().parent.parent
BASE_CONTRACT = (ROOT / "tests" / "data" / "base.yaml").read_text(encoding="utf-8")


@pytest.fixture(autouse=True, scope="session")
def _no_real_model_requests() -> Iterator[None]:
    original = httpx2.HTTPTransport.handle_request

    def guarded(self: httpx2.HTTPTransport, request: httpx2.Request) -> httpx2.Response:
        if request.url.host not in ("127.0.0.1", "localhost", "::1"):
            raise RuntimeError(f"tests may not reach the network: {request.method} {request.url}")
        return original(self, request)

    httpx2.HTTPTransport.handle_request = guarded  # type: ignore[method-assign]
    yield
    httpx2.HTTPTransport.handle_request = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="session")
def orders_service() -> Iterator[str]:
    """The orders example is an HTTP service: one real server on loopback for the session.

    It reads its database from the environment on every request, so it follows each
    test's CHARTER_HOME, and `charter` subprocesses reach it through the inherited URL.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples.orders import service

    with service.exported() as url:
        yield url


@pytest.fixture(autouse=True)
def charter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own registry and example databases; nothing touches ./.charter."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHARTER_HOME", str(home))
    # Contracts written under tmp_path bind tests.data.* and examples.*: the documented backend path.
    monkeypatch.setenv("CHARTER_BACKEND_PATH", str(ROOT))
    monkeypatch.delenv("CHARTER_ORDERS_DB", raising=False)
    monkeypatch.delenv("CHARTER_INVOICES_DB", raising=False)
    monkeypatch.delenv("CHARTER_PAYMENTS_DB", raising=False)
    # issue 19: the database, keys, checkpoints
    for name in ("CHARTER_DATABASE_URL", "CHARTER_SIGNING_KEY", "CHARTER_KEYRING", "CHARTER_CHECKPOINTS"):
        monkeypatch.delenv(name, raising=False)
    return home


WriteContract = Callable[..., Path]


@pytest.fixture
def write_contract(tmp_path: Path) -> WriteContract:
    """Write a contract file. With `replace`, mutate the base contract (each `old` must occur)."""

    def write(text: str | None = None, *, replace: dict[str, str] | None = None, name: str = "contract.yaml") -> Path:
        body = BASE_CONTRACT if text is None else text
        for old, new in (replace or {}).items():
            assert old in body, f"mutation target not in the base contract: {old!r}"
            body = body.replace(old, new, 1)
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return path

    return write


def charter(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the `charter` command as a real process, in this test's CHARTER_HOME."""
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )


# -- governed runs: the real sandbox, the contract gate, a real audit log on SQLite ----------

ALL_ORDER_SCOPES = frozenset({"orders:read", "orders:write", "orders:refund"})


@functools.cache
def compiled(name: str) -> CompiledContract:
    """An example contract (contracts/<name>.yaml), compiled once per test session."""
    return compile_contract(load_contract(ROOT / "contracts" / f"{name}.yaml"))


@pytest.fixture(scope="session")
def shared_sandbox() -> Sandbox:
    return Sandbox(pool_size=2)


@dataclass
class Governed:
    """Runs programs against one example contract, recording to `log`."""

    runner: Runner
    log: AuditLog
    contract: CompiledContract

    def run(
        self,
        program: str,
        *,
        principal: str = "ada",
        scopes: frozenset[str] = ALL_ORDER_SCOPES,
        intent: str | None = None,
    ) -> Execution:
        return self.runner.execute(
            program, contract=self.contract, principal=Principal(principal, scopes), intent=intent
        )


@pytest.fixture
def governed(charter_home: Path, shared_sandbox: Sandbox) -> Governed:
    """The orders contract over the example SQLite backend, seeded fresh for this test."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples.orders import backend

    backend.seed()
    log = AuditLog(charter_home / "audit.db")
    contract = compiled("orders")
    return Governed(Runner(audit=log, sandbox=shared_sandbox), log, contract)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (tests/_pg.py), started on first use."""
    root = Path(tempfile.mkdtemp(prefix="charter-pg-"))  # not under pytest's tmp: postgres must own it
    server = PgServer.start(root)
    yield server
    close_pools()
    server.remove()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test: its URL."""
    yield pg_server.new_database()
    close_pools()
