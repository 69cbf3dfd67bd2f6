"""Verifying a log or one run, and exporting a run as a bundle a third party can verify.

A bundle is JSON Lines: a header naming the format, the run and the public keys, then
each receipt exactly as stored (body as text, signature and link as hex). Whoever
receives it needs nothing else: `charter audit verify --bundle FILE [--public-key KEY]`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from charter.audit.keys import PublicKey
from charter.audit.receipts import StoredReceipt
from charter.audit.store import AuditLog
from charter.audit.verify import Finding, Verification, verify_receipts
from charter.errors import UsageError

__all__ = ["BUNDLE_FORMAT", "export_run", "verify_bundle", "verify_log"]

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
        return verify_receipts(
            log.stored(), keys, head=log.head(), expect_head=expect_head, every_signature=every_signature
        )
    return verify_receipts(
        log.stored(log.resolve(run_id)),
        keys,
        whole_log=False,
        neighbour=log.stored_at,
        every_signature=every_signature,
    )


def export_run(log: AuditLog, run_id: str) -> list[str]:
    """The run as JSON Lines: a header (with the run's status and cause), then its receipts in log order."""
    resolved = log.resolve(run_id)
    rows = list(log.stored(resolved))
    keys = log.trusted_keys()
    record = log.run(resolved)
    header = {
        "format": BUNDLE_FORMAT,
        "run_id": resolved,
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
    report = verify_receipts(rows, keys, whole_log=False, every_signature=True)
    if len(rows) != header.get("receipts"):
        stated = header.get("receipts")
        report.findings.insert(
            0,
            Finding(
                None, None, f"the bundle's header lists {stated} receipts, it holds {len(rows)}: lines were removed"
            ),
        )
    return report
