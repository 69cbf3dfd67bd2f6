"""What `charter audit show` and `audit list` say about approvals (issue 16).

A run that paused for approval, or resumes one, is part of a chain; `show` tells its story in
order: what was asked (the call, and the program line the guest reported), the pause (the
approval id, the rule's reason, who may decide, until when), the decision (by whom, when,
why), each resumed run, and the result. `audit show <approval id>` shows one approval's
record: the request as the paused run recorded it, the decision, the runs that resumed it.
Everything is read from the signed receipts (never the unsigned approvals index), and each
view says when a receipt it rests on failed verification.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import typer

from charter.audit import ApprovalDecided, ApprovalRequested, AuditLog, Opened, RunRecord, Sealed, verify_log
from charter.audit._approval_records import ApprovalStep, Chain, chain_of, decision_of, request_run_of
from charter.cli._output import print_json, say, shown

__all__ = [
    "approval_detail",
    "chain_findings",
    "guest_line",
    "request_line",
    "resumed_from",
    "say_story",
    "show_approval",
    "story",
]


def guest_line(line: int | None) -> str:
    """Where the call stands in the program, marked as the guest's word (it is untrusted)."""
    return f"line {line} (reported by the guest)" if line is not None else "line unknown (the guest did not say)"


def request_line(receipt: ApprovalRequested) -> tuple[str, str]:
    """An ApprovalRequested on a run's timeline: the call that did not execute, and why."""
    head = f"call {receipt.call} {receipt.operation}({shown(receipt.arguments or '…')}), {guest_line(receipt.line)}"
    return (
        f"{head}\n-> PAUSED for approval {receipt.approval_id}: {shown(receipt.reason)}\n"
        f"   approver scope {shown(receipt.approver_scope)}; expires {receipt.expires}",
        "magenta",
    )


def resumed_from(opened: Opened) -> str | None:
    """The header line of a resumed run: what it resumes, under which decision."""
    if opened.resumes is None and opened.approval_id is None:
        return None
    link = f"{opened.approval_link[:16]}…" if opened.approval_link else "none"
    recovers = f"; recovers {', '.join(opened.recovers)}" if opened.recovers else ""
    return f"resumes:   run {opened.resumes} under approval {opened.approval_id} (decision link {link}){recovers}"


def _result(record: RunRecord) -> str:
    sealed = record.sealed
    if not isinstance(sealed, Sealed):
        return f"result: {record.status}: the run was never sealed (the process ended during it)"
    outcome = json.loads(sealed.outcome)
    detail = outcome.get("answer") or outcome.get("reason") or outcome.get("error_message") or ""
    if sealed.approval_id is not None:
        return f"result: {record.status}: waiting for approval {sealed.approval_id}"
    return f"result: {record.status}: {shown(detail)}" if detail else f"result: {record.status}"


def _decided(step: ApprovalStep, expires: str | None) -> list[str]:
    decision = step.decision
    if decision is None:
        return [f"decided: not yet (pending; expires {expires or 'unknown'})"]
    how = f"{decision.decision} by {shown(decision.approver)} at {decision.at}"
    if decision.expired:
        how += " (the request expired unanswered)"
    return [f"decided: {how}", f"   why: {shown(decision.reason)}"]


def _step_lines(step: ApprovalStep) -> list[str]:
    request, run = step.request, step.request_run
    if request is None:
        asked = f"asked: run {run.run_id} paused for approval {step.approval_id} but holds no request receipt for it"
        lines = [asked]
    else:
        lines = [
            f"asked: run {run.run_id} (principal {shown(request.principal)}) called {request.operation} at call "
            f"{request.call}, {guest_line(request.line)}, at {request.at}",
            f"paused: approval {step.approval_id}: {shown(request.reason)}; "
            f"approver scope {shown(request.approver_scope)}; "
            f"expires {request.expires}",
        ]
    lines += _decided(step, request.expires if request else None)
    for resumed in step.resumes:
        if resumed.sealed is None:
            lines.append(f"resumed: run {resumed.run_id} at {resumed.opened.at}: it ended without a seal (a crash)")
        else:
            lines.append(f"resumed: run {resumed.run_id} at {resumed.opened.at} ({resumed.status})")
    return lines


def story(chain: Chain) -> list[str]:
    """The chain's story in order, one event a line (numbered), ending with its result."""
    events = [line for step in chain.steps for line in _step_lines(step)]
    events.append(_result(chain.last))
    numbered, n = [], 0
    for event in events:
        if event.startswith("   "):  # a detail of the event above it
            numbered.append(f"    {event.strip()}")
            continue
        n += 1
        numbered.append(f"{n:>3}. {event}")
    return numbered


