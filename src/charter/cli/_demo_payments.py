"""The payments steps of `charter demo`: a retail bank account whose inbox carries prompt
injections, and the contract rules (contract language v2) that stop them.

Each scenario of examples/payments/scenarios.py is a program submitted directly with the
holder's request values as `inputs` (the provenance source `request`), so no model is
needed; the sandbox, the gate, the bank's SQLite backend and the signed receipts are real.
"""

from __future__ import annotations

import json

from charter.audit import ApprovalRequested, AuditLog, Decision
from charter.cli._output import say
from charter.compiler import CompiledContract
from charter.principal import Principal
from charter.runner import Runner

__all__ = ["payments_runs"]


def payments_runs(payments: CompiledContract, log: AuditLog) -> None:
    """Seed the example bank and run every payments scenario, printing each gate decision."""
    from examples.payments import backend
    from examples.payments.scenarios import HOLDER_ATTRIBUTES, HOLDER_SCOPES, SCENARIOS

    backend.seed()
    holder = Principal("ada", HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES)
    limit = HOLDER_ATTRIBUTES["daily_limit"]
    say(
        f"The holder's token: account {HOLDER_ATTRIBUTES['account_id']}, own daily limit {limit} (principal "
        "attributes). The inbox holds a bill with a hidden instruction, a fake security notice and a "
        "landlord's 'new' IBAN."
    )
    rule = next(line for line in payments.prompt_context.splitlines() if line.startswith("send_payment("))
    say("What the model is told of send_payment:")
    say(rule, "dim")
    runner = Runner(audit=log)
    for scenario in SCENARIOS:
        say()
        say(f"asked:    {scenario.asked}", "bold")
        if scenario.inputs:
            shown = {k: "(secret)" if k in scenario.secret_inputs else v for k, v in scenario.inputs.items()}
            say(f"inputs:   {json.dumps(shown)}")
        execution = runner.execute(
            scenario.program,
            contract=payments,
            principal=holder,
            intent=scenario.asked,
            inputs=scenario.inputs,
            secret_inputs=scenario.secret_inputs,
        )
        for receipt in log.run(execution.run_id).receipts:
            if isinstance(receipt, Decision):
                _show(receipt)
            elif isinstance(receipt, ApprovalRequested):
                say(
                    f"paused:   {receipt.operation} awaits a human's approval ({receipt.clause}): {receipt.reason}",
                    "yellow",
                )
        say(f"answer:   {execution.text}")


def _show(receipt: Decision) -> None:
    if receipt.decision == "ALLOW":
        say(f"decision: {receipt.operation} allowed", "green")
    else:
        say(f"decision: {receipt.operation} DENIED {receipt.code} ({receipt.clause})", "yellow")
    if receipt.secret_params:
        masked = json.loads(receipt.arguments or "{}")
        shown = ", ".join(f"{name}={str(masked.get(name))[:32]}..." for name in receipt.secret_params)
        say(f"          the receipt holds {shown}, never the password", "dim")
