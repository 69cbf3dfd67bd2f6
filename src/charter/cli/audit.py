"""`charter audit ...`: list, show, verify, export and replay logged runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from charter.audit import (
    ApprovalRequested,
    Asked,
    Attempted,
    AuditLog,
    CheckedRun,
    Concluded,
    Decision,
    Opened,
    Outcome,
    PublicKey,
    Receipt,
    RunFilter,
    RunRecord,
    RunSummary,
    Sealed,
    Verification,
    check_run,
    export_run,
    lookup_lines,
    read_public_key,
    verify_bundle,
    verify_log,
)
from charter.audit._approval_records import chain_of, resolve_approval, resumed_by, sealed_approval
from charter.audit._checkpoints import check_checkpoints, checkpoint_line, current_heads, with_findings
from charter.audit.receipts import Opening
from charter.cli._audit_approvals import (
    chain_findings,
    guest_line,
    request_line,
    resumed_from,
    say_story,
    show_approval,
    story,
)
from charter.cli._output import fail, out, print_json, safe_text, say, shown, source_lines
from charter.contract._quotas import amount_text
from charter.errors import CharterError, RunNotFound, UsageError
from charter.status import STATUSES

app = typer.Typer(help="Read, verify, export and replay the audit log of runs.", no_args_is_help=True)

RunArg = Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _log(keyring: Path | None = None) -> AuditLog:
    return AuditLog(keyring=keyring)


def _intent(opened: Opening) -> str:
    if isinstance(opened, Asked):
        return shown(opened.intent)
    if opened.parent is not None:
        return f"attempt {opened.attempt} of {opened.parent[:12]}: {shown(opened.intent)}"
    return shown(opened.intent) if opened.intent is not None else "(program supplied by caller)"


@app.command("list")
def list_(
    contract: Annotated[str | None, typer.Option(metavar="NAME", help="Only runs under this contract.")] = None,
    status: Annotated[
        str | None, typer.Option(metavar="STATUS", help=f"Only runs with this status: {', '.join(STATUSES)}.")
    ] = None,
    cause: Annotated[
        str | None,
        typer.Option(metavar="CAUSE", help="Only runs with this cause: an outcome (timeout...) or a gate code."),
    ] = None,
    principal: Annotated[str | None, typer.Option(metavar="ID", help="Only runs of this principal.")] = None,
    since: Annotated[
        str | None, typer.Option(metavar="WHEN", help=f"Only runs opened since WHEN: {SINCE_FORMS}.")
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help=f"Show at most N runs (1 to {MAX_LIMIT}).")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Runs in the log, newest first (from the runs index; `audit verify` checks the receipts)."""
    if status is not None and status not in STATUSES:
        fail(f"--status {status!r} is not a run status; the statuses are {', '.join(STATUSES)}")
    try:
        filters = RunFilter(
            contract=contract, status=status, cause=cause, principal=principal, since=parse_since(since)
        )
        if not 1 <= limit <= MAX_LIMIT:
            raise UsageError(f"--limit {limit} is out of range: give a number of runs from 1 to {MAX_LIMIT}")
        log = _log()
        runs = log.list_runs(filters, limit=limit)
    except CharterError as error:
        fail(error)
    if as_json:
        print_json([msgspec.to_builtins(r) for r in runs])
        return
    if not runs:
        say("no runs match" if any((contract, status, cause, principal, since)) else "no runs in the log")
        return
    # Two lines a run, no table: ids, versions and principals are never cut, at any width;
    # only what follows the principal on the second line (cause, denial, intent) is shortened.
    width = max(out.width, 40)
    width_status = max(11, *(len(run.status) for run in runs))
    say(f"{'RUN':<12}  {'OPENED (UTC)':<16}  {'STATUS':<{width_status}}  CONTRACT@VERSION", "bold")
    say("  PRINCIPAL · CAUSE · FIRST DENIAL · INTENT", "bold")
    for run in runs:
        opened = run.opened_at[:16].replace("T", " ")
        status, detail = run.status, [f"cause {run.cause}"] if run.cause else []
        if run.status == "awaiting_approval":  # what it waits for, first: `audit show <approval id>` shows it
            # The index keeps a paused run's own status; whether it was resumed since is read
            # from the signed receipts (an Opened naming the approval), as `audit show` does.
            waiting = sealed_approval(log, run.run_id)
            resumer = resumed_by(log, waiting) if waiting else None
            if waiting is None or resumer is None:
                detail.insert(0, f"approval {waiting[:12]}" if waiting else "approval unknown")
            else:
                status = "resumed"
                detail.insert(0, f"approval {waiting[:12]}: resumed: {resumer.run_id[:12]} {resumer.status}")
        say(f"{run.run_id[:12]}  {opened}  {status:<{width_status}}  {run.contract}@{run.version}")
        if run.denial_code:
            detail.append(f"first denial {run.denial_code} ({run.denial_operation})")
        rest = " · ".join([*detail, _listed_intent(run)])
        room = width - len(shown(run.principal)) - 5
        if len(rest) > room:
            rest = rest[: max(room - 1, 0)] + "…"
        say(f"  {shown(run.principal)} · {rest}")
    if len(runs) == limit:
        say(f"(the newest {limit}; --limit N shows more)", "dim")


