"""`charter serve`, `charter mcp` and `charter token`: Charter for remote callers."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from charter.cli._output import fail, note, print_json, say
from charter.cli.execute import AttrOption, PrincipalOption, ScopeOption, principal_from
from charter.errors import CharterError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from charter.audit import AuditLog
    from charter.db import Database
    from charter.deployment import Stores
    from charter.registry import Registry
    from charter.server import CharterService, TokenStore

token_app = typer.Typer(help="API tokens: each acts for one principal with its scopes.", no_args_is_help=True)

TokensOption = Annotated[
    Path | None, typer.Option("--tokens", help="The token file (default $CHARTER_HOME/tokens.yaml).")
]
MaxRunsOption = Annotated[
    int,
    typer.Option(
        "--max-runs",
        metavar="N",
        help="Requests running a program (POST /v1/programs, /v1/intents; MCP: operate_*, execute_program) at "
        "once; each may hold its contract's sandbox memory limit, so memory stays under the server's base plus "
        "N times it.",
    ),
]
QueueOption = Annotated[
    int,
    typer.Option(
        "--queue",
        metavar="M",
        help="Requests waiting for one of the --max-runs slots; beyond them a request is answered at once with "
        "503 (problem type overloaded) and Retry-After, and nothing runs.",
    ),
]
ReplayOption = Annotated[
    list[Path] | None,
    typer.Option(help="Answer intents from recorded model responses (JSON) instead of the API; repeatable."),
]


# Upper bounds, so the memory bound --max-runs and --queue promise still means something: 1024
# runs at the default 128 MiB sandbox limit are 128 GiB, and 65,536 queued requests may each
# hold a body of up to 1 MiB (64 GiB); no machine this serves from has more.
MAX_RUNS_LIMIT = 1024
QUEUE_LIMIT = 65_536


def checked_admission(max_runs: int, queue: int) -> None:
    """Refuse (`error: ...`, exit 1) a --max-runs or --queue out of range."""
    if not 1 <= max_runs <= MAX_RUNS_LIMIT:
        fail(f"--max-runs {max_runs} is out of range: give the runs in flight at once, 1 to {MAX_RUNS_LIMIT}")
    if not 0 <= queue <= QUEUE_LIMIT:
        fail(f"--queue {queue} is out of range: give the requests that may wait for a run slot, 0 to {QUEUE_LIMIT}")


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        fail(f"{address!r} is not HOST:PORT, e.g. 127.0.0.1:8700")
    return host.strip("[]"), int(port)


def loopback(host: str) -> bool:
    """Whether `host` is a loopback address or name (browsers send no Secure cookie over plain
    http, so the review app's cookie is Secure everywhere else)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_service(replay: list[Path] | None) -> CharterService:
    """The registry, audit log and Runtime Agent under CHARTER_HOME, as a service."""
    from charter.audit import AuditLog
    from charter.registry import Registry

    return _service_over(Registry(), AuditLog(), replay)


def _service_over(registry: Registry, audit: AuditLog, replay: list[Path] | None) -> CharterService:
    from charter.agent import AgentSettings, Charter
    from charter.agent._recorded import recorded_model
    from charter.server import CharterService

    settings = AgentSettings.from_env()
    agent = Charter(model=recorded_model(settings, replay) if replay else None, settings=settings, audit=audit)
    return CharterService.create(registry=registry, audit=audit, agent=agent)


def _build_stores(database: Database, *, tokens: Path | None = None, lease_seconds: float = 30.0) -> Stores:
    """The stores of one server process, opened in `database` (each worker opens its own, after
    the fork: a PostgreSQL pool is per process). SQLite: the files in `database.home`."""
    from charter.deployment import open_stores

    return open_stores(database, lease_seconds=lease_seconds, tokens=tokens)


def openapi_document() -> dict[str, object]:
    """The API's OpenAPI document, as served. Only the routes are needed, so nothing stands behind them."""
    from charter.server import create_app

    app = create_app(None, None, None)  # type: ignore[arg-type]
    return app.openapi()


def serve(
    address: Annotated[str, typer.Argument(help="HOST:PORT to listen on, e.g. 127.0.0.1:8700.")] = "127.0.0.1:8700",
    tokens: TokensOption = None,
    replay: ReplayOption = None,
    openapi: Annotated[bool, typer.Option("--openapi", help="Print the OpenAPI document and exit.")] = False,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            min=0.1,
            metavar="SECONDS",
            help="How long an Idempotency-Key's claim outlives a server that stopped renewing it (it renews "
            "every third of this while the run is live); then the next retry resolves it from the audit log.",
        ),
    ] = 30.0,
    max_runs: MaxRunsOption = 8,
    queue: QueueOption = 64,
    approval_webhook: Annotated[
        str | None,
        typer.Option(
            "--approval-webhook",
            envvar="CHARTER_APPROVAL_WEBHOOK",
            metavar="URL",
            help="POST each new approval request here, signed with the Charter-Signature header (key: "
            "`charter approvals webhook-key`), retried with backoff; a run never waits for it.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            metavar="N",
            help="Worker processes sharing the listening socket, each with its own stores, sandbox and "
            "--max-runs/--queue; a worker that dies is started again. On SQLite (the default) they share the "
            "files in CHARTER_HOME: one writer at a time per file (WAL, BEGIN IMMEDIATE, a 30 s busy "
            "timeout), quotas and approvals behind fcntl locks, Idempotency-Keys behind leases.",
        ),
    ] = 1,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            envvar="CHARTER_DATABASE_URL",
            metavar="URL",
            help="Where the stores live: sqlite:FOLDER (default: the files in CHARTER_HOME) or "
            "postgresql://USER@HOST/NAME.",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API: intents, programs, runs, contracts and approvals, behind bearer tokens.

    A worker resumes every decided approval in the background (those decided while the server
    was down too), as the requesting principal with its current tokens' scopes."""
    if openapi:
        print(json.dumps(openapi_document(), indent=2))
        return
    from charter._profile import install_signal
    from charter.db import DATABASE_ENV, Database
    from charter.server._uvicorn import listen, run, url_host
    from charter.server._workers import MAX_WORKERS, prepare_in_child, supervise

    host, port = host_port(address)
    checked_admission(max_runs, queue)
    if not 1 <= workers <= MAX_WORKERS:
        fail(f"--workers {workers} is out of range: give the worker processes to start, 1 to {MAX_WORKERS}")
    try:
        chosen = Database.from_env(url=database)
        if database is not None:
            os.environ[DATABASE_ENV] = database  # every worker and store of this server reads the same URL
        sock = listen(host, port)  # a port in use is an error before the server is announced
        settings = _Settings(host, tokens, replay, lease, max_runs, queue, approval_webhook)
        if workers > 1:
            _worker_keys(chosen.home / "keys", workers)
            # Every store opened (created, on a new database) once before the workers, in a child.
            if not prepare_in_child(lambda: _build_stores(chosen, tokens=tokens, lease_seconds=lease).close()):
                raise typer.Exit(1)
            say(
                f"Charter API on http://{url_host(host)}:{port} with {workers} workers, stores in {chosen.shown}  "
                "(OpenAPI: /openapi.json, docs: /docs; review app: /ui)"
            )
            raise typer.Exit(supervise(sock, workers, lambda number: _serve_worker(settings, chosen, sock, number)))
        app, service = _serving_app(settings, chosen, announce=True)
    except CharterError as error:
        fail(error)
    say(f"Charter API on http://{url_host(host)}:{port}  (OpenAPI: /openapi.json, docs: /docs; review app: /ui)")
    install_signal()  # CHARTER_PROFILE=FILE: SIGUSR1 writes where the CPU went (charter bench serve)
    try:
        run(app, host=host, port=port, sock=sock)
    finally:
        service.stop_approvals()


