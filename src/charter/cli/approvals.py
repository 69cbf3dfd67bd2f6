"""`charter approvals ...`: list, show, approve, deny and resume calls paused for a human.

A call whose approval rule held paused its program run (status awaiting_approval) and left
an ApprovalRequested receipt in the audit log. These commands work on that log directly, as
the local operator (no server needed): the decision is signed into the log by
`charter.approvals.ApprovalStore` (four eyes: the approver holds the contract's approver
scope and is never the requester, compared by confusable skeleton), and the run resumes in
this process unless --no-resume (a `charter serve` on the same log resumes it as well: the
per-approval resume lock makes the two safe together).

Exit status: 0 done; for a resumed run, its status as `charter exec` reports it (2 refused,
3 failed, including a resume stopped IN_DOUBT; 4 backend unavailable; 5 awaiting another
approval); 1 a usage error; 8 the decision was refused (SELF_APPROVAL, FORBIDDEN_SCOPE,
APPROVAL_EXPIRED, ALREADY_DECIDED); 9 APPROVAL_NOT_FOUND; 10 RESUME_IN_PROGRESS (another process
holds the resume); 11 TAMPERED (the request's receipts, or the records a resume rests on, fail
verification: nothing is decided or run).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import msgspec
import typer
from rich.table import Table
from rich.text import Text

from charter.audit.receipts import LookupSeen, Observed, QuotaSeen
from charter.cli._output import out, print_json, safe_text, say, shown, source_lines, warn
from charter.errors import CharterError

if TYPE_CHECKING:
    from charter.approvals import ApprovalStore, ApprovalView
    from charter.audit import AuditLog
    from charter.principal import Principal
    from charter.runner import Execution

__all__ = ["EXIT_CODES", "app", "hint_for"]

EXIT_HELP = (
    "Exit status: 0 done; after a resume, the resumed run's status as charter exec reports it (2 refused; "
    "3 failed, a resume stopped IN_DOUBT included; 4 backend unavailable; 5 awaiting another approval); "
    "1 usage error; 8 decision refused (SELF_APPROVAL, FORBIDDEN_SCOPE, APPROVAL_EXPIRED, ALREADY_DECIDED); "
    "9 APPROVAL_NOT_FOUND; 10 RESUME_IN_PROGRESS; 11 TAMPERED (nothing is decided or run)."
)

app = typer.Typer(
    help="Approve or deny calls paused for a human's approval, and resume their runs.",
    epilog=EXIT_HELP,
    no_args_is_help=True,
)

IdArg = Annotated[str, typer.Argument(metavar="ID", help="An approval id, or a unique prefix of one.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ReasonOption = Annotated[
    str, typer.Option("--reason", "-r", metavar="TEXT", help="Why (signed into the decision; at most 2000 characters).")
]
PrincipalOption = Annotated[
    str, typer.Option("--principal", "-p", metavar="ID", help="Who decides: never the principal that asked.")
]
ScopeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scope",
        "-s",
        metavar="SCOPE",
        help="A scope the approver holds (the request names the one it needs, e.g. payments:approve); repeat for "
        "more. Default: the approver's scopes in the token file.",
    ),
]
NoResumeOption = Annotated[
    bool,
    typer.Option(
        "--no-resume", help="Only record the decision; a server on the same log (or `approvals resume`) resumes."
    ),
]

STATUSES = ("pending", "approved", "denied", "expired", "tampered")

# Exit status per reason code of an approval error (module docstring); 1 is a usage error.
EXIT_CODES = {
    "SELF_APPROVAL": 8,
    "FORBIDDEN_SCOPE": 8,
    "APPROVAL_EXPIRED": 8,
    "ALREADY_DECIDED": 8,
    "APPROVAL_NOT_FOUND": 9,
    "RESUME_IN_PROGRESS": 10,
    "TAMPERED": 11,
}

_HEX_ID = re.compile(r"[0-9a-f]{32}\Z")


def hint_for(code: str, approval_id: str, scope: str | None = None) -> str:
    """How to act on an approval error with reason `code` (one sentence, a command where one helps)."""
    short = approval_id[:12] or "ID"
    needed = scope or "the request's approver scope"
    return {
        "SELF_APPROVAL": f"four eyes: another principal holding {needed} must decide it "
        f"(charter approvals approve {short} --principal OTHER --scope {needed} --reason ...)",
        "FORBIDDEN_SCOPE": f"decide as a principal holding {needed} (--scope {needed}, or a token with it)",
        "APPROVAL_EXPIRED": f"an expired request can only be denied: charter approvals deny {short} --reason ...; "
        "then ask again",
        "ALREADY_DECIDED": f"exactly one decision is kept; see it with charter approvals show {short}",
        "APPROVAL_NOT_FOUND": "charter approvals list shows the requests in this audit log "
        "(CHARTER_HOME selects the log)",
        "TAMPERED": "the audit log's record of this request fails verification, so nothing is decided or run "
        "on it; charter audit verify names the receipts",
        "RESUME_IN_PROGRESS": f"another process is resuming it now; charter approvals show {short} reports the "
        "resumed run once it is sealed",
    }.get(code, "see charter approvals show " + short)


def _refuse(error: CharterError, approval_id: str = "", scope: str | None = None) -> NoReturn:
    """Print an error naming its reason code and how to fix it, and exit non-zero."""
    code = getattr(error, "code", None)
    if isinstance(code, str) and code:
        warn(f"error: {code}: {error}")
        warn(f"  how to fix: {hint_for(code, approval_id, scope)}")
        raise typer.Exit(EXIT_CODES.get(code, 1))
    warn(f"error: {error}")
    raise typer.Exit(1)


def _log() -> AuditLog:
    from charter.audit import AuditLog

    return AuditLog()


def _store(log: AuditLog) -> ApprovalStore:
    from charter.approvals import ApprovalStore

    return ApprovalStore(log)


def _resolve(store: ApprovalStore, given: str) -> str:
    """The full approval id of `given` (an id or a unique prefix); raises ApprovalNotFound."""
    from charter.approvals import ApprovalNotFound

    prefix = given.strip().lower()
    if _HEX_ID.match(prefix):
        return prefix
    if prefix and re.fullmatch(r"[0-9a-f]+", prefix):
        matches = [v.approval_id for v in store.list(limit=100_000) if v.approval_id.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ApprovalNotFound(
                f"approval id prefix {given!r} matches {len(matches)} approvals "
                f"({', '.join(m[:12] for m in matches[:5])}...); give more of the id"
            )
    raise ApprovalNotFound(f"no approval request in the audit log has the id {given!r}")


# -- list ------------------------------------------------------------------------------------


@app.command("list")
def list_(
    contract: Annotated[str | None, typer.Option(metavar="NAME", help="Only requests under this contract.")] = None,
    status: Annotated[
        str | None, typer.Option(metavar="STATUS", help=f"Only requests with this status: {', '.join(STATUSES)}.")
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="Show at most N requests.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Approval requests in the audit log, newest first (expired: pending past its expiry)."""
    if status is not None and status not in STATUSES:
        _usage(f"--status {status!r} is not an approval status; the statuses are {', '.join(STATUSES)}")
    if not 1 <= limit <= 10_000:
        _usage(f"--limit {limit} is out of range: give a number of requests from 1 to 10000")
    try:
        views = _store(_log()).list(contract=contract, status=status, limit=limit)
    except CharterError as error:
        _refuse(error)
    if as_json:
        print_json([msgspec.to_builtins(v) for v in views])
        return
    if not views:
        say("no approval requests match" if contract or status else "no approval requests in the log")
        return
    say(f"{'APPROVAL':<12}  {'REQUESTED (UTC)':<16}  {'STATUS':<8}  CONTRACT@VERSION  OPERATION (CALL)", "bold")
    say("  REQUESTER · REASON · EXPIRES / DECIDED", "bold")
    for view in views:
        requested = view.requested_at[:16].replace("T", " ")
        style = {
            "pending": "yellow",
            "approved": "green",
            "denied": "red",
            "expired": "dim",
            "tampered": "bold red",
        }.get(view.status)
        say(
            f"{view.approval_id[:12]}  {requested:<16}  {view.status:<8}  {shown(view.contract)}@{view.version}  "
            f"{shown(view.operation)} (call {view.call})",
            style,
        )
        if view.decision is not None:
            when = f"{view.decision} by {shown(view.decided_by)} at {(view.decided_at or '')[:16].replace('T', ' ')}"
        else:
            when = f"expires {view.expires[:16].replace('T', ' ')}"
        say(f"  {shown(view.principal)} · {shown(view.reason)} · {when}")
        for finding in view.findings:
            say(f"  UNVERIFIED: {shown(finding)}", "bold red")
    if len(views) == limit:
        say(f"(the newest {limit}; --limit N shows more)", "dim")