def _listed_intent(run: RunSummary) -> str:
    if run.kind == "intent":
        return f"intent: {shown(run.intent)}"
    if run.parent is not None:
        return f"attempt of {run.parent[:12]}: {shown(run.intent)}"
    return shown(run.intent) if run.intent is not None else "(program supplied by caller)"


SINCE_FORMS = "an ISO-8601 date or time (UTC unless it names an offset), today, yesterday, or an age: 30m, 24h, 7d, 2w"
_AGES = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


MAX_LIMIT = 100_000  # runs one `audit list` shows; page further with --since


def parse_since(since: str | None, now: datetime | None = None) -> str | None:
    """--since as the ISO-8601 UTC time openings are stamped with (so text order is time order).

    Raises UsageError naming the accepted forms."""
    if since is None:
        return None
    now = now or datetime.now(UTC)
    text = since.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    when: datetime | None = None
    if text in ("today", "yesterday"):
        when = midnight - timedelta(days=1 if text == "yesterday" else 0)
    elif len(text) > 1 and text[-1] in _AGES and text[:-1].isdigit():
        try:
            when = now - timedelta(**{_AGES[text[-1]]: int(text[:-1])})
        except (OverflowError, ValueError):  # an age beyond the calendar: no such time
            raise UsageError(f"--since {since!r} reaches before the year 1; give {SINCE_FORMS}") from None
    else:
        try:
            when = datetime.fromisoformat(since.strip())
        except ValueError:
            when = None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    if when is None:
        raise UsageError(f"--since {since!r} is not a time; give {SINCE_FORMS}")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _summary(run: RunRecord) -> dict[str, Any]:
    o = run.opened
    return {
        "run_id": o.run_id,
        "opened_at": o.at,
        "contract": o.contract,
        "version": o.version,
        "contract_sha256": o.contract_sha256,
        "principal": o.principal,
        "intent": o.intent,
        "status": run.status,
        "cause": run.cause,
    }


@app.command()
def show(run: RunArg, as_json: JsonOption = False) -> None:
    """The program with line numbers beside the timeline of its receipts and its conclusion.

    Every receipt's own signature and links are checked first; a receipt that fails is shown
    marked UNVERIFIED (in --json: "verified": false) and the command exits 1.
    """
    try:
        log = _log()
        try:
            log.resolve(run)
        except RunNotFound:  # an approval id shows the approval's record
            approval_id = resolve_approval(log, run)
            if approval_id is None:
                raise
            show_approval(log, approval_id, as_json)
            return
        checked = check_run(log, run)
    except CharterError as error:
        fail(error)
    if as_json:
        view = _checked_json(log, checked)
        print_json(view)
        nested = [view, *view.get("program_runs", ())]
        story_ok = not any(part.get("story_findings") for part in nested)
    elif isinstance(checked.record.opened, Asked):
        story_ok = _show_intent(log, checked, checked.record.opened)
    else:
        story_ok = _show_program(log, checked)
    if not checked.ok or not story_ok:
        raise typer.Exit(1)


