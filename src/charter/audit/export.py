"""Verifying a log or one run, and exporting a run as a bundle a third party can verify.

A bundle is JSON Lines: a header naming the format, the run and the public keys, then
each receipt exactly as stored (body as text, signature and link as hex). Whoever
receives it needs nothing else: `charter audit verify --bundle FILE [--public-key KEY]`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.audit._approval_records import chain_of, decision_of, resolve_record
from charter.audit.keys import PublicKey
from charter.audit.receipts import Receipt, StoredReceipt, decode_body
from charter.audit.store import AuditLog, RunRecord, record_of
from charter.audit.verify import Finding, Verification, verify_receipts
from charter.errors import AuditError, UsageError

__all__ = ["BUNDLE_FORMAT", "CheckedRun", "check_run", "export_run", "verify_bundle", "verify_log"]

BUNDLE_FORMAT = "charter-audit-bundle/1"


def verify_log(
    log: AuditLog,
    keys: Mapping[str, PublicKey],
    *,
    run_id: str | None = None,
    every_signature: bool = False,
    expect_head: tuple[int, str] | None = None,
) -> Verification:
    """The whole log, or one run (its receipts, and each one's link to the log's previous receipt)."""
    if run_id is None:
        with log.snapshot() as whole:
            return verify_receipts(
                whole.rows,
                keys,
                head=whole.head,
                expect_head=expect_head,
                every_signature=every_signature,
                stream_heads=whole.stream_heads,
            )
    rows = list(log.stored(resolve_record(log, run_id)))
    report = verify_receipts(
        rows,
        keys,
        whole_log=False,
        neighbour=log.stored_at,
        stream_neighbour=log.stored_in_stream,
        every_signature=every_signature,
        fetch=lambda other: list(log.stored(other)),  # the other side of an approval's links
    )
    if rows:
        _check_followed(log, rows[-1], report)
    return report


def _check_followed(log: AuditLog, last: StoredReceipt, report: Verification) -> None:
    """The run's last receipt is the log's head or named by the next receipt's log_prev;
    otherwise receipts after it (its seal, say) were removed. A writer stream's receipt
    (PostgreSQL): the stream's next one names it, or the stream's head row does."""
    try:
        stream_body = decode_body(last.body)
    except ValueError:
        stream_body = None
    if stream_body is not None and stream_body.stream:
        _check_followed_in_stream(log, last, stream_body.stream, stream_body.stream_seq, report)
        return
    after = log.stored_at(last.log_seq + 1)
    if after is None:
        head = log.head()
        if head is None or (head[0] == last.log_seq and head[1] == last.link):
            return
        problem = (
            f"no receipt {last.log_seq + 1} follows this run's last one, yet the log's head names receipt "
            f"{head[0] if head else None}: receipts after it were removed"
        )
    else:
        try:
            if decode_body(after.body).log_prev == last.link:
                return
        except ValueError:  # msgspec's errors are ValueErrors; the next receipt is reported in its own run
            pass
        problem = f"receipt {after.log_seq} does not name this run's last receipt: receipts after it were removed"
    _removed_after(last, problem, report)


def _check_followed_in_stream(
    log: AuditLog, last: StoredReceipt, stream: str, stream_seq: int, report: Verification
) -> None:
    after = log.stored_in_stream(stream, stream_seq + 1)
    if after is None:
        head = log.stream_heads().get(stream)
        if head is not None and (head.stream_seq, head.link) == (stream_seq, last.link):
            return
        shown = f"receipt {head.stream_seq}" if head is not None else "no receipt (no head row)"
        problem = (
            f"no receipt {stream_seq + 1} of stream {stream} follows this run's last one, yet the stream's head "
            f"names {shown}: receipts after it were removed"
        )
    else:
        try:
            if decode_body(after.body).log_prev == last.link:
                return
        except ValueError:
            pass
        problem = (
            f"receipt {after.log_seq} of stream {stream} does not name this run's last receipt: "
            "receipts after it were removed"
        )
    _removed_after(last, problem, report)


def _removed_after(last: StoredReceipt, problem: str, report: Verification) -> None:
    report.findings.append(Finding(last.log_seq, last.run_id, problem, order=True))
    if last.run_id in report.incomplete or any(r == last.run_id for r, _, _ in report.in_doubt):
        report.incomplete = [r for r in report.incomplete if r != last.run_id]
        report.in_doubt = [d for d in report.in_doubt if d[0] != last.run_id]
    if last.run_id not in report.undiagnosed:
        report.undiagnosed.append(last.run_id)


@dataclass(frozen=True, slots=True)
class CheckedRun:
    """A run as `audit show` and the run view present it: what its receipts say, beside what
    verification could not vouch for. `record` holds the receipts that decoded; `unverified`
    maps the log_seq of each receipt that failed a check (its own signature and link, its
    links to the run's and the log's previous receipts) to the problems found."""

    record: RunRecord
    verification: Verification
    unverified: dict[int, list[str]]
    programs: tuple[CheckedRun, ...] = ()  # an intent run's program runs, in the order it started them

    @property
    def ok(self) -> bool:
        return self.verification.ok and all(p.ok for p in self.programs)


def check_run(log: AuditLog, run_id: str, keys: Mapping[str, PublicKey] | None = None) -> CheckedRun:
    """Run `run_id` with every receipt's own signature and links checked (and, for an intent
    run, each program run it started, checked the same way).

    Raises RunNotFound for an unknown id, AuditError if not even its opening decodes.
    """
    keys = log.trusted_keys() if keys is None else keys
    resolved = log.resolve(run_id)
    verification = verify_log(log, keys, run_id=resolved, every_signature=True)
    unverified: dict[int, list[str]] = {}
    for finding in verification.findings:
        if finding.log_seq is not None:
            unverified.setdefault(finding.log_seq, []).append(finding.problem)
    receipts: list[Receipt] = []
    for row in log.stored(resolved):
        try:
            receipts.append(row.decoded())
        except ValueError:  # reported by verification: the receipt is left out, marked there
            continue
    if not receipts:
        raise AuditError(f"no receipt of run {resolved} decodes; run `charter audit verify {resolved}`")
    record = record_of(receipts)
    programs = tuple(check_run(log, r, keys) for r in record.program_runs())
    return CheckedRun(record, verification, unverified, programs)


def export_run(log: AuditLog, run_id: str) -> list[str]:
    """The run as JSON Lines: a header (with the run's status and cause), then its receipts in
    log order. An intent run's bundle holds every program run its attempts started as well
    (their decisions are what the conclusion rests on), interleaved in log order. A run that
    paused for approval or resumes one brings its whole chain (issue 16): the paused run, each
    decision record and each resumed run, so the bundle verifies the links between them.
    `run_id` may also be an approval id: its chain is exported, from the run that paused."""
    resolved = resolve_record(log, run_id)
    decided = decision_of(log, resolved)
    if decided is not None:  # an approval's record: the bundle is its chain, from the paused run
        resolved = decided[1].request_run
    record = log.run(resolved)
    program_runs = record.program_runs()
    chain: list[str] = []
    approvals: list[str] = []
    for part in (resolved, *program_runs):
        found = chain_of(log, part)
        if found is None:
            continue
        chain.extend(r.run_id for r in found.runs if r.run_id not in (resolved, *program_runs, *chain))
        approvals.extend(
            s.approval_id for s in found.steps if s.decision is not None and s.approval_id not in approvals
        )
    parts = (resolved, *program_runs, *chain, *approvals)
    rows = sorted({row.log_seq: row for rid in parts for row in log.stored(rid)}.values(), key=lambda row: row.log_seq)
    keys = log.trusted_keys()
    header = {
        "format": BUNDLE_FORMAT,
        "run_id": resolved,
        "program_runs": program_runs,
        # Issue 16: the other runs of the approval chain, and the approvals' decision records.
        "chain": chain,
        "approvals": approvals,
        "public_keys": {key_id: key.raw.hex() for key_id, key in keys.items()},
        "receipts": len(rows),
        # How the run ended (charter.status), read from its receipts; not signed itself.
        "status": record.status,
        "cause": record.cause,
    }
    lines = [json.dumps(header, sort_keys=True)]
    for row in rows:
        lines.append(
            json.dumps(
                {
                    "log_seq": row.log_seq,
                    "run_id": row.run_id,
                    "seq": row.seq,
                    "kind": row.kind,
                    "body": row.body.decode("utf-8"),
                    "signature": row.signature.hex(),
                    "link": row.link,
                },
                ensure_ascii=False,
            )
        )
    return lines


def _bundle_row(line_number: int, data: Any, path: Path) -> StoredReceipt:
    try:
        return StoredReceipt(
            log_seq=int(data["log_seq"]),
            run_id=str(data["run_id"]),
            seq=int(data["seq"]),
            kind=str(data["kind"]),
            body=str(data["body"]).encode("utf-8"),
            signature=bytes.fromhex(data["signature"]),
            link=str(data["link"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"{path}:{line_number}: not a receipt line of a Charter bundle ({error})") from None


def verify_bundle(path: Path, trusted: PublicKey | None = None) -> Verification:
    """Verify an exported run. With `trusted`, only that key is accepted; else the bundle's own."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
        if header.get("format") != BUNDLE_FORMAT:
            raise UsageError(f"{path}:1: not a Charter audit bundle (format {header.get('format')!r})")
        rows = [_bundle_row(n, json.loads(line), path) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read the bundle {path}: {error}") from None
    if trusted is not None:
        keys = {trusted.key_id: trusted}
    else:
        keys = {key_id: PublicKey.from_raw(bytes.fromhex(raw)) for key_id, raw in header["public_keys"].items()}
    report = verify_receipts(rows, keys, whole_log=False, every_signature=True, where="the bundle")
    _check_program_runs_present(rows, header, report)
    if len(rows) != header.get("receipts"):
        stated = header.get("receipts")
        report.findings.insert(
            0,
            Finding(
                None, None, f"the bundle's header lists {stated} receipts, it holds {len(rows)}: lines were removed"
            ),
        )
    return report


def _check_program_runs_present(rows: list[StoredReceipt], header: Mapping[str, Any], report: Verification) -> None:
    """Every program run the bundle's intent run started is in the bundle (signed attempts name them)."""
    present = {row.run_id for row in rows}
    for row in rows:
        if row.run_id != header.get("run_id") or row.kind != "attempt":
            continue
        try:
            attempt = decode_body(row.body)
        except ValueError:
            continue  # reported as undecodable
        started = getattr(attempt, "program_run", None)
        if started and started not in present:
            report.findings.append(
                Finding(row.log_seq, row.run_id, f"its program run {started} is not in the bundle: it was left out")
            )