@dataclass(frozen=True)
class _Settings:
    """`charter serve`'s options that shape each server process."""

    host: str
    tokens: Path | None
    replay: list[Path] | None
    lease: float
    max_runs: int
    queue: int
    approval_webhook: str | None


def worker_key_name(number: int) -> str:
    """The signing key of worker `number` under `charter serve --workers N`: keys/worker-NUMBER.key."""
    return f"worker-{number}"


def _worker_keys(keys_dir: Path, workers: int) -> None:
    """Each worker signs with its own key, `worker-i` (its receipts name the worker that signed them).
    With the default local keyring (keys/keyring.yaml, or the keys/*.pub files when there is none)
    a missing key is made and listed here, in the parent, before any worker starts. With an
    operator's keyring elsewhere (CHARTER_KEYRING) nothing is made: a key missing from it stops the
    server, naming the command that makes it (a key the keyring does not list would sign receipts
    verification rejects)."""
    from charter.audit._keyring import KEYRING_NAME, Keyring, keyring_path, signing_key_for
    from charter.audit.keys import read_public_key
    from charter.errors import UsageError

    path = keyring_path(keys_dir)
    for number in range(1, workers + 1):
        name = worker_key_name(number)
        if path != keys_dir / KEYRING_NAME:
            public = keys_dir / f"{name}.pub"
            listed = (
                path.exists() and public.exists() and read_public_key(public).key_id in Keyring.load(path).public_keys()
            )
            if not (keys_dir / f"{name}.key").exists() or not listed:
                raise UsageError(
                    f"worker {number} signs with the key {name}, which the keyring {path} does not list: make it "
                    f"with `charter keys new {name}` (CHARTER_KEYRING={path}), or serve with fewer --workers"
                )
        signing_key_for(keys_dir, name=name, create=True)  # made (and listed in the local keyring) if new; else checked


