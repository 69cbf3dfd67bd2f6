"""The approvals step of `charter demo`: a payment that pauses for a human, four eyes, resume.

The holder asks to pay an IBAN they typed themselves (so provenance allows it) that is not one
of the account's saved payees: send_payment's approval rule holds, and the gate pauses the run
there (an ApprovalRequested receipt; nothing is sent). The holder's own attempt to approve it
is refused SELF_APPROVAL even though the holder's token is given the approver scope; a reviewer
approves; the run resumes by replaying its recorded calls and sending the approved payment
once; the log verifies. No model is needed: the program is submitted as written.
"""

from __future__ import annotations

from charter.audit import ApprovalRequested, AuditLog, Decision
from charter.cli._output import say
from charter.compiler import CompiledContract
from charter.principal import Principal
from charter.registry import Registry
from charter.runner import Runner

__all__ = ["PLUMBER_IBAN", "PROGRAM", "approvals_runs"]

PLUMBER_IBAN = "IE29AIBK93115212345678"  # typed by the holder: not a saved payee

PROGRAM = """from decimal import Decimal
account = payments.get_account(id=inputs["account"])
saved = [p.name for p in payments.list_payees(account=account.id)]
transfer = payments.send_payment(
    account=account.id, recipient=inputs["iban"], amount=Decimal(inputs["amount"]), reference=inputs["reference"]
)
conclude(f"Paid {transfer.amount} to {transfer.recipient}: transfer {transfer.id} is {transfer.state}.")
"""

ASKED = f"Pay 120.00 to my new plumber, IBAN {PLUMBER_IBAN}, reference Boiler repair"
REVIEWER = "mira"


def approvals_runs(payments: CompiledContract, log: AuditLog, registry: Registry) -> None:
    """Pause a payment to a new IBAN, refuse the holder's self-approval, approve as a reviewer,
    resume, and print each step. Raises RuntimeError if a step does not go as the story says."""
    from charter.approvals import ApprovalError, ApprovalStore, Resumer
    from examples.payments.backend import HOLDER_ACCOUNT
    from examples.payments.scenarios import HOLDER_ATTRIBUTES, HOLDER_SCOPES

    holder = Principal("ada", HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES)
    runner = Runner(audit=log)
    inputs = {"account": HOLDER_ACCOUNT, "iban": PLUMBER_IBAN, "amount": "120.00", "reference": "Boiler repair"}
    say(f"asked:    {ASKED}", "bold")
    paused = runner.execute(PROGRAM, contract=payments, principal=holder, intent=ASKED, inputs=inputs)
    for receipt in log.run(paused.run_id).receipts:
        if isinstance(receipt, Decision):
            verdict = "allowed" if receipt.decision == "ALLOW" else f"DENIED {receipt.code}"
            say(f"decision: {receipt.operation} {verdict}", "green" if receipt.decision == "ALLOW" else "yellow")
        elif isinstance(receipt, ApprovalRequested):
            where = f" at line {receipt.line}" if receipt.line else ""
            say(
                f"paused:   {receipt.operation}{where}: {receipt.reason} (approval {receipt.approval_id[:12]})",
                "yellow",
            )
    if paused.status != "awaiting_approval" or paused.approval_id is None:
        raise RuntimeError(f"the payment to a new IBAN should have paused for approval, it ended {paused.status}")
    approval_id = paused.approval_id
    store = ApprovalStore(log)
    view = store.get(approval_id)
    say(f"status:   {paused.status} (cause {paused.cause}); nothing was sent. Expires {view.expires}.")
    say(f"          who may decide: a principal holding {view.approver_scope}, never {view.principal}")
    say(
        f"          charter approvals show {approval_id[:12]}  (the program, the waiting line, what the gate read)",
        "dim",
    )

    # Four eyes: even holding the approver scope, the requester cannot approve its own call.
    own = Principal(holder.id, HOLDER_SCOPES | {view.approver_scope}, attributes=HOLDER_ATTRIBUTES)
    try:
        store.decide(approval_id, own, "approved", "It is my own plumber")
        raise RuntimeError("the holder's self-approval was accepted")
    except ApprovalError as refused:
        say(f"{holder.id} approves it herself: refused {refused.code}: {refused}", "yellow")

    reviewer = Principal(REVIEWER, frozenset({view.approver_scope}))
    decided, _ = store.decide(approval_id, reviewer, "approved", "Called the holder back; the plumber's IBAN is right")
    say(f"{reviewer.id} approves: {decided.reason}", "green")

    def principal_of(principal_id: str) -> Principal | None:
        return holder if principal_id == holder.id else None  # the holder's token, still valid

    resumed = Resumer(runner, registry, principal_of=principal_of, store=store).resume(approval_id)
    say(
        f"resumed:  run {resumed.run_id[:12]}: the same program, clock and seed; calls 1-{view.call - 1} answered from "
        "their receipts (the bank is not asked again), then the approved call, live",
        "dim",
    )
    for call in resumed.calls:
        if isinstance(call, Decision):
            verdict = "allowed" if call.decision == "ALLOW" else f"DENIED {call.code}"
            under = f" under approval {call.approval_id[:12]}" if call.approval_id else ""
            say(f"decision: {call.operation} {verdict}{under} (checked again against the state now)", "green")
    style = "green" if resumed.status == "done" else "red"
    say(f"answer:   {resumed.text}", style)
    if resumed.status != "done":
        raise RuntimeError(f"the approved payment should have concluded: {resumed.status}: {resumed.text}")
    final = store.get(approval_id)
    say(
        f"approval: {final.status} by {final.decided_by}; resumed run {final.resume_run and final.resume_run[:12]} "
        f"{final.resume_status}; the chain shares logical run {final.logical_run_id[:12]}",
        "dim",
    )
