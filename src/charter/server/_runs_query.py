"""Listing runs and counting them, for GET /v1/runs and the review app's Runs and Overview
pages (one query path: `CharterService.list_runs` and `.overview` call these).

Everything here reads the derived indexes of the audit log (`runs`, `denials`: see
`charter.audit.index`), never a receipt body, through the log's reader (`AuditLog.reader`), so
a log in SQLite or PostgreSQL serves the same pages: the statements are written once, in SQL
both engines run (a derived table has an alias, each parameter is its own `?`, a day is the
first 10 characters of an ISO-8601 UTC time).

A query's values come from a URL: `parse_run_query` checks each and raises `RunQueryError`
naming the parameter. Pages are keyset-paginated on the runs index's `opened_seq`, newest
first; the cursor handed to callers is opaque (`_cursor_text`), and a malformed one is an
error like any other bad parameter.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from charter.audit import AuditLog
from charter.audit.index import RunFilter, RunSummary, attempts_of, list_runs
from charter.db import Connection
from charter.errors import UsageError
from charter.status import STATUSES

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Overview",
    "RunPage",
    "RunQuery",
    "RunQueryError",
    "RunRow",
    "overview",
    "parse_run_query",
    "run_page",
]

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
OVERVIEW_DAYS = 14
TOP = 10  # rows of each "most frequent" table on the overview

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_VERSION = re.compile(r"\d{1,9}\.\d{1,9}\.\d{1,9}")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_PRINCIPAL = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_HEX = re.compile(r"[0-9a-f]{1,32}")
_CURSOR_PREFIX = b"runs:"


class RunQueryError(UsageError):
    """A bad value for one query parameter; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Which runs to list, as checked by `parse_run_query`. Times are ISO-8601 UTC text;
    `cursor` is the opened_seq the page starts below (None: from the newest)."""

    contract: str | None = None
    version: str | None = None
    status: str | None = None
    principal: str | None = None
    code: str | None = None
    since: str | None = None
    until: str | None = None
    run_prefix: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: int | None = None


class Resumed(msgspec.Struct, frozen=True, kw_only=True):
    """Where a paused run's chain went: the latest run that resumed it after an approval's
    decision, and that run's status (its own status: it may have paused again)."""

    run_id: str
    status: str


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """A run of a page; an intent run carries its attempts' program runs, in the order opened.
    `resumed`: for a run whose status is awaiting_approval (an intent: one whose program run
    paused), the run that resumed its chain since, if any; the row keeps the status it was sealed
    with, as the index does (GET /v1/runs/{id} reports the chain's)."""

    run: RunSummary
    attempts: list[RunSummary] | None = None
    resumed: Resumed | None = None


# The latest resume of the chain a run starts (an intent run: of its program runs' chains), from
# the approvals index: approvals.logical_run_id names the chain's first run.
# `{run}`: the run's id, twice: two parameters or the outer query's column; the overview counts by it too.
_LATEST_RESUME = (
    "SELECT r.run_id, r.status FROM approvals a JOIN runs r ON r.run_id = a.resume_run "
    "WHERE a.logical_run_id = {run} OR a.logical_run_id IN (SELECT c.run_id FROM runs c WHERE c.parent = {run}) "
    "ORDER BY r.opened_seq DESC LIMIT 1"
)


def _resumed(connection: Connection, run: RunSummary) -> Resumed | None:
    if run.status != "awaiting_approval":
        return None
    found = connection.execute(_LATEST_RESUME.format(run="?"), (run.run_id, run.run_id)).fetchone()
    return None if found is None else Resumed(run_id=found[0], status=found[1])


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    runs: list[RunRow]
    next_cursor: str | None  # None: this is the last page