def _checked_json(log: AuditLog, checked: CheckedRun) -> dict[str, Any]:
    record = checked.record
    # Exception texts withheld from the program and the receipts: this is the local operator.
    withheld = log.backend_errors(record.run_id)
    view: dict[str, Any] = {
        **_summary(record),
        "verified": checked.verification.ok,
        "receipts": [
            {**json.loads(_encode(r)), "verified": r.log_seq not in checked.unverified} for r in record.receipts
        ],
        "unverified": [{"log_seq": k, "problems": v} for k, v in sorted(checked.unverified.items())],
        "findings": [str(f) for f in checked.verification.findings],
        "backend_errors": [msgspec.to_builtins(e) for e in withheld],
    }
    if checked.programs:
        view["program_runs"] = [_checked_json(log, p) for p in checked.programs]
    chain = chain_of(log, record.run_id) if isinstance(record.opened, Opened) else None
    if chain is not None:  # a run that paused for approval or resumes one: the chain's story
        view["chain"] = [r.run_id for r in chain.runs]
        view["story"] = story(chain)
        view["story_findings"] = chain_findings(log, chain)
    return view


def _mark(checked: CheckedRun, receipt: Receipt) -> str:
    """ "UNVERIFIED " before a receipt that failed its own check, else ""."""
    return "UNVERIFIED " if receipt.log_seq in checked.unverified else ""


def _say_unverified(checked: CheckedRun) -> None:
    """What could not be vouched for, and that nothing above about it is to be believed."""
    decoded = {r.log_seq for r in checked.record.receipts}
    for log_seq, found in sorted(checked.unverified.items()):
        gone = "" if log_seq in decoded else " (not shown: it does not decode)"
        for problem in found:
            say(f"UNVERIFIED receipt {log_seq}{gone}: {problem}", "bold red")
    for finding in checked.verification.findings:
        if finding.log_seq is None:
            say(f"UNVERIFIED: {finding.problem}", "bold red")
    if not checked.verification.ok:
        say(
            f"run {checked.record.run_id} is NOT VERIFIED: what the marked receipts say may be forged; "
            "run `charter audit verify`",
            "bold red",
        )


def _listing(program: str) -> Table:
    """Numbered lines; a long line wraps inside its column, so the gutter stays clear."""
    listing = Table.grid(padding=(0, 2))
    listing.add_column(justify="right", style="dim", no_wrap=True)
    listing.add_column(overflow="fold")
    for number, line in enumerate(source_lines(program), start=1):
        listing.add_row(str(number), safe_text(line))
    return listing


def _timeline(checked: CheckedRun) -> Table:
    """One row a receipt: its #seq in a gutter of its own, then what it says, folded (never cut)
    at the column's width; a decision's verdict starts a line of its own, so it is never split."""
    record = checked.record
    timeline = Table.grid(padding=(0, 1))
    timeline.add_column(justify="right", no_wrap=True)
    timeline.add_column(overflow="fold")
    for receipt in record.receipts[1:]:
        line, style = _timeline_line(receipt)
        mark = _mark(checked, receipt)
        text = "\n".join(mark + part for part in line.split("\n"))
        timeline.add_row(f"#{receipt.seq}", safe_text(text, style=("bold red" if mark else style) or ""))
    if checked.verification.ok:  # a record that failed its check supports no diagnosis
        for decision in record.in_doubt():
            timeline.add_row(
                "",
                Text(
                    f"call {decision.call} {decision.operation}: OUTCOME UNKNOWN (allowed, no outcome recorded; "
                    "never re-run automatically)",
                    style="bold red",
                ),
            )
    return timeline


