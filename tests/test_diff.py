"""Change classification: breaking, relaxation, additive."""

from __future__ import annotations

import pytest

from charter.contract import load_contract
from charter.registry import diff_contracts
from tests.conftest import WriteContract

CASES = [
    (
        {"  cancel_order:\n    kind: write": "  cancel_orders:\n    kind: write"},
        {("breaking", "operation 'cancel_order' removed"), ("additive", "operation 'cancel_orders' added")},
    ),
    (
        {"params: {id: int, reason: str}": "params: {id: int, reason: str, by: str}"},
        {("breaking", "required param 'by' added")},
    ),
    (
        {"params: {id: int, reason: str}": "params: {id: int, reason: str, by: 'str?'}"},
        {("additive", "optional param 'by' added")},
    ),
    (
        {"params: {id: int, reason: str}": "params: {id: int, reason: int}"},
        {("breaking", "type changed from str to int")},
    ),
    ({"      note: str?\n": ""}, {("breaking", "field 'note' removed")}),
    (
        {
            "states: [pending, confirmed, dispatched, cancelled]": "states: [pending, confirmed, dispatched, cancelled, lost]"
        },
        {("additive", "state 'lost' added")},
    ),
    (
        {"from: [pending, confirmed], to: cancelled": "from: [pending], to: cancelled"},
        {("breaking", "'cancel' is no longer allowed from confirmed")},
    ),
    (
        {"from: [pending, confirmed], to: cancelled": "from: [pending, confirmed, dispatched], to: cancelled"},
        {("relaxation", "'cancel' is now also allowed from dispatched")},
    ),
    (
        {"    scopes: [orders:write]\n": "    scopes: [orders:write, orders:admin]\n"},
        {("breaking", "required scope 'orders:admin' added")},
    ),
    (
        {"    scopes: [orders:write]\n": "    public: true\n"},
        {("relaxation", "required scope 'orders:write' removed"), ("relaxation", "public changed to True")},
    ),
    (
        {
            "    guards:\n      - id: small_orders_only\n        when: entity.total <= 100000\n        message: Only orders up to 1,000.00 may be cancelled here.\n": ""
        },
        {("relaxation", "guard 'small_orders_only' removed (entity.total <= 100000)")},
    ),
    (
        {"entity.total <= 100000": "entity.total <= 200000"},
        {
            (
                "relaxation",
                "guard 'small_orders_only' changed from `entity.total <= 100000` to `entity.total <= 200000` (the bound on entity.total is wider: it allows more)",
            ),
        },
    ),
    (
        {"entity.total <= 100000": "entity.total <= entity.id"},
        {
            (
                "breaking",
                "guard 'small_orders_only' changed from `entity.total <= 100000` to `entity.total <= entity.id` (may be stricter)",
            ),
            (
                "relaxation",
                "guard 'small_orders_only' changed from `entity.total <= 100000` to `entity.total <= entity.id` (may be looser)",
            ),
        },
    ),
    (
        {"Only orders up to 1,000.00 may be cancelled here.": "Only small orders may be cancelled here."},
        {("additive", "guard 'small_orders_only' message reworded")},
    ),
    (
        {
            "    text: Never cancel a dispatched order.\n    enforced_by: [{transition: Order.cancel}]": "    text: Never cancel a dispatched order.\n    advisory: true"
        },
        {
            ("relaxation", "boundary is now advisory"),
            ("relaxation", 'enforcing rule \'{"transition":"Order.cancel"}\' removed'),
        },
    ),
    (
        {
            "boundaries:\n  - id: no_late_cancel\n    text: Never cancel a dispatched order.\n    enforced_by: [{transition: Order.cancel}]\n": "boundaries: []\n"
        },
        {("relaxation", "hard boundary removed: Never cancel a dispatched order.")},
    ),
    ({"boundaries:": "limits: {max_calls: 80}\nboundaries:"}, {("relaxation", "raised from 50 to 80")}),
    ({"boundaries:": "limits: {max_writes: 2}\nboundaries:"}, {("breaking", "lowered from 10 to 2")}),
    ({"    doc: Cancel an order.\n": "    doc: Cancel an order now.\n"}, {("additive", "documentation changed")}),
    (
        {"    scopes: [orders:write]\n": "    scopes: [orders:write]\n    requires_approval: true\n"},
        {("breaking", "now requires approval")},
    ),
]


@pytest.mark.parametrize(("replace", "expected"), CASES)
def test_changes_are_classified(
    write_contract: WriteContract, replace: dict[str, str], expected: set[tuple[str, str]]
) -> None:
    old = load_contract(write_contract(name="old.yaml"), resolve_bindings=False).model
    new = load_contract(write_contract(replace=replace, name="new.yaml"), resolve_bindings=False).model
    assert {(c.kind, c.message) for c in diff_contracts(old, new)} == expected


