"""The state one run's calls share: what a session's checks (`_checks`) read, its actions
(`_acting`) add to, and a resumed run takes in from the record (`_absorb`)."""

from __future__ import annotations

from dataclasses import dataclass

from charter.gate._provenance import ProvenanceLedger
from charter.gate._quotas import QuotaSession
from charter.gate._sequence import RunSequence
from charter.gate._writes import WriteLedger

__all__ = ["RunState"]


@dataclass(slots=True)
class RunState:
    sequence: RunSequence  # the operations that succeeded (sequence rules)
    provenance: ProvenanceLedger  # the replies and inputs `from:` params may come from
    writes: WriteLedger  # the writes made, an idempotent write's first result, the writes in doubt
    quotas: QuotaSession  # the amounts this run holds and counted
    denials: int = 0  # against limits.max_denials