def chain_findings(log: AuditLog, chain: Chain) -> list[str]:
    """What verification finds in the records a story rests on: every run and decision of the chain."""
    keys = log.trusted_keys()
    parts = [*(r.run_id for r in chain.runs), *(s.approval_id for s in chain.steps if s.decision is not None)]
    return [str(f) for part in parts for f in verify_log(log, keys, run_id=part, every_signature=True).findings]


def say_story(log: AuditLog, run_id: str) -> bool:
    """Print the story of the chain `run_id` belongs to (nothing if it never paused). False when a
    record it rests on fails verification (each finding is printed, and the story is not vouched for)."""
    chain = chain_of(log, run_id)
    if chain is None:
        return True
    say()
    say("story (in order):", "bold")
    for line in story(chain):
        say(line)
    found = chain_findings(log, chain)
    for finding in found:
        say(f"UNVERIFIED {finding}", "bold red")
    if found:
        say("the story is NOT VERIFIED: records it rests on failed verification", "bold red")
    return not found


def approval_detail(log: AuditLog, approval_id: str) -> dict[str, Any]:
    """One approval as the signed receipts hold it: request, decision, resumes, story, verification."""
    keys = log.trusted_keys()
    paused = request_run_of(log, approval_id)
    decided = decision_of(log, approval_id)
    findings = []
    for part in filter(None, (paused, approval_id if decided else None)):
        findings.extend(verify_log(log, keys, run_id=part, every_signature=True).findings)
    request: ApprovalRequested | None = None
    chain = None
    if paused is not None:
        record = log.run(paused)
        request = next((r for r in record.receipts if isinstance(r, ApprovalRequested)), None)
        chain = chain_of(log, paused)
    step = next((s for s in chain.steps if s.approval_id == approval_id), None) if chain else None
    decision: ApprovalDecided | None = decided[1] if decided else None
    return {
        "approval_id": approval_id,
        "verified": not findings,
        "findings": [str(f) for f in findings],
        "unverified": sorted({f.log_seq for f in findings if f.log_seq is not None}),
        "request_run": paused,
        "request": msgspec.to_builtins(request) if request else None,
        "decision": msgspec.to_builtins(decision) if decision else None,
        "decision_log_seq": decided[0].log_seq if decided else None,
        "resumes": [{"run_id": r.run_id, "status": r.status} for r in step.resumes] if step else [],
        "story": story(chain) if chain else [],
    }


def show_approval(log: AuditLog, approval_id: str, as_json: bool) -> None:
    """`audit show <approval id>`; exits 1 when a receipt it rests on fails verification."""
    view = approval_detail(log, approval_id)
    if as_json:
        print_json(view)
    else:
        _say_approval(view)
    if not view["verified"]:
        raise typer.Exit(1)


def _say_approval(view: dict[str, Any]) -> None:
    unverified = set(view["unverified"])
    say(f"approval {view['approval_id']}", "bold")
    request = view["request"]
    if request is None:
        say("request: no ApprovalRequested receipt names this approval", "bold red")
    else:
        mark = "UNVERIFIED " if request["log_seq"] in unverified else ""
        say(
            f"{mark}requested in run {request['run_id']}, call {request['call']} {request['operation']}, "
            f"{guest_line(request['line'])}",
            "bold red" if mark else None,
        )
        say(f"  by:        {shown(request['principal'])} at {request['at']}")
        say(f"  arguments: {shown(request['arguments'] or '…')}  (sha256 {request['args_sha256'][:16]}…)")
        say(f"  rule: {shown(request['clause'])}: {shown(request['reason'])}")
        say(f"  contract:  {request['contract']} {request['version']} sha256 {request['contract_sha256'][:16]}…")
        say(f"  approver scope: {shown(request['approver_scope'])}")
        say(f"  expires:   {request['expires']}")
    decision = view["decision"]
    if decision is None:
        expires = request["expires"] if request else "unknown"
        say(f"decision: none yet (pending; expires {expires})", "yellow")
    else:
        mark = "UNVERIFIED " if view["decision_log_seq"] in unverified else ""
        scopes = shown(", ".join(decision["approver_scopes"])) or "none"
        expired = " (the request expired unanswered)" if decision["expired"] else ""
        say(
            f"{mark}decision: {decision['decision']} by {shown(decision['approver'])} (scopes: {scopes}) at "
            f"{decision['at']}{expired}",
            "bold red" if mark else "bold",
        )
        say(f"  why: {shown(decision['reason'])}")
    for resumed in view["resumes"]:
        say(f"resumed by: run {resumed['run_id']} ({resumed['status']})")
    if view["story"]:
        say()
        say("story (in order):", "bold")
        for line in view["story"]:
            say(line)
    for finding in view["findings"]:
        say(f"UNVERIFIED {finding}", "bold red")
    if not view["verified"]:
        say(
            f"approval {view['approval_id']} is NOT VERIFIED: what the marked receipts say may be forged; "
            "run `charter audit verify`",
            "bold red",
        )
