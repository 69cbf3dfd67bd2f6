"""Writes the fixture of release 0.1.0: the stores and the audit log as that release left them.

    git worktree add /tmp/r010 1e5a6f9 && cd /tmp/r010 && make lint   # the code of the release
    .venv/bin/python /path/to/this/_make.py OUT_DIR

It must run on the code of commit 1e5a6f9 (release 0.1.0), never on a later one: the
files it writes are what `tests/test_upgrade.py` proves later releases still open,
verify, show and replay. It was run once and its output committed beside it; running
it again gives other run ids, keys and times, so the committed files are the fixture,
not this script's output of the day.

In a fresh CHARTER_HOME it publishes both example contracts, adds an API token and
writes every kind of run the release records (the orders service runs in-process on
loopback, as in the test suite; the invoices contract is Python-bound):

- program runs that end done, refused by the program, with an uncaught gate denial
  (`refused` to the caller, `program_error` in the log), with a caught denial and a
  conclusion, program_error, syntax_error, timeout, memory_limit, call_limit, halted
  (too many denials), an HTTP write whose answer was lost (an `unknown` outcome, in
  doubt), and a run never sealed (the process killed with SIGKILL after the action);
- intent runs via the ScriptedModel: done, refused (denial then explanation), failed;
- a program run through `charter serve` with an Idempotency-Key, sent twice, so the
  server's idempotency store holds it.

What the release said about each run (the seal's tag, what the caller was told, whether
`audit replay` gave an identical result) goes to `manifest.json`, so the upgrade test
checks each run against what was true when it was written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the checkout whose code runs (its examples and tests helpers)
KEPT = ["audit.db", "charter.db", "idempotency.db", "tokens.yaml", "keys/receipts.pub"]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        env = {**os.environ, "CHARTER_HOME": str(home), "CHARTER_ALLOW_MODEL_REQUESTS": "0"}
        env.pop("ANTHROPIC_API_KEY", None)
        env.pop("CHARTER_SERVICE_ORDERS_URL", None)
        # The runs happen in a child process: when it has exited, no connection is open and
        # every store can be checkpointed into its main file before it is copied.
        subprocess.run([sys.executable, __file__, "--generate"], cwd=ROOT, env=env, check=True)
        for name in ("audit.db", "charter.db", "idempotency.db"):
            with sqlite3.connect(home / name) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        out.mkdir(parents=True, exist_ok=True)
        for name in [*KEPT, "manifest.json"]:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(home / name, target)
    print(f"wrote {', '.join(KEPT)} and manifest.json to {out}")


# -- the runs (in the child process, CHARTER_HOME set) -------------------------------------

D = "from decimal import Decimal\n"

KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
from charter.audit import AuditLog
from charter.backends import ContractBackend
from charter.principal import Principal
from charter.registry import Registry
from charter.runner import Runner

class Killed(ContractBackend):
    def invoke(self, operation, arguments, context=None):
        result = super().invoke(operation, arguments, context)
        if operation == "void_invoice":
            os.kill(os.getpid(), signal.SIGKILL)   # the write happened; its outcome is never recorded
        return result

runner = Runner(audit=AuditLog(), backend_for=Killed)
program = 'invoices.void_invoice(number="INV-1001", reason="duplicate")\\nconclude("voided")'
runner.execute(program, contract=Registry().get("invoices"), intent="void INV-1001",
               principal=Principal("kim", frozenset({{"invoices:read", "invoices:write"}})))
"""