def _serve_worker(settings: _Settings, database: Database, sock: socket.socket, number: int) -> None:
    """One worker of `charter serve --workers N`: its own stores, pools, sandbox and admission
    control, built here after the fork; serves `sock` until SIGTERM. Worker 1 alone prints the
    start-up notes every worker would print alike. Worker i signs with the key `worker-i`
    (CHARTER_SIGNING_KEY=worker-i, whatever the server's own setting)."""
    from charter._profile import install_signal
    from charter.audit.keys import SIGNING_KEY_ENV
    from charter.server._uvicorn import run
    from charter.server._workers import worker_number

    os.environ[SIGNING_KEY_ENV] = worker_key_name(number)
    app, service = _serving_app(settings, database, announce=worker_number() == 1)
    install_signal()
    try:
        run(app, host=settings.host, port=0, sock=sock)
    finally:
        service.stop_approvals()


def _serving_app(settings: _Settings, database: Database, *, announce: bool) -> tuple[FastAPI, CharterService]:
    """The API and review app over this process's stores, its approvals worker started.
    `announce`: print the notes about the set-up (no tokens, Secure cookie, plain-http webhook)."""
    from charter.approvals import ApprovalWebhook, load_or_create_webhook_key, plain_http_warning
    from charter.server import create_app
    from charter.ui import mount_ui

    stores = _build_stores(database, tokens=settings.tokens, lease_seconds=settings.lease)
    # The signing key now, not at the first run: a revoked or unlisted key stops the worker (and
    # the server) with its reason, instead of answering every run with an error.
    stores.audit.signing_key  # noqa: B018
    service = _service_over(stores.registry, stores.audit, settings.replay)
    service.runner.sandbox.bake_all(service.latest_contracts())  # in the background; CHARTER_BAKE=0: off
    if announce and not stores.tokens.entries():
        say(
            f"no tokens in {stores.tokens.where}: every request will get 401; add one with `charter token add`"
            + (" --database URL" if database.is_postgres else ""),
            "yellow",
        )
    app = create_app(service, stores.tokens, stores.idempotency, max_runs=settings.max_runs, queue=settings.queue)
    secure = not loopback(settings.host)
    mount_ui(app, service, stores.sessions, secure=secure)
    if announce and secure:
        note(
            f"note: the review app's session cookie is Secure on {settings.host}: browse /ui over https (TLS in "
            "front of this server); over plain http a browser cannot stay signed in",
            "yellow",
        )
    webhook = None
    if settings.approval_webhook:
        key = load_or_create_webhook_key(database.home / "keys")
        webhook = ApprovalWebhook(settings.approval_webhook, key)
        warning = plain_http_warning(settings.approval_webhook)
        if announce and warning is not None:
            note(f"warning: {warning}", "yellow")
    service.start_approvals(stores.tokens.principal, webhook=webhook)
    return app, service


