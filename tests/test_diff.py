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


# Contract v2 (issue 15): any-of sequences, conditional approval, principal attributes.
_OP = "    scopes: [orders:write]\n"
_BINDING = "  python: tests.data.shop_backend\n"


def _with(text: str) -> dict[str, str]:
    return {_OP: _OP + text} if text else {}


def _attributes(text: str) -> dict[str, str]:
    return {_BINDING: _BINDING + f"principal:\n  attributes: {text}\n"}


_OPS = "  get_order:\n    kind: read\n"
_MORE_READS = (
    "  list_orders:\n    kind: read\n    doc: All orders.\n    returns: list[Order]\n"
    "  find_order:\n    kind: read\n    doc: Find an order.\n    params: {q: str}\n    returns: Order\n"
)
_ANY = "{any: [get_order, list_orders]}"
_APPROVE = "    requires_approval: {when: entity.total > 50000, reason: a large order}\n"

V2_CASES = [
    pytest.param(
        "    after: [get_order]\n",
        f"    after: {_ANY}\n",
        {("relaxation", "sequence rule after 'get_order' loosened to after one of get_order, list_orders")},
        id="all_of_to_any_of",
    ),
    pytest.param(
        f"    after: {_ANY}\n",
        "    after: {any: [get_order, list_orders, find_order]}\n",
        {
            (
                "relaxation",
                "sequence rule after one of get_order, list_orders loosened to after one of find_order, get_order, "
                "list_orders",
            )
        },
        id="any_of_member_added",
    ),
    pytest.param(
        "    after: {any: [get_order, list_orders, find_order]}\n",
        f"    after: {_ANY}\n",
        {
            (
                "breaking",
                "sequence rule after one of find_order, get_order, list_orders narrowed to after one of get_order, "
                "list_orders",
            )
        },
        id="any_of_member_removed",
    ),
    pytest.param(
        f"    after: {_ANY}\n",
        "    after: [get_order]\n",
        {("breaking", "sequence rule after one of get_order, list_orders narrowed to after 'get_order'")},
        id="any_of_to_all_of",
    ),
    pytest.param(
        "",
        f"    after: [find_order, {_ANY}]\n",
        {
            ("breaking", "sequence rule after 'find_order' added"),
            ("breaking", "sequence rule after one of get_order, list_orders added"),
        },
        id="any_of_added",
    ),
    pytest.param(
        f"    after: {_ANY}\n",
        "",
        {("relaxation", "sequence rule after one of get_order, list_orders removed")},
        id="any_of_removed",
    ),
    pytest.param(
        "    requires_approval: true\n",
        _APPROVE,
        {("relaxation", "requires approval only when `entity.total > 50000` (was: always)")},
        id="approval_true_to_conditional",
    ),
    pytest.param(
        _APPROVE,
        "    requires_approval: true\n",
        {("breaking", "now requires approval always (was: when `entity.total > 50000`)")},
        id="approval_conditional_to_true",
    ),
    pytest.param(
        "",
        _APPROVE,
        {("breaking", "now requires approval when `entity.total > 50000`")},
        id="approval_conditional_added",
    ),
    pytest.param(_APPROVE, "", {("relaxation", "no longer requires approval")}, id="approval_conditional_removed"),
    pytest.param(
        _APPROVE,
        _APPROVE.replace("50000", "90000"),
        {
            (
                "relaxation",
                "approval condition changed from `entity.total > 50000` to `entity.total > 90000` (the bound on "
                "entity.total is narrower: approval for fewer calls)",
            )
        },
        id="approval_threshold_raised",
    ),
    pytest.param(
        _APPROVE,
        _APPROVE.replace("entity.total > 50000", "params.reason == 'fraud'"),
        {
            (
                "breaking",
                "approval condition changed from `entity.total > 50000` to `params.reason == 'fraud'` (may ask "
                "approval for more calls)",
            ),
            (
                "relaxation",
                "approval condition changed from `entity.total > 50000` to `params.reason == 'fraud'` (may ask "
                "approval for fewer calls)",
            ),
        },
        id="approval_condition_rewritten",
    ),
    pytest.param(
        _APPROVE,
        _APPROVE.replace("a large order", "a big order"),
        {("additive", "approval reason reworded")},
        id="approval_reason_reworded",
    ),
]


@pytest.mark.parametrize(("old_rule", "new_rule", "expected"), V2_CASES)
def test_v2_rules_are_classified(
    write_contract: WriteContract, old_rule: str, new_rule: str, expected: set[tuple[str, str]]
) -> None:
    reads = {_OPS: _MORE_READS + _OPS}
    old = load_contract(write_contract(replace={**reads, **_with(old_rule)}, name="old.yaml"), resolve_bindings=False)
    new = load_contract(write_contract(replace={**reads, **_with(new_rule)}, name="new.yaml"), resolve_bindings=False)
    assert {(c.kind, c.message) for c in diff_contracts(old.model, new.model)} == expected


def test_principal_attribute_changes_are_classified(write_contract: WriteContract) -> None:
    old = load_contract(write_contract(replace=_attributes("{limit: money, region: str}"), name="old.yaml"))
    new = load_contract(write_contract(replace=_attributes("{limit: int, tier: str}"), name="new.yaml"))
    assert {(c.kind, c.where, c.message) for c in diff_contracts(old.model, new.model)} == {
        (
            "breaking",
            "principal.attributes.limit",
            "principal attribute 'limit' type changed from money to int: bound values may no longer be valid",
        ),
        ("additive", "principal.attributes.region", "principal attribute 'region' removed"),
        ("additive", "principal.attributes.tier", "principal attribute 'tier' added (str)"),
    }


def _approvals(block: str | None) -> dict[str, str]:
    return {} if block is None else {"boundaries:\n": f"approvals: {block}\nboundaries:\n"}


@pytest.mark.parametrize(
    ("old_block", "new_block", "expected"),
    [
        pytest.param(
            "{scope: shop:approve}",
            "{scope: shop:review}",
            {("breaking", "approvals.scope", "approver scope changed from shop:approve to shop:review")},
            id="another-approver-scope-breaks",
        ),
        pytest.param(
            None,
            "{scope: shop:approve, expires: 24h}",
            set(),
            id="the-defaults-written-out-change-nothing",
        ),
        pytest.param(
            "{expires: 24h}",
            "{expires: 7d}",
            {
                (
                    "relaxation",
                    "approvals.expires",
                    "approval expiry changed from 24h to 7d (longer: a request may be approved later)",
                )
            },
            id="a-longer-expiry-relaxes",
        ),
        pytest.param(
            None,
            "{expires: 30m}",
            {
                (
                    "breaking",
                    "approvals.expires",
                    "approval expiry changed from 24h to 30m (shorter: a request expires sooner)",
                )
            },
            id="a-shorter-expiry-tightens",
        ),
    ],
)
def test_approvals_block_changes_are_classified(
    write_contract: WriteContract, old_block: str | None, new_block: str, expected: set[tuple[str, str, str]]
) -> None:
    old = load_contract(write_contract(replace=_approvals(old_block), name="old.yaml"), resolve_bindings=False)
    new = load_contract(write_contract(replace=_approvals(new_block), name="new.yaml"), resolve_bindings=False)
    assert {(c.kind, c.where, c.message) for c in diff_contracts(old.model, new.model)} == expected
