"""A call answered from the record, taken into a live session's state (`GateSession.absorb`).

A resumed run (charter.approvals.resume) answers the calls its chain already made from their
receipts; the live session must then stand where it would had it decided them itself, so the
approved call and every later one are checked against the same run state: the operations that
succeeded (sequence rules), the writes sent (limits.max_writes), an idempotent write's first
result, a write in doubt, the replies provenance counts, `window: run` quota amounts, and the
denials (limits.max_denials). No receipt is written and the backend is not touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from charter.audit import Decision, Outcome
from charter.gate._arguments import InvalidArguments
from charter.gate._protocol import CallRequest
from charter.gate._quotas import QuotaHold

if TYPE_CHECKING:
    from charter.gate._contract import GateSession

__all__ = ["absorb_call"]


def absorb_call(session: GateSession, request: CallRequest, decision: Decision, outcome: Outcome | None) -> None:
    if decision.decision == "DENY":
        session._state.denials += 1
        return
    gate = session._gate
    rule = gate._table.operations.get(decision.operation)
    if rule is None:  # an allowed call names an operation of the pinned version; nothing to take in
        return
    try:
        arguments = gate._checker.check(rule.name, request.arguments)
    except InvalidArguments:
        return  # an allowed call's arguments were checked; the answer's check (args hash) came first
    hold = QuotaHold()
    hold.seen = decision.quotas
    hold.windows = {q.id: None for q in decision.quotas if q.window == "run"}
    session._quotas.counted(decision.call, hold)
    if outcome is None:
        return
    session._quotas.outcome(decision.call, outcome.status, outcome.code)
    if rule.kind == "write" and outcome.status != "replayed":
        session._writes.made += 1
    if outcome.status == "unknown" and rule.kind == "write":
        session._writes.unknown(rule, arguments, decision.args_sha256, decision.call)
    if outcome.status == "ok" and outcome.result is not None:  # as `_act`: a replayed one was taken in already
        session._sequence.succeeded(rule, arguments)
        key = decision.idempotency_key
        if rule.kind == "write" and key is not None:
            session._writes.succeeded(rule, decision.args_sha256, decision.call, key, outcome.result)
        session._provenance.record(rule.name, outcome.result)