def _show_program(log: AuditLog, checked: CheckedRun) -> bool:
    """Prints the run; False when the approval chain it belongs to fails verification."""
    record = checked.record
    o = record.opened
    assert isinstance(o, Opened)
    mark = _mark(checked, o)
    say(f"{mark}run {o.run_id}", "bold red" if mark else "bold")
    say(f"intent:    {_intent(o)}")
    say(f"principal: {shown(o.principal)} (scopes: {shown(', '.join(o.scopes)) or 'none'})")
    if o.attributes:
        say(f"attributes: {_encode(o.attributes)}")
    say(f"contract:  {o.contract} {o.version} sha256 {o.contract_sha256[:16]}…")
    say(f"opened:    {o.at}  clock {o.clock}  seed {o.seed}")
    resumes = resumed_from(o)
    if resumes is not None:
        say(resumes)
    if o.inputs:  # a secret input's value is its keyed digest here: the log never held the value
        listed = (f"{k}=<secret {v[:24]}…>" if k in o.secret_inputs else f"{k}={v!r}" for k, v in o.inputs.items())
        say(f"inputs:    {', '.join(listed)}")
    if out.width >= _SIDE_BY_SIDE:
        grid = Table(show_header=True, expand=True)
        grid.add_column("program")
        grid.add_column("receipts")
        grid.add_row(_listing(o.program), _timeline(checked))
        out.print(grid)
    else:  # too narrow for two columns: the program, then the receipts, each at full width
        say("program:", "bold")
        out.print(_listing(o.program), soft_wrap=False)
        say("receipts:", "bold")
        out.print(_timeline(checked), soft_wrap=False)
    for kept in log.backend_errors(record.run_id):
        say(f"withheld from call {kept.call} {kept.operation}: {kept.error_type}: {shown(kept.message)}", "red")
    _say_unverified(checked)
    say(_status_line(checked), "bold")
    return say_story(log, record.run_id)


_SIDE_BY_SIDE = 120  # columns below which `show` stacks the program above its receipts


def _status_line(checked: CheckedRun) -> str:
    record = checked.record
    if not checked.verification.ok:
        return "status: not vouched for (receipts of this run failed verification)"
    never = ": the process ended during the run, and nothing resumes it" if record.sealed is None else ""
    return f"status: {record.status}" + (f" (cause {record.cause})" if record.cause else "") + never


def _show_intent(log: AuditLog, checked: CheckedRun, asked: Asked) -> bool:
    """Prints the intent run; False when the approval chain of its program run fails verification."""
    record = checked.record
    programs = {p.record.run_id: p for p in checked.programs}
    mark = _mark(checked, asked)
    say(f"{mark}intent run {asked.run_id}", "bold red" if mark else "bold")
    say(f"intent:    {shown(asked.intent)}")
    say(f"principal: {shown(asked.principal)} (scopes: {shown(', '.join(asked.scopes)) or 'none'})")
    if asked.attributes:
        say(f"attributes: {_encode(asked.attributes)}")
    say(f"contract:  {asked.contract} {asked.version} sha256 {asked.contract_sha256[:16]}…")
    say(f"model:     {asked.model}  {_encode(asked.settings)}")
    for receipt in record.receipts[1:]:
        mark = _mark(checked, receipt)
        if isinstance(receipt, Attempted):
            say()
            usage = ", ".join(f"{k} {v}" for k, v in (receipt.usage or {}).items())
            say(
                f"{mark}attempt {receipt.attempt}: {receipt.model}, {receipt.api_tries} request(s); {usage}",
                "bold red" if mark else "bold",
            )
            say(
                f"  prompt sha256 {receipt.prompt_sha256[:16]}…, "
                f"contract block sha256 {receipt.contract_block_sha256[:16]}…"
            )
            if receipt.api_error:
                say(f"  no answer: {shown(receipt.api_error)}", "red")
            for finding in receipt.check:
                say(f"  static check: {finding}", "yellow")
            if receipt.writes_closed:
                say(f"  writes closed: {receipt.writes_closed}", "yellow")
            if receipt.program is not None:
                out.print(Padding(_listing(receipt.program), (0, 0, 0, 2)), soft_wrap=False)
            program_run = programs.get(receipt.program_run or "")
            if program_run is not None:
                say(f"  ran as program run {program_run.record.run_id}:")
                out.print(Padding(_timeline(program_run), (0, 0, 0, 4)), soft_wrap=False)
                _say_unverified(program_run)
                say(f"    {_status_line(program_run)}")
        elif isinstance(receipt, Concluded):
            say()
            say(f"{mark}attempts: {', '.join(receipt.attempts)}", "bold red" if mark else None)
            detail = receipt.answer if receipt.status == "done" else receipt.reason
            say(f"{mark}conclusion: {receipt.status}: {shown(detail)}", "bold red" if mark else "bold")
    _say_unverified(checked)
    say(_status_line(checked), "bold" if record.sealed is not None and checked.ok else "bold red")
    if checked.programs:  # the program run that paused, and its continuation
        return say_story(log, checked.programs[-1].record.run_id)
    return True


