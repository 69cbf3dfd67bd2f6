"""The links verification checks between a paused run, the decision on it and the runs resuming it.

Issue 16 writes three kinds of record for one approval, each signed on its own:

    ApprovalRequested  in the paused run, in place of the call's Decision; the run is then
                       sealed awaiting_approval with the approval id (Sealed.approval_id)
    ApprovalDecided    a record of its own (run_id = the approval id, seq 0), naming the
                       paused run (`request_run`) and its request's link (`request_link`)
    Opened             of each run resuming it: `resumes` (the paused run), `approval_id` and
                       `approval_link` (the decision's link)

Signatures and hash links vouch for each record; these checks vouch for the joins between
them, which no single signature covers: the decision decides the request it names (same
approval, call, operation and arguments hash), an approval is decided at most once, and a
resumed run continues the run that paused for that approval under that decision, running
the same program under the same logical run id. Every finding names the receipts involved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from charter.audit.receipts import ApprovalDecided, ApprovalRequested, Opened, Receipt, Sealed, StoredReceipt

__all__ = ["ApprovalLinks", "Fetch", "Report"]

# The rows of one run (or one approval record) in log order, from wherever the rest lives.
Fetch = Callable[[str], list[StoredReceipt]]
# (log_seq, run_id, kind, problem): how a finding is reported (verify.Finding).
Report = Callable[[int | None, str | None, str | None, str], None]


@dataclass(frozen=True, slots=True)
class _Opening:
    log_seq: int
    program_sha256: str
    logical_run_id: str


@dataclass(frozen=True, slots=True)
class _Seal:
    log_seq: int
    status: str  # the sandbox outcome's tag: "paused" for a run awaiting approval
    run_status: str | None
    approval_id: str | None


@dataclass(slots=True)
class ApprovalLinks:
    """Collects what the checks need while verification reads the receipts, then checks the joins.

    `fetch`: how to read a run or record the verified rows do not hold (one run verified in a
    log); None when the rows are all there is (the whole log, a bundle): then a missing part is
    a finding. `where` names that whole in findings ("the log", "the bundle").
    """

    fetch: Fetch | None = None
    where: str = "the log"
    requests: dict[str, tuple[StoredReceipt, ApprovalRequested]] = field(default_factory=dict)  # by link
    decisions: dict[str, dict[int, tuple[StoredReceipt, ApprovalDecided]]] = field(default_factory=dict)
    resumes: dict[int, tuple[StoredReceipt, Opened]] = field(default_factory=dict)  # by log_seq
    openings: dict[str, _Opening] = field(default_factory=dict)
    seals: dict[str, _Seal] = field(default_factory=dict)
    _fetched: set[str] = field(default_factory=set)
    _own: set[int] = field(default_factory=set)  # log_seq of the receipts being verified

    def note(self, row: StoredReceipt, body: Receipt, *, own: bool = True) -> None:
        """Called for every receipt being verified that decoded, in log order. `own`: False for
        a receipt read through `fetch`, which is consulted and not itself checked here."""
        if own:
            self._own.add(row.log_seq)
        if isinstance(body, Opened):
            self.openings[body.run_id] = _Opening(row.log_seq, body.program_sha256, body.logical_run_id or body.run_id)
            if body.resumes is not None or body.approval_id is not None or body.approval_link is not None:
                self.resumes[row.log_seq] = (row, body)
        elif isinstance(body, Sealed):
            self.seals[body.run_id] = _Seal(row.log_seq, body.status, body.run_status, body.approval_id)
        elif isinstance(body, ApprovalRequested):
            self.requests[row.link] = (row, body)
        elif isinstance(body, ApprovalDecided):
            self.decisions.setdefault(body.approval_id, {})[row.log_seq] = (row, body)

    def _load(self, run_id: str) -> bool:
        """Read a run or record from `fetch` (once); False when there is nothing to read it from."""
        if self.fetch is None:
            return False
        if run_id not in self._fetched:
            self._fetched.add(run_id)
            for row in self.fetch(run_id):
                try:
                    body = row.decoded()
                except ValueError:  # its own verification reports it
                    continue
                if isinstance(body, ApprovalDecided) and row.log_seq in self.decisions.get(body.approval_id, {}):
                    continue
                self.note(row, body, own=False)
        return True

    def check(self, report: Report) -> None:
        """Report every broken join among the receipts being verified."""
        for approval_id, decided in list(self.decisions.items()):
            if self._own.intersection(decided):
                self._check_decisions(approval_id, report)
        for log_seq, (row, opened) in list(self.resumes.items()):
            if log_seq in self._own:
                self._check_resume(row, opened, report)

    # -- a decision decides the request it names, once --------------------------------------

    def _check_decisions(self, approval_id: str, report: Report) -> None:
        decided = sorted(self.decisions[approval_id].values(), key=lambda item: item[0].log_seq)
        first_row = decided[0][0]
        for row, decision in decided[1:]:
            report(
                row.log_seq,
                row.run_id,
                row.kind,
                f"a second decision on approval {approval_id} ({decision.decision} by {decision.approver}): "
                f"receipt {first_row.log_seq} already decided it, and an approval is decided once",
            )
        for row, decision in decided:
            if decision.run_id != decision.approval_id:
                report(
                    row.log_seq,
                    row.run_id,
                    row.kind,
                    f"a decision record is kept under its approval id, but this one decides approval "
                    f"{decision.approval_id} under record id {decision.run_id}",
                )
            self._check_request(row, decision, report)

    def _check_request(self, row: StoredReceipt, decision: ApprovalDecided, report: Report) -> None:
        found = self.requests.get(decision.request_link)
        if found is None and self._load(decision.request_run):
            found = self.requests.get(decision.request_link)
        if found is None:
            whose = f"run {decision.request_run}"
            if decision.request_run not in self.openings:
                whose += f", which is not in {self.where},"
            report(
                row.log_seq,
                row.run_id,
                row.kind,
                f"its request_link {decision.request_link[:16]}… names no ApprovalRequested receipt of {whose} "
                "so it decides no request that was made",
            )
            return
        request_row, request = found
        differences = [
            f"{name} {theirs!r} where the request (receipt {request_row.log_seq}) has {ours!r}"
            for name, theirs, ours in (
                ("request_run", decision.request_run, request.run_id),
                ("approval_id", decision.approval_id, request.approval_id),
                ("call", decision.call, request.call),
                ("operation", decision.operation, request.operation),
                ("args_sha256", decision.args_sha256, request.args_sha256),
            )
            if theirs != ours
        ]
        if differences:
            report(
                row.log_seq,
                row.run_id,
                row.kind,
                f"it does not decide the request its request_link names: {'; '.join(differences)}",
            )

    # -- a resumed run continues the paused run under that decision -------------------------

    def _check_resume(self, row: StoredReceipt, opened: Opened, report: Report) -> None:
        def find(problem: str) -> None:
            report(row.log_seq, row.run_id, row.kind, problem)

        if opened.resumes is None or opened.approval_id is None or opened.approval_link is None:
            find(
                "a resumed run names the run it resumes, the approval and its decision's link; this one names "
                f"resumes={opened.resumes!r}, approval_id={opened.approval_id!r}, "
                f"approval_link={opened.approval_link!r}"
            )
            return
        approval_id, paused = opened.approval_id, opened.resumes
        decided = self.decisions.get(approval_id)
        if not decided and self._load(approval_id):
            decided = self.decisions.get(approval_id)
        if not decided:
            find(f"it resumes under approval {approval_id}, whose decision is not in {self.where}")
        else:
            linked = [(r, d) for r, d in decided.values() if r.link == opened.approval_link]
            if not linked:
                seqs = ", ".join(str(log_seq) for log_seq in sorted(decided))
                find(
                    f"its approval_link {opened.approval_link[:16]}… is not the link of the decision on approval "
                    f"{approval_id} (receipt {seqs})"
                )
            else:
                decision_row, decision = linked[0]
                if decision.request_run != paused:
                    find(
                        f"it resumes run {paused}, but approval {approval_id} was requested in run "
                        f"{decision.request_run} (decision, receipt {decision_row.log_seq})"
                    )
        seal = self.seals.get(paused)
        if seal is None and self._load(paused):
            seal = self.seals.get(paused)
        if seal is None:
            there = "was never sealed" if paused in self.openings else f"is not in {self.where}"
            find(f"the run it resumes, {paused}, {there}: only a run sealed paused can be resumed")
        elif seal.status != "paused" or seal.approval_id != approval_id:
            find(
                f"the run it resumes, {paused}, is sealed {seal.status} with approval {seal.approval_id} "
                f"(receipt {seal.log_seq}), not paused for approval {approval_id}"
            )
        original = self.openings.get(paused)
        if original is None:
            return  # reported above: the paused run is missing or never sealed
        if opened.program_sha256 != original.program_sha256:
            find(
                f"it runs program sha256 {opened.program_sha256[:16]}…, not the paused run's "
                f"{original.program_sha256[:16]}… (receipt {original.log_seq})"
            )
        if (opened.logical_run_id or opened.run_id) != original.logical_run_id:
            find(
                f"its logical run id {opened.logical_run_id!r} is not the paused run's {original.logical_run_id!r} "
                f"(receipt {original.log_seq}): write idempotency keys would change along the chain"
            )