def test_identical_contracts_have_no_changes(write_contract: WriteContract) -> None:
    model = load_contract(write_contract()).model
    assert diff_contracts(model, model) == []


def test_removing_an_approval_or_scope_rule_from_a_boundary_is_a_relaxation(write_contract: WriteContract) -> None:
    rules = "enforced_by: [{transition: Order.cancel}, {approval: cancel_order}, {scope: cancel_order}]"
    approval = {"    scopes: [orders:write]\n": "    scopes: [orders:write]\n    requires_approval: true\n"}
    old = write_contract(replace={**approval, "enforced_by: [{transition: Order.cancel}]": rules}, name="old.yaml")
    new = write_contract(replace=approval, name="new.yaml")
    changes = diff_contracts(load_contract(old).model, load_contract(new).model)
    assert {(c.kind, c.message) for c in changes} == {
        ("relaxation", 'enforcing rule \'{"approval":"cancel_order"}\' removed'),
        ("relaxation", 'enforcing rule \'{"scope":"cancel_order"}\' removed'),
    }


_SCOPES = "    scopes: [orders:write]\n"
_QUOTA = "{id: daily_cancels, count: true, per: [params.id], window: 24h, max: 5, message: At most five a day.}"


def _with_quota(quota: str | None) -> dict[str, str]:
    return {_SCOPES: _SCOPES + (f"    quotas:\n      - {quota}\n" if quota else "")}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            _QUOTA,
            _QUOTA.replace("max: 5", "max: 8"),
            {("relaxation", "quota 'daily_cancels' max raised from 5 to 8")},
            id="max-raised",
        ),
        pytest.param(
            _QUOTA,
            _QUOTA.replace("max: 5", "max: 3"),
            {("breaking", "quota 'daily_cancels' max lowered from 5 to 3")},
            id="max-lowered",
        ),
        pytest.param(
            _QUOTA,
            _QUOTA.replace("window: 24h", "window: 30d"),
            {("breaking", "quota 'daily_cancels' window changed from 24h to 30d (longer: more calls count)")},
            id="window-longer",
        ),
        pytest.param(
            _QUOTA,
            _QUOTA.replace("window: 24h", "window: 90m"),
            {("relaxation", "quota 'daily_cancels' window changed from 24h to 90m (shorter: fewer calls count)")},
            id="window-shorter",
        ),
        pytest.param(
            _QUOTA,
            _QUOTA.replace("window: 24h", "window: run"),
            {("relaxation", "quota 'daily_cancels' window changed from 24h to run (shorter: fewer calls count)")},
            id="window-made-run",
        ),
        pytest.param(
            _QUOTA,
            None,
            {("relaxation", "quota 'daily_cancels' removed (count <= 5 / 24h per params.id)")},
            id="removed",
        ),
        pytest.param(
            None,
            _QUOTA,
            {("breaking", "quota 'daily_cancels' added (count <= 5 / 24h per params.id)")},
            id="added",
        ),
        pytest.param(
            _QUOTA,
            _QUOTA.replace("id: daily_cancels", "id: cancels_per_day"),
            {
                ("relaxation", "quota 'daily_cancels' removed (count <= 5 / 24h per params.id)"),
                ("breaking", "quota 'cancels_per_day' added (count <= 5 / 24h per params.id)"),
            },
            id="renamed",
        ),
        pytest.param(
            _QUOTA,
            _QUOTA.replace("per: [params.id]", "per: [params.id, params.reason]"),
            {
                (
                    "breaking",
                    "quota 'daily_cancels' keys changed from [params.id] to [params.id, params.reason] (calls are "
                    "grouped differently: a program within the old totals may exceed)",
                ),
                (
                    "relaxation",
                    "quota 'daily_cancels' keys changed from [params.id] to [params.id, params.reason] (totals "
                    "counted under the old keys do not count under the new ones)",
                ),
            },
            id="keys-changed",
        ),
        pytest.param(
            _QUOTA,
            _QUOTA.replace("At most five a day.", "Five a day at most."),
            {("additive", "quota 'daily_cancels' message reworded")},
            id="message",
        ),
    ],
)
def test_quota_changes_are_classified(
    write_contract: WriteContract, old: str | None, new: str | None, expected: set[tuple[str, str]]
) -> None:
    before = load_contract(write_contract(replace=_with_quota(old), name="old.yaml"), resolve_bindings=False).model
    after = load_contract(write_contract(replace=_with_quota(new), name="new.yaml"), resolve_bindings=False).model
    assert {(c.kind, c.message) for c in diff_contracts(before, after)} == expected
