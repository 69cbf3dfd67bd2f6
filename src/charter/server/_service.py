"""What Charter offers a remote caller, whatever the protocol: the HTTP API and the MCP
server are two faces of this one class, so both say and allow exactly the same."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from charter.agent import Charter, Conclusion
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
from charter.runner import Answer, Execution, Runner, conclusion_of
from charter.sandbox import Outcome as SandboxOutcome
from charter.status import status_of

__all__ = ["AUDIT_SCOPE", "CharterService", "Forbidden", "IntentsUnavailable", "conclusion_body"]

_RUN_ID = re.compile(r"[0-9a-f]{32}")
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
            return self.agent.handle(
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
        return self.runner.execute(
            program,
            contract=self.contract(contract),
            principal=principal,
            run_id=run_id,
            inputs=inputs,
            secret_inputs=secret_inputs,
        )

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
                status=ended.status, cause=ended.cause, answer=sealed.answer, data=data, reason=sealed.reason, **common
            )
            return answer, len(sealed.attempts)
        _, text, data, why = conclusion_of(msgspec.json.decode(sealed.outcome, type=SandboxOutcome))
        return Answer(status=ended.status, cause=ended.cause, answer=text, data=data, reason=why, **common), None

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
        if record.opened.principal != principal.id and not principal.has(AUDIT_SCOPE):
            raise missing
        view: dict[str, Any] = {}
        if principal.has(AUDIT_SCOPE):
            # Withheld exception texts may hold secrets: auditors only, even for the run's own principal.
            view["backend_errors"] = [msgspec.to_builtins(e) for e in self.audit.backend_errors(record.run_id)]
        if checked.programs:  # an intent run's view holds the program runs it started
            view["programs"] = [_checked_view(p) for p in checked.programs]
        return {**summary(checked.record), **view, **_checked_view(checked, receipts_only=True)}


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


def conclusion_body(answer: Answer, attempts: int | None = None) -> dict[str, Any]:
    """A run's conclusion as both faces return it (HTTP `ConclusionBody`, MCP structuredContent):
    run_id, status, cause, decision (the deciding gate decision, or null), answer, data (plain
    JSON types), reason, contract, version, and
    attempts for intents. The caller first checks `answer.unavailable` (the server's fault)."""
    body: dict[str, Any] = {"run_id": answer.run_id, "status": answer.status, "cause": answer.cause}
    body["decision"] = msgspec.to_builtins(answer.decision)  # null unless a gate decision decided it
    body["answer"] = answer.answer
    body |= {"data": msgspec.to_builtins(answer.data), "reason": answer.reason}
    body |= {"contract": answer.contract, "version": answer.version}
    if attempts is not None:
        body["attempts"] = attempts
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
        view["calls"] = [
            {"call": r.call, "operation": r.operation, "decision": r.decision, "code": r.code}
            for r in record.receipts
            if isinstance(r, Decision)
        ]
        view["in_doubt"] = [d.call for d in record.in_doubt()]
        view["outcomes"] = [{"call": r.call, "status": r.status} for r in record.receipts if isinstance(r, Outcome)]
    return view
