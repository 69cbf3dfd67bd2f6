"""Verification: is every receipt intact, in its place, and signed by a known key?

Checked for every receipt:
- its link is sha256(body || signature), so no stored byte of either changed;
- its body decodes strictly, and the stored columns (log_seq, run_id, seq, kind) say
  what the signed body says;
- it follows the log's previous receipt (log_seq + 1, `log_prev` = that receipt's link)
  and its run's previous receipt (seq + 1, `prev` = that link), and nothing follows a seal;
- an opening's program hashes to its program_sha256; nonces are unique; outcomes answer
  an allowed decision; a seal counts the run's receipts;
- the log's last receipt is the one the head row names (else the log was truncated);
- with concurrent writers (PostgreSQL, design19.md) the log is several streams, one per writer:
  the stream "" (a SQLite log, or one copied from it) is checked as above; each other stream S
  must hold stream_seq 1, 2, 3... without a gap, each receipt's `log_prev` naming S's previous
  receipt, log_seq increasing, and end at S's `stream_heads` row (else its tail was truncated);
  a head row whose stream holds no receipt at all means the stream was deleted. A stream deleted
  WITH its head row leaves nothing inside the database to notice: the signed checkpoints kept
  outside it (`verify --head`) do;
- approvals (issue 16): an ApprovalDecided is a record of its own (one receipt, seq 0); it
  decides the ApprovalRequested its request_link names (same approval, call, operation and
  arguments hash), an approval is decided at most once, and a resumed run's Opened names
  that decision's link and resumes the run sealed paused for it (`_approval_links`).

Signatures: by default the signature of each run's last receipt and of the log's last
receipt is verified. Every other receipt is covered by them through the links, which
hash signatures as well as bodies, so a change anywhere breaks a link or a verified
signature. `every_signature=True` verifies each receipt's own signature as well
(about 7,000 per second per core here, against tens of thousands for the default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from charter.audit._approval_links import ApprovalLinks, Fetch
from charter.audit._keyring import key_problem
from charter.audit._writer import Head
from charter.audit.keys import PublicKey
from charter.audit.receipts import (
    ApprovalDecided,
    Asked,
    Attempted,
    Concluded,
    Decision,
    Opened,
    Outcome,
    Sealed,
    StoredReceipt,
    kind_of,
    link_of,
    text_sha256,
)

__all__ = ["Finding", "Verification", "verify_receipts"]


@dataclass(frozen=True, slots=True)
class Finding:
    log_seq: int | None
    run_id: str | None
    problem: str
    # The log's order is broken here (a gap, a wrong log_prev): a receipt of any run may be missing.
    order: bool = False
    # The receipt's kind, given for the approval receipts (and resumed openings) so a finding
    # names which of them it is: approval_request, approval_decision, open.
    kind: str | None = None

    def __str__(self) -> str:
        where = f"receipt {self.log_seq}" if self.log_seq is not None else "log"
        if self.kind is not None:
            where += f" {_NAMES.get(self.kind, self.kind)}"
        if self.run_id:
            whose = "approval" if self.kind == "approval_decision" else "run"
            where += f" ({whose} {self.run_id})"
        return f"{where}: {self.problem}"


_NAMES = {"approval_request": "ApprovalRequested", "approval_decision": "ApprovalDecided", "open": "Opened"}
_APPROVAL_KINDS = frozenset({"approval_request", "approval_decision"})


@dataclass(slots=True)
class Verification:
    receipts: int = 0
    runs: int = 0
    sealed: int = 0
    approvals: int = 0  # decision records (ApprovalDecided): not runs, and not counted as runs
    signatures_checked: int = 0
    incomplete: list[str] = field(default_factory=list)
    in_doubt: list[tuple[str, int, str]] = field(default_factory=list)  # (run, call, operation)
    # Runs nothing is concluded about (not interrupted, not in doubt) because a receipt of
    # theirs, or the log's order around them, failed its check: their bodies may be forged.
    undiagnosed: list[str] = field(default_factory=list)
    head: tuple[int, str] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def failed(self) -> set[int]:
        """The log_seq of every receipt that failed a check of its own."""
        return {f.log_seq for f in self.findings if f.log_seq is not None}


@dataclass(slots=True)
class _StreamTrack:
    """The last receipt of one writer stream seen so far."""

    stream_seq: int
    log_seq: int
    link: str
    row: StoredReceipt
    key_id: str


@dataclass(slots=True)
class _RunTrack:
    next_seq: int
    last_link: str
    last_row: StoredReceipt
    last_key_id: str
    sealed: bool = False
    allowed: dict[int, str] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)


_COLUMNS = ("log_seq", "run_id", "seq", "kind")


def verify_receipts(
    rows: Iterable[StoredReceipt],
    keys: Mapping[str, PublicKey],
    *,
    whole_log: bool = True,
    head: tuple[int, str] | None = None,
    expect_head: tuple[int, str] | None = None,
    neighbour: Callable[[int], StoredReceipt | None] | None = None,
    every_signature: bool = False,
    fetch: Fetch | None = None,
    where: str = "the log",
    stream_heads: Mapping[str, Head] | None = None,
    stream_neighbour: Callable[[str, int], StoredReceipt | None] | None = None,
) -> Verification:
    """Verify receipts given in log order.

    `whole_log`: the rows are the entire log, so log_seq must run 1, 2, 3... and end at
    `head`. Otherwise (one run, or an exported bundle) each receipt's `log_prev` is
    checked against `neighbour(log_seq - 1)` when that lookup is given.
    `fetch`: reads another run's rows (the paused run of a resumed run verified on its own) for
    the approval links; None: the rows are all there is, and `where` names them in findings.
    `stream_heads` (a whole PostgreSQL log): each writer stream's head row; every stream must
    end where its row says. `stream_neighbour(stream, stream_seq)`: reads a stream's receipt,
    to check `log_prev` of a stream receipt outside a whole log (as `neighbour` for stream "").
    """
    report = Verification(head=head)
    runs: dict[str, _RunTrack] = {}
    nonces: dict[str, int] = {}
    previous: StoredReceipt | None = None
    previous_key_id: str | None = None  # the signing key its body names, if it decoded
    streams: dict[str, _StreamTrack] = {}  # writer streams (not ""): their last receipt so far
    seen_expected_head = expect_head is None
    links = ApprovalLinks(fetch=fetch, where=where)

    def find(row: StoredReceipt, problem: str, *, order: bool = False) -> None:
        kind = row.kind if row.kind in _APPROVAL_KINDS else None
        report.findings.append(Finding(row.log_seq, row.run_id, problem, order, kind))

    def find_link(log_seq: int | None, run_id: str | None, kind: str | None, problem: str) -> None:
        report.findings.append(Finding(log_seq, run_id, problem, kind=kind))

    def check_signature(row: StoredReceipt, key_id: str) -> None:
        key = keys.get(key_id)
        if key is None:
            return  # reported when the receipt was read
        report.signatures_checked += 1
        if not key.verifies(row.signature, row.body):
            find(row, f"its Ed25519 signature does not verify with key {key_id}: the body or signature was altered")

    for row in rows:
        report.receipts += 1
        if expect_head is not None and (row.log_seq, row.link) == expect_head:
            seen_expected_head = True
        if not isinstance(row.body, bytes) or not isinstance(row.signature, bytes):
            find(row, "its body or signature is stored as text, not as the signed bytes: it was altered")
            previous, previous_key_id = row, None
            continue
        if link_of(row.body, row.signature) != row.link:
            find(row, "its stored link is not sha256(body || signature): the body, signature or link was altered")
        try:
            body = row.decoded()
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            find(row, f"its body is not a valid receipt ({error}): it was altered")
            previous, previous_key_id = row, None
            continue
        stated = {"log_seq": body.log_seq, "run_id": body.run_id, "seq": body.seq, "kind": kind_of(body)}
        for column in _COLUMNS:
            if getattr(row, column) != stated[column]:
                find(row, f"column {column} holds {getattr(row, column)!r} but the signed body says {stated[column]!r}")
        untrusted = key_problem(keys, body.key_id, body.at)  # an unknown or revoked key (the keyring)
        if untrusted is not None:
            find(row, untrusted)
        if every_signature:
            check_signature(row, body.key_id)

        if body.stream:
            _check_stream(
                row,
                body.stream,
                body.stream_seq,
                body.log_prev,
                body.key_id,
                whole_log,
                streams,
                find,
                stream_neighbour,
            )
        elif whole_log:
            expected_seq = previous.log_seq + 1 if previous else 1
            if row.log_seq != expected_seq:
                gap = "missing (deleted)" if row.log_seq > expected_seq else "out of order"
                find(row, f"log_seq {row.log_seq} where {expected_seq} was expected: receipts are {gap}", order=True)
            expected_prev = previous.link if previous else ""
            if body.log_prev != expected_prev:
                find(
                    row,
                    "its log_prev link does not name the log's previous receipt: "
                    "one was inserted, removed or reordered",
                    order=True,
                )
        elif neighbour is not None and row.log_seq > 1:
            before = neighbour(row.log_seq - 1)
            if before is None or before.link != body.log_prev:
                find(row, "its log_prev link does not name the log's previous receipt", order=True)
        if not body.stream:
            previous, previous_key_id = row, body.key_id

        links.note(row, body)
        track = runs.get(body.run_id)
        if track is None:
            if isinstance(body, ApprovalDecided):
                report.approvals += 1  # a record of one receipt, not a run
            else:
                report.runs += 1
            track = runs[body.run_id] = _RunTrack(next_seq=0, last_link="", last_row=row, last_key_id=body.key_id)
            if not isinstance(body, Opened | Asked | ApprovalDecided):
                find(row, "the run has no opening receipt before this one: it was deleted")
                track.next_seq = body.seq
                track.last_link = body.prev
        if track.sealed:
            find(row, "it follows the run's seal; nothing may be added to a sealed run")
        if body.seq != track.next_seq:
            find(
                row,
                f"it is receipt #{body.seq} of its run where #{track.next_seq} was expected: "
                "receipts are missing or reordered",
            )
        if body.prev != track.last_link:
            find(row, "its prev link does not name the run's previous receipt")
        track.next_seq = body.seq + 1
        track.last_link = row.link
        track.last_row = row
        track.last_key_id = body.key_id

        if isinstance(body, Opened):
            if text_sha256(body.program) != body.program_sha256:
                find(row, "the program text does not hash to the program_sha256 it was opened with")
        elif isinstance(body, Decision):
            first = nonces.setdefault(body.nonce, row.log_seq)
            if first != row.log_seq:
                find(row, f"its nonce was already used by receipt {first}: a replayed receipt")
            if body.decision == "ALLOW":
                track.allowed[body.call] = body.operation
        elif isinstance(body, Outcome):
            if body.call not in track.allowed:
                find(row, f"an outcome for call {body.call}, which was never allowed")
            if body.status != "unknown":  # an unknown outcome leaves the call in doubt
                track.answered.add(body.call)
        elif isinstance(body, Attempted):
            if body.program is not None and text_sha256(body.program) != body.program_sha256:
                find(row, "the attempt's program does not hash to its program_sha256")
        elif isinstance(body, ApprovalDecided):
            track.sealed = True  # complete in itself: nothing may follow it under its id
        elif isinstance(body, Sealed | Concluded):
            track.sealed = True
            report.sealed += 1
            if body.receipts != body.seq:
                find(row, f"the seal counts {body.receipts} receipts before it, the run has {body.seq}")

    links.check(find_link)

    if not every_signature:
        anchors = {id(t.last_row): (t.last_row, t.last_key_id) for t in runs.values()}
        if previous is not None and previous_key_id is not None:  # an undecodable head is already reported
            anchors[id(previous)] = (previous, previous_key_id)
        for stream in streams.values():  # each stream's last receipt: its chain ends in a signature
            anchors[id(stream.row)] = (stream.row, stream.key_id)
        for row, key_id in anchors.values():
            check_signature(row, key_id)

    if whole_log and stream_heads is not None:
        _check_stream_heads(streams, stream_heads, report)
    if whole_log:
        last = (previous.log_seq, previous.link) if previous else None
        if head != last:
            shown = f"receipt {last[0]}" if last else "no receipt"
            report.findings.append(
                Finding(
                    None,
                    None,
                    f"the log ends at {shown} but its head names receipt {head[0] if head else None}: "
                    "receipts were removed from its end (truncated) or the head was altered",
                )
            )
    if not seen_expected_head:
        assert expect_head is not None
        report.findings.append(
            Finding(
                None,
                None,
                f"the head you expected (receipt {expect_head[0]}, link {expect_head[1][:16]}…) "
                "is not in the log: it was truncated or rewritten since",
            )
        )
    # A receipt that failed its check may say anything: nothing is concluded from its run.
    # A receipt missing from the log's order (a gap, a broken log_prev, a truncation) may
    # have been any run's seal or outcome, so then no run is diagnosed at all.
    tainted = {f.run_id for f in report.findings if f.run_id is not None}
    order_broken = any(f.run_id is None or f.order for f in report.findings)
    for run_id, track in runs.items():
        if order_broken or run_id in tainted:
            report.undiagnosed.append(run_id)
            continue
        if not track.sealed:
            report.incomplete.append(run_id)
        report.in_doubt.extend(
            (run_id, call, op) for call, op in sorted(track.allowed.items()) if call not in track.answered
        )

    return report


def _check_stream(
    row: StoredReceipt,
    stream: str,
    stream_seq: int,
    log_prev: str,
    key_id: str,
    whole_log: bool,
    streams: dict[str, _StreamTrack],
    find: Callable[..., None],
    stream_neighbour: Callable[[str, int], StoredReceipt | None] | None,
) -> None:
    """A receipt of writer stream `stream` follows that stream's previous receipt (rows in log order)."""
    if whole_log:
        track = streams.get(stream)
        expected = track.stream_seq + 1 if track else 1
        if stream_seq != expected:
            gap = "missing (deleted)" if stream_seq > expected else "out of order"
            find(
                row,
                f"it is receipt {stream_seq} of stream {stream} where {expected} was expected: receipts are {gap}",
                order=True,
            )
        if log_prev != (track.link if track else ""):
            find(
                row,
                f"its log_prev link does not name the previous receipt of stream {stream}: "
                "one was inserted, removed or reordered",
                order=True,
            )
        if track is not None and row.log_seq <= track.log_seq:
            find(row, f"its log_seq is not after receipt {track.log_seq} of its stream {stream}", order=True)
    elif stream_neighbour is not None and stream_seq > 1:
        before = stream_neighbour(stream, stream_seq - 1)
        if before is None or before.link != log_prev:
            find(row, f"its log_prev link does not name the previous receipt of stream {stream}", order=True)
    streams[stream] = _StreamTrack(stream_seq, row.log_seq, row.link, row, key_id)


def _check_stream_heads(streams: dict[str, _StreamTrack], heads: Mapping[str, Head], report: Verification) -> None:
    """Each writer stream ends at its head row; a head row names a stream the log holds."""
    for stream, track in streams.items():
        head = heads.get(stream)
        if head is None:
            report.findings.append(
                Finding(None, None, f"stream {stream} has no head row: the head was deleted or the stream inserted")
            )
        elif (head.stream_seq, head.link) != (track.stream_seq, track.link):
            report.findings.append(
                Finding(
                    None,
                    None,
                    f"stream {stream} ends at its receipt {track.stream_seq} (log_seq {track.log_seq}) but its head "
                    f"names receipt {head.stream_seq} (log_seq {head.log_seq}): receipts were removed from its end "
                    "(truncated) or the head was altered",
                )
            )
    for stream, head in heads.items():
        if stream not in streams:
            report.findings.append(
                Finding(
                    None,
                    None,
                    f"stream {stream}'s head names its receipt {head.stream_seq} (log_seq {head.log_seq}) but the log "
                    "holds no receipt of it: the stream was deleted",
                )
            )