def generate() -> None:
    sys.path.insert(0, str(ROOT))
    import httpx

    from charter.agent import Charter, ScriptedModel
    from charter.audit import AuditLog, Concluded, Sealed
    from charter.principal import Principal
    from charter.registry import Registry
    from charter.replay import program_runs_of, replay_run
    from charter.runner import Runner
    from charter.sandbox import Sandbox, SandboxLimits
    from charter.server import IdempotencyStore, TokenStore, create_app
    from charter.server._background import serving
    from charter.server._service import CharterService
    from examples.invoices import backend as invoices_backend
    from examples.orders import backend as orders_backend
    from examples.orders import service
    from tests.faulty_proxy import FaultyProxy

    def charter(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "charter", *args], capture_output=True, text=True, check=True)
        return done.stdout

    charter("contract", "publish", "contracts/orders.yaml")
    charter("contract", "publish", "contracts/invoices.yaml")
    token = charter("token", "add", "upstream-ai", "-p", "ada", "-s", "orders:read").split()[-1]
    orders_backend.seed()
    invoices_backend.seed()

    log = AuditLog()
    registry = Registry()
    orders, invoices = registry.get("orders"), registry.get("invoices")
    sandbox = Sandbox(pool_size=0)
    ada = Principal("ada", frozenset({"orders:read", "orders:write", "orders:refund"}))
    sam = Principal("sam", frozenset({"invoices:read", "invoices:write", "invoices:approve"}))
    manifest: list[dict[str, Any]] = []

    def program(label: str, text: str, *, contract: Any = orders, who: Principal = ada, **limits: Any) -> None:
        tightened = SandboxLimits.from_contract(contract.gate.limits).tightened(**limits) if limits else None
        execution = Runner(audit=log, sandbox=sandbox).execute(
            text, contract=contract, principal=who, intent=label, limits=tightened
        )
        manifest.append({"label": label, "run_id": execution.run_id, "kind": "program", "caller": execution.status})

    with service.exported():
        program(
            "done",
            D + "orders.verify_refund(id=125)\n"
            'o = orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")\n'
            "conclude(f'refunded {o.refunded}')",
        )
        program("uncaught_denial", 'orders.cancel_order(id=123, reason="customer asked")\nconclude("cancelled")')
        program(
            "caught_denial_concluded",
            'try:\n    orders.cancel_order(id=123, reason="customer asked")\n'
            "except ContractViolation as v:\n    conclude(f'not cancelled: {v.code}')",
        )
        program(
            "caught_denial_refused",
            'try:\n    orders.cancel_order(id=123, reason="customer asked")\n'
            "except ContractViolation as v:\n    refuse(v.reason)",
        )
        program("program_error", "o = orders.get_order(id=102)\nraise ValueError(f'cannot handle {o.status}')")
        program("syntax_error", "conclude('unclosed'\n")
        program("timeout", "while True:\n    pass", cpu_seconds=0.5)
        program(
            "memory_limit", "blocks = []\nwhile True:\n    blocks.append(bytearray(2**20))", memory_bytes=32 * 2**20
        )
        program("call_limit", "for i in range(5):\n    orders.get_order(id=102)\nconclude('read')", max_calls=2)
        program(
            "halted",
            "for i in range(20):\n    try:\n        orders.cancel_order(id=123, reason='again')\n"
            "    except ContractViolation:\n        pass\nconclude('gave up')",
        )
        proxy = FaultyProxy(upstream=os.environ[service.URL_VARIABLE])
        posts = 0

        def drop_first_post(method: str, path: str) -> str:
            nonlocal posts
            posts += method == "POST"
            return "drop_after" if method == "POST" and posts == 1 else "forward"

        proxy.plan = drop_first_post
        os.environ[service.URL_VARIABLE] = proxy.url
        try:
            program(
                "in_doubt_http_write",
                "try:\n    orders.confirm_order(id=101)\n"
                "except OperationError as error:\n    conclude(error.code + ': ' + str(error))",
            )
        finally:
            os.environ[service.URL_VARIABLE] = proxy.upstream
            proxy.close()
        program(
            "invoices_done",
            'i = invoices.submit_invoice(number="INV-1001")\nconclude(i.state)',
            contract=invoices,
            who=Principal("kim", frozenset({"invoices:read", "invoices:write"})),
        )
        program(
            "invoices_uncaught_guard",
            'invoices.approve_invoice(number="INV-1002")\nconclude("approved")',
            contract=invoices,
            who=sam,
        )

        killed = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(KILLED.format(root=str(ROOT)))],
            capture_output=True,
            text=True,
            check=False,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        [unsealed] = [r.run_id for r in log.runs() if r.sealed is None]
        manifest.append({"label": "killed", "run_id": unsealed, "kind": "program", "caller": None})

        def intent(label: str, text: str, answers: list[str]) -> None:
            agent = Charter(model=ScriptedModel(answers), runner=Runner(audit=log, sandbox=sandbox))
            conclusion = agent.handle(text, contract=orders, principal=ada)
            manifest.append(
                {"label": label, "run_id": conclusion.run_id, "kind": "intent", "caller": conclusion.status}
            )

        block = "```python\n{}\n```"
        intent(
            "intent_done",
            "Cancel order 102",
            [
                block.format(
                    'o = orders.cancel_order(id=102, reason="customer asked")\nconclude(f"order {o.id} is {o.status}")'
                )
            ],
        )
        intent(
            "intent_refused",
            "Cancel order 123",
            [
                block.format('orders.cancel_order(id=123, reason="customer asked")\nconclude("cancelled")'),
                block.format('refuse("Order 123 is dispatched and can no longer be cancelled.")'),
            ],
        )
        intent("intent_failed", "Cancel order 104", ["I would rather not write a program."])

        service_ = CharterService.create(registry=registry, audit=log, agent=None)
        app = create_app(service_, TokenStore(), IdempotencyStore(log.path.parent / "idempotency.db"))
        with serving(app) as url, httpx.Client(base_url=url) as client:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "fixture-0.1.0"}
            body = {"contract": "orders", "program": "conclude(orders.get_order(id=102).status)"}
            first = client.post("/v1/programs", json=body, headers=headers)
            again = client.post("/v1/programs", json=body, headers=headers)
        assert first.status_code == again.status_code == 200, first.text
        assert again.headers["Idempotent-Replayed"] == "true"
        manifest.append(
            {
                "label": "http_program",
                "run_id": first.json()["run_id"],
                "kind": "program",
                "caller": first.json()["status"],
            }
        )

    for entry in manifest:
        record = log.run(entry["run_id"])
        closing = record.sealed
        entry["sealed"] = closing.status if isinstance(closing, Sealed | Concluded) else None
        entry["listed"] = record.status  # what `audit list` showed
        runs = [log.run(r) for r in program_runs_of(record)] if entry["kind"] == "intent" else [record]
        try:
            reports = [replay_run(r, registry.get(r.opened.contract, r.opened.version), sandbox) for r in runs]
            entry["replay_identical"] = all(r.identical for r in reports)
        except ValueError as error:  # a run that cannot be replayed (never sealed)
            entry["replay_identical"] = None
            entry["replay_error"] = str(error)
    head = log.head()
    assert head is not None
    document = {"written_by": "1e5a6f9", "release": "0.1.0", "head": f"{head[0]}:{head[1]}", "runs": manifest}
    (log.path.parent / "manifest.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    generate() if sys.argv[1:] == ["--generate"] else main()