def parse_run_query(values: Mapping[str, str | None], *, dates_only: bool = False) -> RunQuery:
    """A RunQuery from URL query values: contract (NAME or NAME@X.Y.Z), status, principal,
    code, since, until (ISO-8601 date or date-time; without a zone, UTC), run (a run-id
    prefix: hex digits), limit (1..MAX_LIMIT), cursor (a page's `next_cursor`). Empty values
    are absent. `dates_only`: since/until are days (a form's date inputs) and `until`
    includes its day. Raises RunQueryError naming the first bad parameter."""
    given = {k: v.strip() for k, v in values.items() if v is not None and v.strip()}
    contract = version = None
    if "contract" in given:
        contract, _, version = given["contract"].partition("@")
        if not _NAME.fullmatch(contract):
            raise RunQueryError("contract", f"{contract[:100]!r} is not a contract name; give NAME or NAME@X.Y.Z")
        if version and not _VERSION.fullmatch(version):
            raise RunQueryError("contract", f"version {version[:40]!r}: give an exact version X.Y.Z (NAME@1.2.0)")
    status = given.get("status")
    if status is not None and status not in STATUSES:
        raise RunQueryError("status", f"{status[:40]!r} is not a run status; one of {', '.join(STATUSES)}")
    principal = given.get("principal")
    if principal is not None and not _PRINCIPAL.fullmatch(principal):
        raise RunQueryError("principal", "give a principal id (at most 200 characters, no control characters)")
    code = given.get("code")
    if code is not None and not _CODE.fullmatch(code):
        raise RunQueryError("code", f"{code[:64]!r} is not a reason code; codes look like STATE_VIOLATION")
    since = _time("since", given.get("since"), dates_only=dates_only, next_day=False)
    until = _time("until", given.get("until"), dates_only=dates_only, next_day=dates_only)
    if since is not None and until is not None and since >= until:
        raise RunQueryError("until", "must be later than since")
    run_prefix = given.get("run")
    if run_prefix is not None:
        run_prefix = run_prefix.lower()
        if not _HEX.fullmatch(run_prefix):
            raise RunQueryError("run", "a run-id prefix is 1 to 32 hex digits (0-9, a-f)")
    limit = DEFAULT_LIMIT
    if "limit" in given:
        try:
            limit = int(given["limit"])
        except ValueError:
            raise RunQueryError("limit", f"give a whole number from 1 to {MAX_LIMIT}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise RunQueryError("limit", f"give a whole number from 1 to {MAX_LIMIT}, not {limit}")
    cursor = _cursor_seq(given["cursor"]) if "cursor" in given else None
    return RunQuery(
        contract=contract,
        version=version or None,
        status=status,
        principal=principal,
        code=code,
        since=since,
        until=until,
        run_prefix=run_prefix,
        limit=limit,
        cursor=cursor,
    )


def _time(parameter: str, text: str | None, *, dates_only: bool, next_day: bool) -> str | None:
    """ISO-8601 UTC text in the receipts' own form, so it compares as text with `opened_at`."""
    if text is None:
        return None
    try:
        if dates_only or len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1 if next_day else 0)
        else:
            moment = datetime.fromisoformat(text)
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        form = "a date YYYY-MM-DD" if dates_only else "an ISO-8601 date or time (2026-01-31 or 2026-01-31T09:00:00Z)"
        raise RunQueryError(parameter, f"{text[:40]!r} is not {form}") from None
    return moment.isoformat(timespec="microseconds")


def _cursor_text(opened_seq: int) -> str:
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + str(opened_seq).encode()).decode().rstrip("=")


def _cursor_seq(text: str) -> int:
    problem = RunQueryError("cursor", "not a cursor this server gave: pass a page's next_cursor unchanged")
    if len(text) > 40:
        raise problem
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise problem from None
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isdigit() or len(digits) > 18:
        raise problem
    return int(digits)


def run_page(log: AuditLog, query: RunQuery, *, principal: str | None) -> RunPage:
    """One page of runs matching `query`, newest first. `principal`: only this principal's runs
    (None: everyone's; the caller decides who may see what). Runs an intent started are listed
    under it (`attempts`), not on their own, unless a run-id prefix is searched."""
    filters = RunFilter(
        contract=query.contract,
        version=query.version,
        status=query.status,
        principal=principal if principal is not None else query.principal,
        code=query.code,
        since=query.since,
        until=query.until,
        run_prefix=query.run_prefix,
        top_level=query.run_prefix is None,
    )
    with log.reader() as connection:
        found = list_runs(connection, filters, query.limit + 1, query.cursor)
        shown = found[: query.limit]
        rows = [
            RunRow(
                run=run,
                attempts=attempts_of(connection, run.run_id) if run.kind == "intent" else None,
                resumed=_resumed(connection, run),
            )
            for run in shown
        ]
    more = len(found) > query.limit
    return RunPage(runs=rows, next_cursor=_cursor_text(shown[-1].cursor) if more else None)


def page_body(page: RunPage) -> dict[str, Any]:
    """The JSON of GET /v1/runs: each run's index fields (not its internal cursor), attempts for an intent."""

    def fields(run: RunSummary) -> dict[str, Any]:
        body: dict[str, Any] = msgspec.to_builtins(run)
        body.pop("cursor")
        return body

    return {
        "runs": [
            fields(row.run)
            | {
                "attempts": None if row.attempts is None else [fields(a) for a in row.attempts],
                "resumed": None if row.resumed is None else msgspec.to_builtins(row.resumed),
            }
            for row in page.runs
        ],
        "next_cursor": page.next_cursor,
    }


# -- the overview --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Count:
    """A count of one thing (a contract, a reason code...), with a breakdown by status or code."""

    name: str
    total: int
    by: dict[str, int] = field(default_factory=dict)
    detail: str | None = None  # e.g. the boundary of a (boundary, code) row