def _timeline_line(receipt: Receipt) -> tuple[str, str | None]:
    if isinstance(receipt, Decision):
        head = f"call {receipt.call} {receipt.operation}({shown(receipt.arguments or '…')})"
        if receipt.secret_params:  # their values are keyed digests (gate._secrets)
            head += f" [secret: {', '.join(receipt.secret_params)}]"
        if receipt.masked_inputs:  # they held a secret input of the run, recorded as its digest
            head += f" [secret input in: {', '.join(receipt.masked_inputs)}]"
        head += "".join(  # money as the denial says it (1284.20), not in the cents the gate counts
            f"\n   quota {q.id} {q.key}: {amount_text(q.total, q.money)}+{amount_text(q.amount, q.money)} of "
            f"{amount_text(q.max, q.money)}/{q.window}"
            for q in receipt.quotas
        )
        head += f", {guest_line(receipt.line)}" if receipt.line is not None else ""
        head = "\n  ".join([head, *lookup_lines(receipt)])
        if receipt.provenance is not None:  # per from: param, where its value was seen
            seen = "; ".join(f"{p} <- {'|'.join(labels) or 'nowhere'}" for p, labels in receipt.provenance.items())
            head += f"\n   provenance: {seen}"
        under = f" (approval {receipt.approval_id})" if receipt.approval_id else ""  # a resumed run's call
        if receipt.decision == "ALLOW":
            return f"{head}\n-> ALLOW {receipt.code}{under}", "green"
        return f"{head}\n-> DENY {receipt.code}{under}: {shown(receipt.message)}", "yellow"
    if isinstance(receipt, ApprovalRequested):
        return request_line(receipt)
    if isinstance(receipt, Outcome):
        if receipt.status in ("failed", "unknown"):  # unknown: sent, no answer: in doubt
            return f"  outcome: {receipt.status} {receipt.code}: {shown(receipt.message)}", "red"
        result = receipt.result or ""
        dropped = f" (dropped: {', '.join(receipt.dropped)})" if receipt.dropped else ""
        return f"  outcome: {receipt.status} {shown(result[:160])}{dropped}", None
    if isinstance(receipt, Sealed):
        outcome = json.loads(receipt.outcome)
        detail = outcome.get("answer") or outcome.get("reason") or outcome.get("error_message") or ""
        return f"sealed: {receipt.status}: {shown(detail)} ({receipt.calls} calls, {receipt.wall_ms:.1f} ms)", "bold"
    return type(receipt).__name__, None


def _encode(value: object) -> str:
    return msgspec.json.encode(value).decode("utf-8")


def _parse_head(head: str | None) -> tuple[int, str] | Path | None:
    """--head as LOG_SEQ:LINK (as `audit verify` prints it), else the checkpoint file it names."""
    if head is None:
        return None
    seq, _, link = head.partition(":")
    if seq.isdigit() and len(link) == 64 and all(c in "0123456789abcdef" for c in link):
        return int(seq), link
    path = Path(head)
    if not path.is_file():
        raise UsageError(
            f"--head {head!r} is neither LOG_SEQ:LINK (as `audit verify` prints it) nor a checkpoint file "
            "(checkpoints.jsonl, or what `charter audit head` printed)"
        )
    return path


