"""How a quota's change is classified (charter.registry.diff).

A quota refuses calls over a total, so anything that lets more through is a relaxation and
anything that lets less through is breaking:

- removed quota: relaxation; a renamed id is a removal and an addition, and the removal is
  the relaxation that matters (the audit log counts by contract name and quota id, so the
  renamed quota starts again from zero);
- added quota: breaking;
- `max` raised: relaxation; lowered: breaking;
- `window` shorter (or a time window made `run`): relaxation; longer (or `run` made a time
  window): breaking;
- `per` keys changed: breaking, since calls are grouped differently and a program that kept
  within the old totals may exceed the new ones; and a relaxation as well, since the totals
  already counted are filed under the old keys and do not count under the new ones (each new
  key starts from zero);
- `sum` or `count` changed: both, like a changed guard (it cannot in general be ordered);
- message reworded: additive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from charter.contract._quotas import parse_window
from charter.contract.model import Quota

if TYPE_CHECKING:
    from charter.registry.diff import _Diff

__all__ = ["diff_quotas"]


def diff_quotas(d: _Diff, where: str, old: list[Quota], new: list[Quota]) -> None:
    d.keyed(
        f"{where}.quotas",
        {q.id: q for q in old},
        {q.id: q for q in new},
        "quota",
        "relaxation",
        "breaking",
        lambda at, before, after: _changed(d, at, before, after),
        detail=_shown,
    )


def _shown(quota: Quota) -> str:
    what = f"sum {quota.sum}" if quota.sum is not None else "count"
    per = f" per {', '.join(quota.per)}" if quota.per else ""
    return f"{what} <= {quota.max} / {quota.window}{per}"


def _changed(d: _Diff, at: str, before: Quota, after: Quota) -> None:
    name = after.id
    if after.max > before.max:
        d.add("relaxation", at, f"quota '{name}' max raised from {before.max} to {after.max}")
    elif after.max < before.max:
        d.add("breaking", at, f"quota '{name}' max lowered from {before.max} to {after.max}")
    if before.window != after.window:
        longer = _span(after.window) > _span(before.window)
        d.add(
            "breaking" if longer else "relaxation",
            at,
            f"quota '{name}' window changed from {before.window} to {after.window} "
            f"({'longer: more calls count' if longer else 'shorter: fewer calls count'})",
        )
    if before.per != after.per:
        message = f"quota '{name}' keys changed from [{', '.join(before.per)}] to [{', '.join(after.per)}]"
        d.add("breaking", at, f"{message} (calls are grouped differently: a program within the old totals may exceed)")
        d.add("relaxation", at, f"{message} (totals counted under the old keys do not count under the new ones)")
    if (before.sum, before.count) != (after.sum, after.count):
        message = (
            f"quota '{name}' now counts {_shown(after).split(' <=')[0]} instead of {_shown(before).split(' <=')[0]}"
        )
        d.add("breaking", at, message + " (may be stricter)")
        d.add("relaxation", at, message + " (may be looser)")
    if before.message != after.message:
        d.add("additive", at, f"quota '{name}' message reworded")


def _span(window: str) -> float:
    """A window's length for ordering: `run` (this run only) is the shortest."""
    try:
        seconds = parse_window(window)
    except ValueError:  # the checker refuses it; order it as a run
        return 0.0
    return float(seconds) if seconds is not None else 0.0