def _usage(message: str) -> NoReturn:
    warn(f"error: {message}")
    raise typer.Exit(1)


# -- show ------------------------------------------------------------------------------------


@app.command()
def show(approval: IdArg, as_json: JsonOption = False) -> None:
    """One request: the program with the waiting line marked, the arguments, the rule and its
    reason, the expiry, what the gate read to decide (state, lookups, provenance, quotas), and
    the decision and the resumed run once there are."""
    store = _store(_log())
    try:
        view = store.get(_resolve(store, approval))
    except CharterError as error:
        _refuse(error, approval)
    if as_json:
        print_json(msgspec.to_builtins(view))
        return
    show_view(view)


def _ago(moment: str, now: datetime | None = None) -> str:
    """'in 23 h 59 min' or '2 h 1 min ago' for an ISO UTC time."""
    try:
        at = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    seconds = int((at - (now or datetime.now(UTC))).total_seconds())
    span = abs(seconds)
    days, rest = divmod(span, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d"] if days else []
    if hours or days:
        parts.append(f"{hours} h")
    parts.append(f"{minutes} min")
    text = " ".join(parts[:2])
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def program_listing(program: str, line: int | None) -> Table:
    """The program with numbered lines, `line` marked with '>' and in bold (None: no mark)."""
    listing = Table.grid(padding=(0, 1))
    listing.add_column(no_wrap=True)  # the mark
    listing.add_column(justify="right", style="dim", no_wrap=True)
    listing.add_column(overflow="fold")
    for number, text in enumerate(source_lines(program), start=1):
        waiting = number == line
        listing.add_row(
            Text(">", style="bold yellow") if waiting else "",
            str(number),
            safe_text(text, style="bold yellow" if waiting else ""),
        )
    return listing


def _as(value: Any, kind: Any) -> Any:
    """`value` (a receipt struct, or its builtins from JSON) as msgspec type `kind`."""
    return msgspec.convert(msgspec.to_builtins(value), kind)


def gate_read_lines(observed: Any, lookups: Any, provenance: Any, quotas: Any) -> list[str]:
    """What the gate read to decide the call, one line each: the entity's state, every lookup,
    where each `from:` parameter's value was seen, every quota as counted."""
    from charter.contract._quotas import amount_text

    lines = []
    if observed:
        seen = _as(observed, Observed)
        state = f" in state {seen.state}" if seen.state is not None else ""
        lines.append(f"state:      {seen.entity} {json.dumps(seen.key)}{state} (fingerprint {seen.fingerprint[:12]}…)")
    for item in _as(lookups or (), list[LookupSeen]):
        head = f"lookup:     {item.name} = {item.operation}({item.arguments})"
        if item.error is not None:
            lines.append(f"{head} FAILED: {item.error}")
        elif item.result is None:
            lines.append(f"{head} (result above 4096 bytes: fingerprint {item.fingerprint[:12]}… only)")
        else:
            result = item.result if len(item.result) <= 400 else item.result[:399] + "…"
            lines.append(f"{head}: {result}")
    for param, labels in (_as(provenance, dict[str, list[str]]) if provenance else {}).items():
        lines.append(f"provenance: {param} <- {' | '.join(labels) or 'nowhere (no source seen)'}")
    for quota in _as(quotas or (), list[QuotaSeen]):
        lines.append(
            f"quota:      {quota.id} {quota.key}: {amount_text(quota.total, quota.money)} counted + "
            f"{amount_text(quota.amount, quota.money)} of {amount_text(quota.max, quota.money)} per {quota.window}"
        )
    return lines


def show_view(view: ApprovalView, now: datetime | None = None) -> None:
    """Print one approval request for a reader deciding it."""
    style = {"pending": "bold yellow", "approved": "bold green", "denied": "bold red", "tampered": "bold red"}.get(
        view.status, "bold"
    )
    say(f"approval {view.approval_id}: {view.status}", style)
    if not view.verified:  # the receipts do not vouch for what follows: say so before any of it
        say("UNVERIFIED: the audit log does not vouch for this request; run `charter audit verify`", "bold red")
        for finding in view.findings:
            say(f"  {shown(finding)}", "red")
    say(f"contract:    {view.contract} {view.version} sha256 {view.contract_sha256[:16]}…")
    say(f"requested:   {view.requested_at} by {shown(view.principal)}, run {view.run_id}")
    if view.logical_run_id and view.logical_run_id != view.run_id:
        say(f"             logical run {view.logical_run_id}")
    where = f"line {view.line} (reported by the guest)" if view.line else "line not reported"
    say(f"waiting at:  call {view.call} {shown(view.operation)}, {where}")
    rule = f"rule:        {shown(view.clause)}: {shown(view.reason)}"
    say(rule + (f" (hard boundary {view.boundary})" if view.boundary else ""))
    if view.status in ("pending", "expired"):
        state = "expired unanswered: it can only be denied" if view.status == "expired" else _ago(view.expires, now)
        say(f"expires:     {view.expires} ({state})", "yellow" if view.status == "expired" else None)
    else:
        after = view.expired_unanswered or (view.decided_at or "") > view.expires  # both ISO UTC, one format
        say(f"expiry:      {view.expires} ({'decided after it' if after else 'decided before it'})")
    say(f"who decides: a principal holding {shown(view.approver_scope)}, never {shown(view.principal)} (four eyes)")
    say("arguments:", "bold")
    say(f"  {_pretty(view.arguments)}")
    say(f"  sha256 {view.args_sha256} (the resumed call must hash to exactly this)", "dim")
    say("what the gate read to decide:", "bold")
    read = gate_read_lines(view.observed, view.lookups, view.provenance, view.quotas)
    for line in read or ["(nothing: no entity state, lookups, provenance or quotas for this call)"]:
        say(f"  {shown(line)}")
    say("program:", "bold")
    out.print(program_listing(view.program, view.line), soft_wrap=False)
    if view.line is None:
        say("  (the guest reported no line for this call, so none is marked)", "dim")
    if view.decision is not None:
        expired = " (expired unanswered: denied by charter)" if view.expired_unanswered else ""
        say(
            f"decision:    {view.decision} by {shown(view.decided_by)} at {view.decided_at}{expired}: "
            f"{shown(view.decision_reason)}",
            "green" if view.decision == "approved" else "red",
        )
        if view.resume_run is None:
            say(f"resumed:     not yet (charter approvals resume {view.approval_id[:12]})", "yellow")
        else:
            state = view.resume_status or "running or never sealed"
            say(f"resumed:     run {view.resume_run}: {state} (charter audit show {view.resume_run[:12]})")
    elif view.status == "pending":
        say(
            f"decide:      charter approvals approve|deny {view.approval_id[:12]} --principal ID "
            f"--scope {view.approver_scope} --reason TEXT",
            "dim",
        )


def _pretty(arguments: str | None) -> str:
    if arguments is None:
        return "(the arguments did not decode; only their hash is kept)"
    try:
        return shown(json.dumps(json.loads(arguments), ensure_ascii=False))
    except ValueError:
        return shown(arguments)


# -- approve / deny / resume -----------------------------------------------------------------


def _approver(principal: str, scopes: list[str] | None) -> Principal:
    """The deciding principal: --principal with its --scope, or with its scopes in the token
    file when no --scope is given. Raises InvalidPrincipal for an id that is not valid."""
    from charter.cli.execute import principal_from

    acting = principal_from(principal, scopes)
    if scopes:
        return acting
    known = _token_principal(acting.id)
    return known if known is not None else acting


def _token_principal(principal_id: str) -> Principal | None:
    """The principal as the token file binds it now (its tokens' scopes), None if it has no token."""
    from charter.server import TokenStore

    return TokenStore().principal(principal_id)


def _requester_of(log: AuditLog, store: ApprovalStore, approval_id: str) -> Any:
    """`principal_of` for a resume in this process. When the token file names any principal
    (a server's deployment) it is the judge: a requester with no token is revoked and the
    resume is refused PRINCIPAL_REVOKED. A purely local log (no tokens at all: every run's
    principal was the operator's claim, as with `charter exec`) resumes as the principal the
    paused run recorded; the resumer intersects the scopes either way."""
    from charter.audit import Opened
    from charter.principal import Principal as Made
    from charter.server import TokenStore

    if TokenStore().entries():
        return _token_principal
    opened = log.run(store.get(approval_id).run_id).opened

    def recorded(principal_id: str) -> Principal | None:
        if not isinstance(opened, Opened) or opened.principal != principal_id:
            return None
        return Made(principal_id, frozenset(opened.scopes), dict(opened.attributes or {}))

    return recorded


def resume_in_process(log: AuditLog, approval_id: str) -> Execution:
    """Resume the run paused for `approval_id` here (idempotent: a sealed resume's answer is
    returned again). Raises ApprovalError (RESUME_IN_PROGRESS, APPROVAL_NOT_FOUND...)."""
    from charter.approvals import Resumer
    from charter.registry import Registry
    from charter.runner import Runner

    store = _store(log)
    resumer = Resumer(Runner(audit=log), Registry(), principal_of=_requester_of(log, store, approval_id), store=store)
    return resumer.resume(approval_id)


def _decide(
    decision: Literal["approved", "denied"],
    approval: str,
    reason: str,
    principal: str,
    scope: list[str] | None,
    no_resume: bool,
    as_json: bool,
) -> None:
    log = _log()
    store = _store(log)
    needed: str | None = None
    approval_id = approval
    try:
        approver = _approver(principal, scope)
        approval_id = _resolve(store, approval)
        needed = store.get(approval_id).approver_scope
        receipt, written = store.decide(approval_id, approver, decision, reason)
    except CharterError as error:
        _refuse(error, approval_id, needed)
    verb = "approved" if decision == "approved" else "denied"
    if not as_json:
        again = "" if written else " (already recorded: this decision was given before; nothing new written)"
        if not written and reason != receipt.reason:
            again += f"; the reason given now ({shown(reason)}) was not recorded: a request is decided once"
        say(
            f"approval {approval_id} {verb} by {shown(receipt.approver)}: {shown(receipt.reason)}{again}",
            "green" if written else None,
        )
    if no_resume:
        if as_json:
            print_json({"approval": msgspec.to_builtins(store.get(approval_id)), "newly_decided": written})
        else:
            say(f"not resumed (--no-resume): charter approvals resume {approval_id[:12]}", "dim")
        return
    _resume_and_report(log, store, approval_id, as_json, written)


def _retryable(log: AuditLog, run_id: str, approval_id: str) -> bool:
    from charter.approvals.resume import retryable

    return retryable(log.run(run_id), approval_id)


def _resume_and_report(
    log: AuditLog, store: ApprovalStore, approval_id: str, as_json: bool, written: bool | None = None
) -> None:
    from charter.cli.execute import report

    before = store.get(approval_id)
    sealed_before = before.resume_run if before.resume_status is not None else None
    try:
        execution = resume_in_process(log, approval_id)
    except CharterError as error:
        _refuse(error, approval_id)
    if not as_json:
        if execution.run_id == sealed_before:
            say(f"already resumed as run {execution.run_id} (its conclusion below; nothing ran again)")
        else:
            say(f"resumed as run {execution.run_id}")
        if execution.cause == "BACKEND_UNAVAILABLE" and _retryable(log, execution.run_id, approval_id):
            say(
                "the backend was unavailable before the approved call took effect, so the approval is not spent: "
                f"once the backend is back, run charter approvals resume {approval_id[:12]} again "
                "(a server's resume worker retries it by itself)",
                "yellow",
            )
        if execution.status == "awaiting_approval" and execution.approval_id:
            say(
                f"the run paused again at another call: approval {execution.approval_id} "
                f"(charter approvals show {execution.approval_id[:12]})",
                "yellow",
            )
    extra: dict[str, Any] = {"approval": msgspec.to_builtins(store.get(approval_id))}
    if written is not None:
        extra["newly_decided"] = written
    if execution.approval_id:
        extra["awaiting_approval_id"] = execution.approval_id
    try:
        report(execution, as_json=as_json, **extra)
    except typer.Exit:
        # A resume stopped because the chain's receipts fail verification concludes failed
        # (cause TAMPERED): it exits 11 like a tampered request, so a script branches on one code.
        if execution.cause == "TAMPERED":
            raise typer.Exit(EXIT_CODES["TAMPERED"]) from None
        raise


@app.command()
def approve(
    approval: IdArg,
    reason: ReasonOption,
    principal: PrincipalOption,
    scope: ScopeOption = None,
    no_resume: NoResumeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Approve a paused call, then resume its run here (the call is checked again against the
    contract and the state now, and executes once). Four eyes: never the requester."""
    _decide("approved", approval, reason, principal, scope, no_resume, as_json)


@app.command()
def deny(
    approval: IdArg,
    reason: ReasonOption,
    principal: PrincipalOption,
    scope: ScopeOption = None,
    no_resume: NoResumeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Deny a paused call, then resume its run here: the call is refused APPROVAL_DENIED, which
    the program can catch, so the run concludes. An expired request can still be denied."""
    _decide("denied", approval, reason, principal, scope, no_resume, as_json)


@app.command()
def resume(approval: IdArg, as_json: JsonOption = False) -> None:
    """Resume the run of a decided approval in this process (for a local log without a server,
    or after --no-resume). Idempotent: a resume already sealed is reported, not run again."""
    log = _log()
    store = _store(log)
    approval_id = approval
    try:
        approval_id = _resolve(store, approval)
        view = store.get(approval_id)
    except CharterError as error:
        _refuse(error, approval_id)
    if view.decision is None:
        what = "expired unanswered; it can only be denied" if view.status == "expired" else "not decided yet"
        _usage(
            f"approval {approval_id} is {what}: decide it first "
            f"(charter approvals approve|deny {approval_id[:12]} --principal ID --reason TEXT)"
        )
    _resume_and_report(log, store, approval_id, as_json)


@app.command("webhook-key")
def webhook_key() -> None:
    """Print the key `charter serve --approval-webhook URL` signs its events with (made on first
    use, in keys/webhook.key beside the audit log, mode 0600). A receiver checks the header
    `Charter-Signature: t=UNIX_TIME,v1=HEX` as HMAC-SHA256 over "UNIX_TIME." + body with these 64
    characters (as ASCII bytes) for its key."""
    from charter.approvals import load_or_create_webhook_key

    try:
        key = load_or_create_webhook_key(_log().path.parent / "keys")
    except CharterError as error:
        _refuse(error)
    out.print(key.decode("ascii"), markup=False, highlight=False)