@app.command()
def verify(
    run: Annotated[str | None, typer.Argument(help="One run (id or prefix); default: the whole log.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Verify the whole log (the default without RUN).")] = False,
    bundle: Annotated[Path | None, typer.Option(help="Verify an exported bundle instead of the log.")] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Trust only this key file (64 hex digits).")
    ] = None,
    every_signature: Annotated[
        bool, typer.Option("--every-signature", help="Also verify each receipt's own signature (slower).")
    ] = False,
    head: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|LOG_SEQ:LINK",
            help="A checkpoint file (or `audit head` output): each stream's latest checkpoint must still be in "
            "the log; or LOG_SEQ:LINK from an earlier verify, which the log must still contain.",
        ),
    ] = None,
    keyring: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="The keyring to trust (default: $CHARTER_KEYRING, else keys/keyring.yaml)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check signatures, hash chains and the head; exit 1 naming every broken record."""
    streams = 0  # writer streams of a PostgreSQL log
    try:
        trusted: PublicKey | None = read_public_key(public_key) if public_key else None
        expected = _parse_head(head)
        if bundle is not None:
            report = verify_bundle(bundle, trusted)
        else:
            log = _log(keyring)
            keys = {trusted.key_id: trusted} if trusted else log.trusted_keys()
            target = None if all_ else run
            report = verify_log(
                log,
                keys,
                run_id=target,
                every_signature=every_signature,
                expect_head=expected if isinstance(expected, tuple) else None,
            )
            if isinstance(expected, Path):  # signed heads kept outside the log (charter.audit._checkpoints)
                with_findings(report, check_checkpoints(expected, log, keys))
            streams = len(log.stream_heads())
    except CharterError as error:
        fail(error)
    _report(report, as_json, streams=streams)
    if not report.ok:
        raise typer.Exit(1)


def _report(report: Verification, as_json: bool, *, streams: int = 0) -> None:
    """`streams`: the writer streams of a PostgreSQL log (0 on SQLite), whose heads the one
    `head` line does not cover: the operator is pointed at `charter audit head` instead."""
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "receipts": report.receipts,
                "runs": report.runs,
                "sealed": report.sealed,
                "approvals": report.approvals,
                "signatures_checked": report.signatures_checked,
                "interrupted": report.incomplete,
                "in_doubt": [{"run_id": r, "call": c, "operation": o} for r, c, o in report.in_doubt],
                "undiagnosed": report.undiagnosed,
                "head": f"{report.head[0]}:{report.head[1]}" if report.head else None,
                "writer_streams": streams,
                "findings": [str(f) for f in report.findings],
            }
        )
        return
    for finding in report.findings:
        say(f"BROKEN {finding}", "red")
    for run_id in report.incomplete:
        say(f"interrupted: run {run_id} was never sealed (the process ended during the run)", "yellow")
    for run_id, call, operation in report.in_doubt:
        say(f"in doubt: run {run_id} call {call} {operation} was allowed; its outcome is unknown", "yellow")
    if report.undiagnosed:
        say(
            f"not diagnosed: {len(report.undiagnosed)} run(s) ({', '.join(r[:12] for r in report.undiagnosed[:5])}"
            f"{'…' if len(report.undiagnosed) > 5 else ''}): their receipts or the log's order failed the checks "
            "above, so nothing (interrupted, in doubt) is concluded from what they say",
            "yellow",
        )
    verdict = "ok" if report.ok else f"FAILED ({len(report.findings)} problems)"
    say(
        f"{verdict}: {report.receipts} receipts in {report.runs} runs ({report.sealed} sealed)"
        + (f" and {report.approvals} approval decision(s)" if report.approvals else "")
        + f", {report.signatures_checked} signatures checked",
        "green" if report.ok else "red",
    )
    if streams:
        say(
            f"{streams} writer stream(s): keep every stream's head with `charter audit head > kept.jsonl` "
            "(signed); `--head kept.jsonl` checks that the log still holds them all"
        )
    elif report.head is not None:
        say(f"head {report.head[0]}:{report.head[1]}  (keep it; `--head` checks that the log still holds it)")


