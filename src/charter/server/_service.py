"""What Charter offers a remote caller, whatever the protocol: the HTTP API and the MCP
server are two faces of this one class, so both say and allow exactly the same."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from charter.agent import Charter, Conclusion
from charter.approvals import (
    ApprovalNotFound,
    ApprovalStore,
    ApprovalView,
    ApprovalWebhook,
    Resumer,
    ResumeWorker,
    chain_of,
)
from charter.approvals._retry import retryable_resume
from charter.audit import (
    Asked,
    Attempted,
    AuditLog,
    CheckedRun,
    Concluded,
    Decision,
    Opened,
    Outcome,
    RunRecord,
    Sealed,
    check_run,
)
from charter.compiler.artifact import CompiledContract
from charter.errors import MissingApiKey, RunNotFound, UsageError
from charter.principal import Principal
from charter.registry import Registry, parse_ref
from charter.replay import ReplayReport
from charter.runner import Answer, Execution, Runner, conclusion_of
from charter.sandbox import Outcome as SandboxOutcome
from charter.server import _contract_review, _run_review
from charter.server._contract_review import ApprovalRule, ChangeReview, ContractReview, ContractVersions
from charter.server._runs_query import Overview, RunPage, RunQuery, overview, run_page, with_approvals
from charter.status import status_of

__all__ = ["AUDIT_SCOPE", "CharterService", "Forbidden", "IntentsUnavailable", "conclusion_body"]

_log = logging.getLogger("charter.server")

_RUN_ID = re.compile(r"[0-9a-f]{32}")  # run ids and approval ids alike: secrets.token_hex(16)
AUDIT_SCOPE = "audit:read"  # may read every principal's runs, not only its own


class Forbidden(Exception):
    """The principal may not do this (it is not a usage error: the request was well formed)."""


class IntentsUnavailable(Exception):
    """No model is configured, so intents cannot be answered (programs still can)."""


@dataclass
class CharterService:
    registry: Registry
    audit: AuditLog
    runner: Runner
    agent: Charter | None  # None: intents are not served (no model configured)
    # Human approvals: the requests in the audit log, the worker resuming decided ones (None
    # until `start_approvals`) and the webhook told of each new request (None: none).
    approvals: ApprovalStore = field(init=False)
    resumes: ResumeWorker | None = field(default=None, init=False)
    webhook: ApprovalWebhook | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.approvals = ApprovalStore(self.audit)

    @classmethod
    def create(cls, *, registry: Registry, audit: AuditLog, agent: Charter | None) -> CharterService:
        runner = agent.runner if agent is not None else Runner(audit=audit)
        return cls(registry=registry, audit=runner.audit, runner=runner, agent=agent)

    # -- contracts --------------------------------------------------------------------------

    def contract(self, ref: str) -> CompiledContract:
        name, version = parse_ref(ref)
        return self.registry.get(name, version)

    def latest_contracts(self) -> list[CompiledContract]:
        return [self.registry.get(name) for name in self.registry.names()]

    def contract_list(self) -> list[dict[str, Any]]:
        listing = []
        for name in self.registry.names():
            default = self.registry.get(name)
            listing.append(
                {
                    "name": name,
                    "latest": self.registry.versions(name)[-1].version,
                    "default": default.version,
                    "summary": default.summary,
                    "versions": [
                        {"version": v.version, "sha256": v.sha256, "published_at": v.published_at}
                        for v in self.registry.versions(name)
                    ],
                }
            )
        return listing

    def contract_view(self, name: str, version: str) -> dict[str, Any]:
        compiled = self.registry.get(name, None if version == "latest" else version)
        return {
            "name": compiled.name,
            "version": compiled.version,
            "sha256": compiled.sha256,
            "summary": compiled.summary,
            "operations": [
                {"name": op.name, "kind": op.kind, "doc": op.doc, "scopes": list(op.scopes)}
                for op in compiled.gate.operations.values()
            ],
            "prompt_context": compiled.prompt_context,
            "stubs": compiled.stub_source,
        }

    # The review app's Contracts pages and approval rules (charter.server._contract_review).

    def contract_versions(self) -> list[ContractVersions]:
        return _contract_review.contract_versions(self.registry)

    def contract_review(self, name: str, version: str) -> ContractReview:
        return _contract_review.contract_review(self.registry, name, version)

    def contract_changes(self, name: str, old: str, new: str) -> ChangeReview:
        return _contract_review.contract_changes(self.registry, name, old, new)

    def approval_rule(self, view: ApprovalView) -> ApprovalRule:
        return _contract_review.approval_rule(self.registry, view.contract, view.version, view.operation, view.boundary)

    # -- runs -------------------------------------------------------------------------------

    def operate(
        self,
        principal: Principal,
        contract: str,
        intent: str,
        *,
        run_id: str | None = None,
        inputs: Mapping[str, str] | None = None,
        secret_inputs: Collection[str] = (),
    ) -> Conclusion:
        """`run_id`: the intent run's id, allocated beforehand (None: a new one); `inputs` and
        `secret_inputs` as for `execute`."""
        compiled = self.contract(contract)
        try:
            if self.agent is None:
                raise MissingApiKey("it was started without a model")
            conclusion = self.agent.handle(
                intent,
                contract=compiled,
                principal=principal,
                run_id=run_id,
                inputs=inputs,
                secret_inputs=secret_inputs,
            )
        except MissingApiKey as error:
            raise IntentsUnavailable(
                f"this server answers no intents ({error}): start it with ANTHROPIC_API_KEY set, or with "
                "--replay RECORDING.json; programs can still be run"
            ) from None
        self._announce(conclusion.approval_id)
        return conclusion

    def execute(
        self,
        principal: Principal,
        contract: str,
        program: str,
        *,
        run_id: str | None = None,
        inputs: Mapping[str, str] | None = None,
        secret_inputs: Collection[str] = (),
    ) -> Execution:
        """`run_id`: the program run's id, allocated beforehand (None: a new one). `inputs`: the
        request's named values; those in `secret_inputs` are recorded as keyed digests only
        (UsageError for a bad shape: charter.inputs.check_inputs)."""
        if not isinstance(program, str) or not program.strip():
            raise UsageError("the program is empty: send Python source that ends with conclude(...) or refuse(...)")
        execution = self.runner.execute(
            program,
            contract=self.contract(contract),
            principal=principal,
            run_id=run_id,
            inputs=inputs,
            secret_inputs=secret_inputs,
        )
        self._announce(execution.approval_id)
        return execution

    def recorded_answer(self, run_id: str) -> tuple[Answer, int | None] | None:
        """What the caller of run `run_id` gets, from the audit log alone, and the intent run's
        attempts (None for a program run); None if the run was never opened.

        A sealed run: the answer its seal or conclusion records, as the request returned it.
        A run opened but never sealed (its process ended during it): status `in_doubt`, with
        the cause the log gives it (never_sealed / never_concluded). `audit list`/`verify`
        show the same run as `interrupted`: the record says how the run ended, the caller is
        told what it may assume, which is that its calls' effects are not known."""
        try:
            record = self.audit.run(run_id)
        except RunNotFound:
            return None
        opened, sealed = record.opened, record.sealed
        ended = status_of(opened, sealed)
        attempts = sum(isinstance(r, Attempted) for r in record.receipts) if isinstance(opened, Asked) else None
        common: dict[str, Any] = {"run_id": record.run_id, "contract": opened.contract, "version": opened.version}
        if sealed is None:
            reason = (
                "the server stopped while this run was under way: it was opened and never sealed, so what its "
                f"calls did is not known. GET /v1/runs/{record.run_id} lists the calls in doubt (the audit log "
                "shows the run as interrupted); read the entities before doing anything again."
            )
            return Answer(status="in_doubt", cause=ended.cause, reason=reason, **common), attempts
        if isinstance(sealed, Concluded):
            data = None if sealed.data is None else msgspec.json.decode(sealed.data)
            answer = Answer(
                status=ended.status,
                cause=ended.cause,
                answer=sealed.answer,
                data=data,
                reason=sealed.reason,
                approval_id=sealed.approval_id,
                **common,
            )
            return answer, len(sealed.attempts)
        _, text, data, why = conclusion_of(msgspec.json.decode(sealed.outcome, type=SandboxOutcome))
        answer = Answer(
            status=ended.status,
            cause=ended.cause,
            answer=text,
            data=data,
            reason=why,
            approval_id=sealed.approval_id,
            **common,
        )
        return answer, None

    def current_answer(self, run_id: str) -> tuple[Answer, int | None, list[str]] | None:
        """What the caller of run `run_id` gets NOW: a run paused for approval answers with the
        latest run of its chain (`chain`: the run ids, the paused run first), so a retry with
        its Idempotency-Key learns the resumed run's conclusion and not the stale pause. The
        answer keeps `run_id` (the run the caller started); None if it was never opened."""
        recorded = self.recorded_answer(run_id)
        if recorded is None:
            return None
        answer, attempts = recorded
        records = self._chain_records(run_id)
        chain = [r.run_id for r in records]
        latest = _latest_sealed(records)
        if latest is None or latest.run_id == run_id:
            return answer, attempts, chain
        resumed = self.recorded_answer(latest.run_id)
        if resumed is None:
            return answer, attempts, chain
        now = resumed[0]
        current = msgspec.structs.replace(
            answer,
            status=now.status,
            cause=now.cause,
            answer=now.answer,
            data=now.data,
            reason=now.reason,
            decision=now.decision,
            approval_id=now.approval_id,
        )
        return current, attempts, chain

    # -- approvals --------------------------------------------------------------------------

    def chain(self, run_id: str) -> list[str]:
        """The run ids of `run_id`'s approval chain in order: the run itself (an intent run
        first), the program run that paused, then each resumed run. [run_id] for a run that
        never paused. Raises RunNotFound."""
        return [record.run_id for record in self._chain_records(run_id)]

    def _chain_records(self, run_id: str) -> list[RunRecord]:
        records = chain_of(self.audit, run_id)
        if any(r.run_id == run_id for r in records):
            return records
        return [self.audit.run(run_id), *records]

    def approval_summary(self, approval_id: str | None) -> dict[str, Any] | None:
        """What a paused run's caller is told of its approval: id, operation, call, reason,
        expires and status (pending, approved, denied, expired). None for no approval."""
        if approval_id is None:
            return None
        try:
            view = self.approvals.get(approval_id)
        except ApprovalNotFound:
            return None
        return {
            "id": view.approval_id,
            "operation": view.operation,
            "call": view.call,
            "reason": view.reason,
            "expires": view.expires,
            "status": view.status,
        }

    def list_approvals(
        self, principal: Principal, *, contract: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[ApprovalView]:
        """The approval requests `principal` may see (its own, those its scopes may decide, all
        with audit:read), newest first."""
        return self.approvals.list(contract=contract, status=status, visible_to=principal, limit=limit)

    def approval(self, principal: Principal, approval_id: str) -> ApprovalView:
        """One approval request. ApprovalNotFound for a malformed id, an unknown one, and one
        `principal` may not see (answered alike: an id's existence is not told)."""
        if not _RUN_ID.fullmatch(approval_id):
            raise ApprovalNotFound(f"no approval {approval_id[:64]!r}: give the whole 32-character approval id")
        return self.approvals.get(approval_id, visible_to=principal)

    def decide(
        self, principal: Principal, approval_id: str, decision: Literal["approved", "denied"], reason: str
    ) -> tuple[ApprovalView, bool]:
        """`principal` approves or denies the request; returns its view after the decision and
        whether this call wrote it (False: the same decision was already recorded). The
        resume worker is told at once. Raises ApprovalNotFound (also: not visible to the
        principal), ApprovalForbidden, SelfApproval, ApprovalExpired, ApprovalConflict, and
        UsageError for an empty or too long reason."""
        self.approval(principal, approval_id)  # not visible -> not found, before any other answer
        _, written = self.approvals.decide(approval_id, principal, decision, reason)
        if self.resumes is not None:
            self.resumes.notify(approval_id)
        return self.approvals.get(approval_id, visible_to=principal), written

    @staticmethod
    def decision_answer(view: ApprovalView, written: bool, reason: str) -> dict[str, Any]:
        """What a decision answers on every surface: the view, `already_decided` (True: the same
        approver had given the same decision; nothing new was written, and the view keeps that
        first decision's reason) and, then, a `note` saying so, and that a different reason given
        now was not recorded (a decision is recorded once)."""
        body: dict[str, Any] = msgspec.to_builtins(view)
        body["already_decided"] = not written
        if not written:
            ignored = "" if reason == view.decision_reason else f"; the reason given now ({reason!r}) was not recorded"
            body["note"] = (
                f"already {view.decision} by {view.decided_by} at {view.decided_at} with the reason "
                f"{view.decision_reason!r}: a request is decided once, nothing new was written{ignored}"
            )
        return body

    def start_approvals(
        self,
        principal_of: Callable[[str], Principal | None],
        *,
        webhook: ApprovalWebhook | None = None,
        poll_seconds: float = 1.0,
    ) -> ResumeWorker:
        """Start the worker that resumes decided approvals (every pending one at once, then as
        decisions come and every `poll_seconds`), resolving each requester with `principal_of`
        (the token store's current view); `webhook` is told of every new request."""
        self.webhook = webhook
        resumer = Resumer(self.runner, self.registry, principal_of=principal_of, store=self.approvals)
        worker = ResumeWorker(resumer, self.approvals, poll_seconds=poll_seconds, on_sealed=self._resumed)
        worker.start()
        self.resumes = worker
        return worker

    def stop_approvals(self) -> None:
        if self.resumes is not None:
            self.resumes.stop()
            self.resumes = None
        if self.webhook is not None:
            self.webhook.stop()

    def _resumed(self, execution: Execution) -> None:
        self._announce(execution.approval_id)  # a resumed run that paused again (a chain)

    def _announce(self, approval_id: str | None) -> None:
        """Tell the webhook of a new approval request; never fails the run that paused."""
        if approval_id is None or self.webhook is None:
            return
        try:
            self.webhook.notify(self.approvals.get(approval_id))
        except Exception:
            _log.exception("approval %s: the webhook could not be told", approval_id)

    # The review app's run page (charter.server._run_review: who sees what, verified when shown).
    def run_review(self, principal: Principal, run_id: str) -> _run_review.RunReview:
        return _run_review.review_run(self, principal, run_id)

    def replay(self, principal: Principal, run_id: str) -> list[ReplayReport]:
        return _run_review.review_replay(self, principal, run_id)

    def run_bundle(self, principal: Principal, run_id: str) -> str:
        return _run_review.review_bundle(self, principal, run_id)

    def list_runs(self, principal: Principal, query: RunQuery) -> RunPage:
        """A page of the runs `principal` may see (all with audit:read, else its own), newest
        first. Forbidden for a `principal` filter naming another principal, or a run-id prefix
        search (it would reveal ids), without audit:read."""
        if principal.has(AUDIT_SCOPE):
            return run_page(self.audit, query, principal=None)
        if query.principal not in (None, principal.id):
            raise Forbidden(f"principal: only your own runs are listed without the scope {AUDIT_SCOPE!r}")
        if query.run_prefix is not None:
            raise Forbidden(f"run: searching by run-id prefix needs the scope {AUDIT_SCOPE!r}")
        return run_page(self.audit, query, principal=principal.id)

    def overview(self, principal: Principal) -> Overview:
        """Runs per day and contract, denials by reason code and boundary, runs never sealed and
        approvals waiting, over the runs `principal` may see (the same rule as `list_runs`)."""
        view = overview(self.audit, principal=None if principal.has(AUDIT_SCOPE) else principal.id)
        return with_approvals(view, len(self.list_approvals(principal, status="pending", limit=1000)))

    def run_view(self, principal: Principal, run_id: str) -> dict[str, Any]:
        """A run's conclusion, receipts and verification, for its own principal (or audit:read)."""
        if not _RUN_ID.fullmatch(run_id):  # whole ids only: a prefix search would reveal others' runs
            raise RunNotFound(f"no run {run_id!r}: give the whole 32-character run id")
        # Another principal's run is answered exactly like a missing one: the answer must not
        # tell a caller that an id exists (nor the audit log's path on the server).
        missing = RunNotFound(f"no run {run_id!r} among the runs you may read (yours, or any with {AUDIT_SCOPE!r})")
        try:
            checked = check_run(self.audit, run_id)  # every receipt's own signature and links
        except RunNotFound:
            raise missing from None
        record = checked.record
        if _run_review.run_access(self, principal, record) is None:  # the review app's rule too
            raise missing
        view: dict[str, Any] = {}
        if principal.has(AUDIT_SCOPE):
            # Withheld exception texts may hold secrets: auditors only, even for the run's own principal.
            view["backend_errors"] = [msgspec.to_builtins(e) for e in self.audit.backend_errors(record.run_id)]
        if checked.programs:  # an intent run's view holds the program runs it started
            view["programs"] = [_checked_view(p) for p in checked.programs]
        view |= self._chain_view(record)
        return {**summary(checked.record), **view, **_checked_view(checked, receipts_only=True)}

    def _chain_view(self, record: RunRecord) -> dict[str, Any]:
        """The approval chain of a run and its latest state: `chain` (run ids in order),
        `latest_run`, and the latest sealed run's status, cause, answer and reason in place of
        the run's own (a paused run reports its resumed run's conclusion once there is one);
        `approval` while the chain awaits one; `resuming`: a resumed run under way. For a program
        run, `calls`, `outcomes` and `in_doubt` cover every program run of the chain in order
        (each call and outcome names its `run_id`): a resumed run records the approved call and
        those after it, not the paused run's."""
        records = self._chain_records(record.run_id)
        chain = [r.run_id for r in records]
        latest = _latest_sealed(records) or record
        view: dict[str, Any] = {"chain": chain, "latest_run": latest.run_id}
        if isinstance(record.opened, Opened) and len(records) > 1:
            runs = [_calls(r) for r in records if isinstance(r.opened, Opened)]  # a crashed resume's too
            for key in ("calls", "outcomes", "in_doubt"):
                view[key] = [item for run in runs for item in run[key]]
        if latest.run_id != record.run_id:
            now = summary(latest)
            view |= {key: now[key] for key in ("status", "cause", "answer", "reason")}
        closing = latest.sealed
        waiting = closing.approval_id if isinstance(closing, Sealed | Concluded) else None
        view["approval"] = self.approval_summary(waiting) if latest.status == "awaiting_approval" else None
        after = chain[chain.index(latest.run_id) + 1 :] if latest.run_id in chain else []
        view["resuming"] = after[-1] if after else None
        return view


def _latest_sealed(records: list[RunRecord]) -> RunRecord | None:
    """The latest sealed run of a chain: a resume still under way (or crashed, or stopped by the
    backend's absence before the approved call acted: `retryable`, and to be retried by the
    worker) does not yet change what the chain concluded."""
    return next((r for r in reversed(records) if r.sealed is not None and not retryable_resume(r)), None)


def _checked_view(checked: CheckedRun, *, receipts_only: bool = False) -> dict[str, Any]:
    """Receipts each marked `verified` (its own signature and links checked) and the run's
    verification; with the run's summary unless `receipts_only`."""
    verification = checked.verification
    view = {} if receipts_only else summary(checked.record)
    return view | {
        "receipts": [
            msgspec.to_builtins(r) | {"verified": r.log_seq not in checked.unverified} for r in checked.record.receipts
        ],
        "verification": {
            "ok": verification.ok,
            "receipts": verification.receipts,
            "findings": [str(f) for f in verification.findings],
            "in_doubt": [{"call": call, "operation": op} for _, call, op in verification.in_doubt],
        },
    }


def conclusion_body(
    answer: Answer,
    attempts: int | None = None,
    *,
    approval: Mapping[str, Any] | None = None,
    chain: list[str] | None = None,
) -> dict[str, Any]:
    """A run's conclusion as both faces return it (HTTP `ConclusionBody`, MCP structuredContent):
    run_id, status, cause, decision (the deciding gate decision, or null), answer, data (plain
    JSON types), reason, contract, version, and
    attempts for intents. The caller first checks `answer.unavailable` (the server's fault).
    A run awaiting approval adds `approval` (`CharterService.approval_summary`); a run that
    paused, `chain` (its run ids in order, `CharterService.chain`)."""
    body: dict[str, Any] = {"run_id": answer.run_id, "status": answer.status, "cause": answer.cause}
    body["decision"] = msgspec.to_builtins(answer.decision)  # null unless a gate decision decided it
    body["answer"] = answer.answer
    body |= {"data": msgspec.to_builtins(answer.data), "reason": answer.reason}
    body |= {"contract": answer.contract, "version": answer.version}
    if attempts is not None:
        body["attempts"] = attempts
    if approval is not None:
        body["approval"] = dict(approval)
    if chain is not None and len(chain) > 1:
        body["chain"] = chain
    return body


def summary(record: RunRecord) -> dict[str, Any]:
    """What a run concluded, in a few fields: the same for intent runs and program runs."""
    opened = record.opened
    closing = record.sealed
    view: dict[str, Any] = {
        "run_id": record.run_id,
        "kind": "intent" if isinstance(opened, Asked) else "program",
        "principal": opened.principal,
        "contract": opened.contract,
        "version": opened.version,
        "intent": opened.intent,
        "status": record.status,
        "cause": record.cause,
        "answer": None,
        "reason": None,
        "parent": opened.parent if isinstance(opened, Opened) else None,
    }
    if isinstance(closing, Concluded):
        view.update(answer=closing.answer, reason=closing.reason)
        view["program_runs"] = list(closing.program_runs)
    elif isinstance(closing, Sealed):
        _, answer, _, reason = conclusion_of(msgspec.json.decode(closing.outcome, type=SandboxOutcome))
        view.update(answer=answer, reason=reason)
        view |= _calls(record)
    elif closing is None and isinstance(opened, Opened):
        # Interrupted (opened, never sealed: the server was killed): its receipts still say
        # what it called and which calls are in doubt, as `charter audit show` does.
        view |= _calls(record)
    return view


def _calls(record: RunRecord) -> dict[str, list[Any]]:
    """A program run's `calls` (its gate decisions) and `outcomes`, each naming its run, and the
    calls `in_doubt` (allowed, no outcome recorded)."""
    return {
        "calls": [
            {"call": r.call, "operation": r.operation, "decision": r.decision, "code": r.code, "run_id": r.run_id}
            for r in record.receipts
            if isinstance(r, Decision)
        ],
        "in_doubt": [d.call for d in record.in_doubt()],
        "outcomes": [
            {"call": r.call, "status": r.status, "run_id": r.run_id} for r in record.receipts if isinstance(r, Outcome)
        ],
    }