@dataclass(frozen=True, slots=True)
class Overview:
    """What the overview page shows, for runs opened since `since` (the last OVERVIEW_DAYS days, UTC)."""

    since: str
    days: list[Count]  # one per day, oldest first: name YYYY-MM-DD, by status
    contracts: list[Count]  # runs per contract, by status, most first
    codes: list[Count]  # denials per reason code (top TOP), by = {"runs": distinct runs}
    boundaries: list[Count]  # denials per (boundary, code) (top TOP); detail = the code
    unsealed: list[RunSummary]  # runs never sealed (interrupted), newest first (up to TOP)
    unsealed_total: int
    approvals_waiting: int = 0
    in_doubt: list[RunSummary] = field(default_factory=list)  # sealed runs with calls in doubt, newest first
    in_doubt_total: int = 0


# A run's status as its chain stands: a paused run resumed since counts as its latest resume.
_CURRENT_STATUS = (
    "CASE WHEN status = 'awaiting_approval' THEN coalesce((SELECT latest.status FROM "
    f"({_LATEST_RESUME.format(run='runs.run_id')}) AS latest), status) ELSE status END"
)
# Top-level runs opened since `?` (and the principal's, `{mine}`), counted by `{by}` (a column
# of the derived table: `day` or `contract`) and their current status. Grouped over a derived
# table, not by position: the status is a correlated subquery, which the engines group alike
# only as a column.
_RUNS_BY = (
    "SELECT {by}, current_status, count(*) FROM (SELECT substr(opened_at, 1, 10) AS day, contract, "
    f"{_CURRENT_STATUS} AS current_status FROM runs WHERE parent IS NULL AND opened_at >= ?{{mine}}) AS opened "
    "GROUP BY {by}, current_status"
)


def overview(log: AuditLog, *, principal: str | None, now: datetime | None = None) -> Overview:
    """The overview of runs visible to `principal` (None: everyone's), counted from the indexes."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=OVERVIEW_DAYS - 1)
    with log.reader() as connection:
        return _overview(connection, principal, first)


def _overview(connection: Connection, principal: str | None, first: date) -> Overview:
    since = datetime(first.year, first.month, first.day, tzinfo=UTC).isoformat(timespec="microseconds")
    mine, params = ("", [since]) if principal is None else (" AND principal = ?", [since, principal])
    per_day: dict[str, dict[str, int]] = {}
    for day, status, n in connection.execute(_RUNS_BY.format(by="day", mine=mine), params).fetchall():
        per_day.setdefault(day, {})[status] = n
    per_contract: dict[str, dict[str, int]] = {}
    for contract, status, n in connection.execute(_RUNS_BY.format(by="contract", mine=mine), params).fetchall():
        per_contract.setdefault(contract, {})[status] = n
    # Ranked here, not by ORDER BY: ties go by name, and the engines order text differently
    # (SQLite by bytes, PostgreSQL by the database's collation). One row per code or (boundary,
    # code) pair: a contract's few dozen at most.
    codes = [
        Count(code, n, {"runs": runs})
        for code, n, runs in sorted(
            connection.execute(
                f"SELECT code, count(*), count(DISTINCT run_id) FROM denials WHERE at >= ?{mine} GROUP BY code",
                params,
            ).fetchall(),
            key=lambda row: (-row[1], row[0]),
        )[:TOP]
    ]
    boundaries = [
        Count(boundary, n, detail=code)
        for boundary, code, n in sorted(
            connection.execute(
                f"SELECT boundary, code, count(*) FROM denials WHERE at >= ? AND boundary IS NOT NULL{mine} "
                "GROUP BY boundary, code",
                params,
            ).fetchall(),
            key=lambda row: (-row[2], row[0], row[1]),
        )[:TOP]
    ]
    unsealed_filter = RunFilter(status="interrupted", principal=principal)
    unsealed = list_runs(connection, unsealed_filter, TOP)
    [unsealed_total] = connection.execute(
        f"SELECT count(*) FROM runs WHERE status = 'interrupted'{mine}", params[1:]
    ).fetchone()
    # Sealed, yet a call's effect is not known (its outcome was never learned): ever, not 14 days.
    in_doubt = list_runs(connection, RunFilter(principal=principal, in_doubt=True), TOP)
    [in_doubt_total] = connection.execute(f"SELECT count(*) FROM runs WHERE in_doubt > 0{mine}", params[1:]).fetchone()
    days = []
    for offset in range(OVERVIEW_DAYS):
        day = (first + timedelta(days=offset)).isoformat()
        counts = per_day.get(day, {})
        days.append(Count(day, sum(counts.values()), counts))
    contracts = sorted(
        (Count(name, sum(by.values()), by) for name, by in per_contract.items()), key=lambda c: (-c.total, c.name)
    )
    return Overview(
        since=since,
        days=days,
        contracts=contracts,
        codes=codes,
        boundaries=boundaries,
        unsealed=unsealed,
        unsealed_total=unsealed_total,
        in_doubt=in_doubt,
        in_doubt_total=in_doubt_total,
    )


def with_approvals(view: Overview, waiting: int) -> Overview:
    return replace(view, approvals_waiting=waiting)
