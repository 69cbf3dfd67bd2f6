"""`charter demo`: the contract layer end to end, on the example contracts.

It works in a scratch registry under .charter/demo so it can run any number of times.
The sandbox, gate, audit and Runtime Agent steps join this demo as they are built.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from charter.cli._output import say
from charter.compiler import compile_contract
from charter.contract import load_contract
from charter.errors import ChangeRefused, ContractError
from charter.registry import Registry, charter_home


def _project_root() -> Path:
    """The checkout holding contracts/ and examples/ (the demo needs both)."""
    for candidate in (Path.cwd(), *Path(__file__).resolve().parents):
        if (candidate / "contracts" / "orders.yaml").is_file() and (candidate / "examples").is_dir():
            return candidate
    raise SystemExit("charter demo runs from a Charter checkout: contracts/orders.yaml was not found")


def _step(title: str) -> None:
    say()
    say(f"== {title}", "bold cyan")


def demo() -> None:
    """Run the demo: check, publish and inspect contracts, then watch bad changes get refused."""
    root = _project_root()
    workdir = charter_home() / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    # Contract copies must sit below the checkout so their bindings resolve to examples/.
    scratch = root / ".charter" / "demo-contracts"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    registry = Registry(workdir / "charter.db")
    os.environ["CHARTER_ORDERS_DB"] = str(workdir / "orders.db")

    _step("1. Check the example contracts")
    for name in ("orders", "invoices"):
        checked = load_contract(root / "contracts" / f"{name}.yaml")
        compiled = compile_contract(checked)
        ops = len(compiled.gate.operations)
        bounds = len(compiled.gate.boundaries)
        say(f"{checked.file}: ok, {ops} operations, {bounds} hard boundaries, sha256 {compiled.sha256[:12]}")

    _step("2. Publish them to a registry")
    for name in ("orders", "invoices"):
        path = root / "contracts" / f"{name}.yaml"
        result = registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
        say(f"published {result.info.name} {result.info.version} into {registry.path}")

    _step("3. What the Runtime Agent will read about cancelling an order")
    orders = registry.get("orders")
    prompt = orders.prompt_context
    start = prompt.index("## Lifecycle")
    say(prompt[start : prompt.index("## Operations")].rstrip())
    stub = orders.stub_source
    start = stub.index("    @staticmethod\n    def cancel_order")
    say(stub[start : stub.index("...", start) + 3])

    _step("4. A contract with a typo is rejected with its exact location")
    typo = scratch / "orders-typo.yaml"
    source = (root / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    typo.write_text(source.replace("to: cancelled", "to: canceled", 1), encoding="utf-8")
    try:
        load_contract(typo)
        say("unexpected: the typo was accepted", "red")
    except ContractError as exc:
        for problem in exc.problems:
            say(str(problem), "yellow")

    _step("5. Loosening a hard boundary is refused without explicit approval")
    relaxed = scratch / "orders-relaxed.yaml"
    relaxed.write_text(
        source.replace("version: 1.0.0", "version: 1.1.0").replace(
            "cancel: {from: [pending, confirmed]", "cancel: {from: [pending, confirmed, dispatched]"
        ),
        encoding="utf-8",
    )
    try:
        registry.publish(load_contract(relaxed), relaxed.read_text(encoding="utf-8"))
        say("unexpected: the relaxation was published", "red")
    except ChangeRefused as exc:
        say(str(exc), "yellow")

    _step("6. The example backend behind the orders contract")
    sys.path.insert(0, str(root))
    from examples.orders import backend

    backend.seed()
    for order in backend.list_orders():
        say(f"order {order['id']}: {order['status']:<10} total {order['total']}")
    say()
    say(
        "Done. The sandbox is built (charter sandbox build, charter bench sandbox); "
        "next: the gate, audit log and Runtime Agent (see README, Status).",
        "bold",
    )