@app.command()
def head(keyring: Annotated[Path | None, typer.Option(metavar="PATH", help="The keyring file.")] = None) -> None:
    """The log's current heads, one signed JSON line per stream (as in checkpoints.jsonl): keep
    them with a backup; `audit verify --head FILE` checks that a restored log still holds them."""
    try:
        log = _log(keyring)
        heads = current_heads(log)
        if not heads:
            raise UsageError(f"the audit log at {log.path} holds no receipt yet: it has no head")
        key = log.signing_key
        lines = [checkpoint_line(h, key) for h in heads]
    except CharterError as error:
        fail(error)
    out.file.write("".join(lines))


@app.command()
def export(
    run: RunArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """The run as a JSONL bundle with the public key, verifiable by anyone without this log."""
    try:
        lines = export_run(_log(), run)
    except CharterError as error:
        fail(error)
    text = "\n".join(lines) + "\n"
    if output is None:
        out.file.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        say(f"wrote {len(lines) - 1} receipts to {output}")


@app.command()
def replay(run: RunArg, as_json: JsonOption = False) -> None:
    """Re-run the logged program against its recorded results, clock and seed; compare."""
    from charter.registry import Registry
    from charter.replay import program_runs_of, replay_run
    from charter.sandbox import Sandbox

    try:
        log = _log()
        # A replay compares against recorded results: it draws no conclusion from a record it
        # cannot vouch for (a receipt whose signature or links fail), as show and verify do not.
        checked = check_run(log, run)
        for part in (checked, *checked.programs):
            if part.unverified:
                seqs = ", ".join(f"#{seq}" for seq in sorted(part.unverified))
                fail(
                    f"run {part.record.run_id} has receipts that fail their check (log {seqs}); replay compares "
                    "against recorded results, so it does not replay a record it cannot vouch for "
                    f"(charter audit verify {part.record.run_id[:12]} says what failed)"
                )
        record = checked.record
        # An intent run is replayed as the program runs its attempts started.
        records = [log.run(r) for r in program_runs_of(record)] if isinstance(record.opened, Asked) else [record]
        contract = Registry().get(record.opened.contract, record.opened.version)
        sandbox = Sandbox(pool_size=0)
        secret_key = log.existing_secret_key()
        reports = [replay_run(r, contract, sandbox, log=log, secret_key=secret_key) for r in records]
    except (CharterError, ValueError) as error:
        fail(str(error))
    if as_json:
        shown = [{"identical": r.identical, **json.loads(_encode(r))} for r in reports]
        print_json(shown if isinstance(record.opened, Asked) else shown[0])
    else:
        for report in reports:
            if len(reports) > 1:
                say(f"program run {report.run_id}", "bold")
            say(f"calls: recorded {report.recorded_calls}, replayed {report.replayed_calls}")
            if report.quotas_checked:
                say(f"quota totals recounted from the log: {report.quotas_checked} as recorded")
            if report.secret_inputs:
                say(
                    f"secret inputs {', '.join(report.secret_inputs)} were replayed as their digests (the log never "
                    "held their values): a call whose arguments carried one diverges",
                    "yellow",
                )
            for divergence in report.divergences:
                say(f"diverged: {divergence}", "red")
            for note in report.notes:
                say(f"not compared: {note}")
            if report.lookups:
                say("lookups the gate saw (as recorded: replay answers from the record and reads no backend):")
                for line in report.lookups:
                    say(f"  {line}")
            same = report.recorded_outcome == report.replayed_outcome
            ended = json.loads(report.replayed_outcome)
            paused = (
                f" (paused for approval {ended['approval_id']})" if same and ended.get("status") == "paused" else ""
            )
            say(f"conclusion: {'identical' if same else 'DIFFERENT'}{paused}", "green" if same else "red")
            if not same:
                say(f"  recorded: {report.recorded_outcome}")
                say(f"  replayed: {report.replayed_outcome}")
        identical = all(r.identical for r in reports)
        say("replay identical" if identical else "replay differs", "bold")
    if not all(r.identical for r in reports):
        raise typer.Exit(1)
