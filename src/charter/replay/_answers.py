"""Answering a program's calls from their receipts: the one implementation `audit replay` and a
resume after an approval share.

`RecordedAnswers` holds the Decision and Outcome receipts of one or more runs (later runs'
receipts of a call take the place of earlier ones) and, for a call the program makes again,
says whether it is the recorded call (the same operation, and arguments hashing exactly as
the gate recorded them: secrets masked with the log's key) and gives the program what it got
then: the recorded result, denial or failure. A call recorded as an ApprovalRequested (in
place of a Decision: the run paused there) is answered by pausing exactly as the gate did
(`pause`: ApprovalPending with the receipt's approval id, call, operation, reason and line),
so a paused run replays to its sealed `paused` outcome. Nothing is decided and no backend is touched.

`ResumeGate` is the gate of a resumed run (charter.approvals.resume): a call the chain's
record holds is answered from it, after the check; a mismatch ends the run DIVERGED and an
allowed write whose outcome was never recorded (a crashed resume) ends it IN_DOUBT, both before
anything executes (a read without an outcome is made again: it acted on nothing). The live
session absorbs each answered call (`GateSession.absorb`: its
sequence, write and provenance state), and every other call goes live through it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any, NoReturn, Protocol

from charter.audit import ApprovalRequested, Decision, Outcome, RunRecord, Sealed, SecretKey
from charter.compiler.artifact import CompiledContract
from charter.gate import (
    ApprovalPending,
    ArgumentChecker,
    CallRequest,
    Denied,
    Encoded,
    InvalidArguments,
    OperationFailed,
    RunHalted,
)
from charter.gate._contract import halt_message
from charter.gate._secrets import SecretParams, recorded_arguments
from charter.status import BACKEND_UNAVAILABLE, RunStatus, status_of_closing

__all__ = ["RecordedAnswers", "ResumeGate"]

DIVERGED = "DIVERGED"
IN_DOUBT = "IN_DOUBT"


class RecordedAnswers:
    """The recorded calls of `records` (in order; a later run's receipt of a call wins)."""

    def __init__(self, records: Iterable[RunRecord], contract: CompiledContract, secret_key: SecretKey | None) -> None:
        self.decisions: dict[int, Decision] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.origin: dict[int, str] = {}  # call -> the run whose receipt answers it
        # call -> the request the run paused on, until a later run's Decision of that call replaces it
        self.requests: dict[int, ApprovalRequested] = {}
        # Calls a resume sealed failed BACKEND_UNAVAILABLE never got to the backend for (their
        # Outcome is failed BACKEND_UNAVAILABLE): a resume recovering that run makes them again.
        self.unreached: set[int] = set()
        for record in records:
            stopped = isinstance(record.sealed, Sealed) and status_of_closing(record.sealed) == RunStatus(
                "failed", BACKEND_UNAVAILABLE
            )
            for receipt in record.receipts:
                if isinstance(receipt, Decision):
                    self.decisions[receipt.call] = receipt
                    self.outcomes.pop(receipt.call, None)
                    self.requests.pop(receipt.call, None)
                    self.unreached.discard(receipt.call)
                    if stopped and (receipt.decision, receipt.code) == ("DENY", BACKEND_UNAVAILABLE):
                        self.unreached.add(receipt.call)  # refused for the backend's absence: never sent
                    self.origin[receipt.call] = record.run_id
                elif isinstance(receipt, ApprovalRequested):
                    self.requests[receipt.call] = receipt
                    self.decisions.pop(receipt.call, None)
                    self.outcomes.pop(receipt.call, None)
                    self.origin[receipt.call] = record.run_id
                elif isinstance(receipt, Outcome) and receipt.call in self.decisions:
                    self.outcomes[receipt.call] = receipt
                    if stopped and (receipt.status, receipt.code) == ("failed", BACKEND_UNAVAILABLE):
                        self.unreached.add(receipt.call)
        self._checker = ArgumentChecker.for_table(contract.gate)
        self._reads = {name: rule.kind == "read" for name, rule in contract.gate.operations.items()}
        self._secrets = SecretParams(contract.gate)
        self._key = secret_key
        self.notes: list[str] = []

    def recorded(self, sequence: int) -> Decision | None:
        return self.decisions.get(sequence)

    def outcome(self, sequence: int) -> Outcome | None:
        return self.outcomes.get(sequence)

    # -- is it the recorded call? ------------------------------------------------------

    def requested(self, sequence: int) -> ApprovalRequested | None:
        return self.requests.get(sequence)

    def divergence(
        self, request: CallRequest, decision: Decision | ApprovalRequested, *, strict: bool = False
    ) -> str | None:
        """Why `request` is not the recorded call `decision` (another operation, or arguments
        hashing otherwise), or None. Secret params recorded under another key (or with no key
        here) cannot be compared: `strict` (a resume, which must not act on what it cannot
        check) makes that a divergence; otherwise the rest is compared and a note says so."""
        n = request.sequence
        missing = self._key_missing(decision)
        if missing is not None and request.operation == decision.operation:
            if strict:
                return f"call {n} ({request.operation}): its secret params cannot be compared: {missing}"
            if not self._same_without_secrets(request, decision):
                return f"call {n} ({request.operation}) has other arguments than the recorded call"
            self.notes.append(
                f"call {n} ({request.operation}): secret params {', '.join(decision.secret_params)} were not "
                f"compared: {missing}"
            )
        digest = self._digest(request) if missing is None else decision.args_sha256
        if request.operation != decision.operation or digest != decision.args_sha256:
            return (
                f"call {n} is {request.operation} with arguments {digest[:12]}…, "
                f"the record has {decision.operation} with {decision.args_sha256[:12]}…"
            )
        return None

    def _checked(self, request: CallRequest) -> dict[str, Any] | None:
        if request.malformed is not None:
            return None
        # Arguments that fail the check are recorded as the program sent them.
        with contextlib.suppress(InvalidArguments, KeyError):
            return self._checker.check(request.operation, request.arguments)
        return None

    def _digest(self, request: CallRequest) -> str:
        """The arguments' hash exactly as the gate recorded it for this call."""
        secret = self._secrets.of(request.operation)
        return recorded_arguments(request, self._checked(request), secret, self._key)[1]

    def _key_missing(self, decision: Decision | ApprovalRequested) -> str | None:
        """Why this decision's secret params cannot be compared (no key, another key), or None."""
        if not decision.secret_params:
            return None
        if self._key is None:
            return "the log's secret key (keys/secrets.key) is not available"
        recorded = json.loads(decision.arguments) if decision.arguments else {}
        for name in decision.secret_params:
            value = recorded.get(name)
            for digest in value if isinstance(value, list) else [value]:
                if isinstance(digest, str) and digest.split(":")[1:2] != [self._key.key_id]:
                    return (
                        f"they were recorded with secret key {digest.split(':')[1]}, not this log's {self._key.key_id}"
                    )
        return None

    def _same_without_secrets(self, request: CallRequest, decision: Decision | ApprovalRequested) -> bool:
        """Whether the call matches the record in everything but its secret params."""
        checked = self._checked(request)
        if checked is None or decision.arguments is None:
            return checked is None and decision.arguments is None
        recorded = json.loads(decision.arguments)
        replayed = json.loads(recorded_arguments(request, checked, (), None)[0] or "{}")
        for name in decision.secret_params:
            recorded.pop(name, None)
            replayed.pop(name, None)
        return bool(recorded == replayed)

    # -- what the program got ------------------------------------------------------------

    def reply(self, decision: Decision, *, denials: int = 0, halted: bool = False) -> Any:
        """What the program got for the recorded call: its result (Encoded), or the denial
        (`halted`: the one that ended the run, after `denials` denials) or failure, raised.
        KeyError for an allowed call with no recorded outcome (the caller decides)."""
        if decision.decision == "DENY":
            if halted:
                raise RunHalted(decision.code, halt_message(decision.message, denials), boundary=decision.boundary)
            raise Denied(decision.code, decision.message, boundary=decision.boundary)
        outcome = self.outcomes[decision.call]
        if outcome.status in ("failed", "unknown"):  # either way, the program was told it failed
            raise OperationFailed(outcome.code or "BACKEND_ERROR", outcome.message or "")
        return Encoded(outcome.result or "null")

    @staticmethod
    def pause(request: ApprovalRequested) -> NoReturn:
        """Answer the call the run paused on as the gate did: ApprovalPending, the receipt's fields."""
        raise ApprovalPending(
            request.approval_id,
            call=request.call,
            operation=request.operation,
            reason=request.reason,
            line=request.line,
        )

    def settle(self, request: CallRequest) -> Decision | None:
        """A resume's rule for call `request`: None if no record holds it (it goes live); else
        its recorded Decision, once it is found to be the same call with a known outcome.
        RunHalted DIVERGED for another call than the recorded one, IN_DOUBT for an allowed
        write whose outcome was never recorded: it may have acted, and is never sent again. An
        allowed read without an outcome (a crash while it ran) goes live again: it acted on nothing,
        and so does a call whose Outcome is failed BACKEND_UNAVAILABLE, or that was denied
        BACKEND_UNAVAILABLE (a binding that would not load), in a resume the backend's
        absence stopped (charter.approvals.resume: that resume is retried; the backend was never reached)."""
        decision = self.decisions.get(request.sequence)
        if decision is None:
            return None
        differs = self.divergence(request, decision, strict=True)
        if differs is not None:
            raise RunHalted(
                DIVERGED,
                f"resume diverged from the record of run {self.origin[request.sequence]}: {differs}; "
                "nothing was executed.",
            )
        if decision.call in self.unreached:
            return None  # the backend was never reached: made again, live, under the same key
        if decision.decision == "ALLOW" and decision.call not in self.outcomes:
            if self._reads.get(decision.operation, False):
                return None  # a read acts on nothing: made again, live, under a Decision of its own
            raise RunHalted(
                IN_DOUBT,
                f"call {decision.call} ({decision.operation}) was allowed in run {self.origin[decision.call]} and "
                "no outcome was recorded: it may have acted, so it is not sent again. Read the entity to learn "
                "its state.",
            )
        return decision


class _Absorbing(Protocol):
    blocking: bool

    def call(self, request: CallRequest) -> Any: ...

    def absorb(self, request: CallRequest, decision: Decision, outcome: Outcome | None) -> None: ...

    def close(self, reason: str) -> None: ...


class ResumeGate:
    """A resumed run's gate: recorded calls answered from the chain, the rest live (see the module)."""

    def __init__(self, live: _Absorbing, answers: RecordedAnswers) -> None:
        self.live = live
        self.answers = answers
        self.blocking = live.blocking
        self.answered = 0  # calls answered from the record

    def call(self, request: CallRequest) -> Any:
        decision = self.answers.settle(request)
        if decision is None:
            return self.live.call(request)
        self.live.absorb(request, decision, self.answers.outcome(decision.call))
        self.answered += 1
        return self.answers.reply(decision)

    def close(self, reason: str) -> None:
        self.live.close(reason)