def mcp(
    http: Annotated[
        str | None, typer.Option("--http", help="Serve streamable HTTP on HOST:PORT instead of stdio.")
    ] = None,
    principal: PrincipalOption = None,
    scope: ScopeOption = None,
    attr: AttrOption = None,
    tokens: TokensOption = None,
    replay: ReplayOption = None,
    max_runs: MaxRunsOption = 8,
    queue: QueueOption = 64,
) -> None:
    """Serve Charter as an MCP server: an operate tool per contract, code mode, audit, contract resources.

    Over stdio, runs act for --principal with the --scope given (the operator who starts the
    process vouches for the client). Over --http, each request needs a bearer token.
    """
    from charter.server import TokenStore
    from charter.server._mcp import serve_http, serve_stdio
    from charter.server._uvicorn import listen, url_host

    address = host_port(http) if http is not None else None  # a usage error before anything starts
    checked_admission(max_runs, queue)
    try:
        # Over stdio, checked before the audit log is opened: a bad --principal writes nothing.
        acting = principal_from(principal, scope, tokens=tokens, attributes=attr) if address is None else None
        service = build_service(replay)
        if acting is not None:
            serve_stdio(service, acting)
        elif address is not None:
            host, port = address
            sock = listen(host, port)  # a port in use is an error before the server is announced
            note(f"Charter MCP on http://{url_host(host)}:{port}/mcp")
            serve_http(service, TokenStore(tokens), host, port, max_runs=max_runs, queue=queue, sock=sock)
    except CharterError as error:
        fail(error)


TokenDatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        metavar="URL",
        help="A PostgreSQL deployment (postgresql://USER@HOST/NAME; default $CHARTER_DATABASE_URL) keeps its "
        "tokens in the table api_tokens; a SQLite one (sqlite:FOLDER) in FOLDER/tokens.yaml, or --tokens.",
    ),
]


def _token_store(tokens: Path | None, database: str | None) -> TokenStore:
    """The deployment's tokens: the table of a PostgreSQL --database / $CHARTER_DATABASE_URL,
    else the file (--tokens, else the SQLite folder's tokens.yaml, else $CHARTER_HOME's)."""
    from charter.db import Database
    from charter.server import TokenStore

    chosen = Database.from_env(url=database) if database is not None or tokens is None else None
    if chosen is not None and (chosen.is_postgres or database is not None):
        return TokenStore(tokens, database=chosen)
    return TokenStore(tokens)


@token_app.command("add")
def token_add(
    name: Annotated[str, typer.Argument(help="A name for the token's holder, e.g. upstream-ai.")],
    principal: PrincipalOption = None,
    scope: ScopeOption = None,
    attr: AttrOption = None,
    tokens: TokensOption = None,
    database: TokenDatabaseOption = None,
) -> None:
    """Create a token; it is printed once and only its sha256 is kept.

    --attr binds a principal attribute (NAME=VALUE, repeatable). Only its syntax is checked
    now: one token may serve several contracts, and the gate checks the value against the
    type the contract version of each call declares (ATTRIBUTE_INVALID).
    """
    try:
        acting = principal_from(principal, scope, tokens=tokens, attributes=attr)
        token = _token_store(tokens, database).add(name, acting.id, sorted(acting.scopes), dict(acting.attributes))
    except CharterError as error:
        fail(error)
    print(token)
    note(f"token {name!r} acts for {acting.id} with {sorted(acting.scopes) or 'no scopes'}; it is not shown again")


@token_app.command("list")
def token_list(
    tokens: TokensOption = None,
    database: TokenDatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The tokens: name, principal, scopes (never the tokens themselves)."""
    try:
        entries = _token_store(tokens, database).entries()
    except CharterError as error:
        fail(error)
    if as_json:
        print_json(
            [
                {"name": e.name, "principal": e.principal, "scopes": e.scopes}
                | ({"attributes": e.attributes} if e.attributes else {})
                for e in entries
            ]
        )
        return
    for entry in entries:
        bound = " ".join(f"{k}={v}" for k, v in entry.attributes.items())
        say(f"{entry.name}: {entry.principal} {' '.join(entry.scopes)}" + (f" [{bound}]" if bound else ""))


@token_app.command("revoke")
def token_revoke(name: str, tokens: TokensOption = None, database: TokenDatabaseOption = None) -> None:
    """Delete a token; servers stop accepting it at their next request."""
    try:
        _token_store(tokens, database).revoke(name)
    except CharterError as error:
        fail(error)
    say(f"revoked {name!r}")
