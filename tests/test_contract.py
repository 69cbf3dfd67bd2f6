"""The contract loader and checker: malformed contracts, each with its exact message."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgspec
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from charter.compiler import compile_contract
from charter.compiler.artifact import ApprovalPolicy
from charter.contract import Contract, SemVer, load_contract
from charter.contract.cel_guards import GUARD_FUNCTIONS, PRINCIPAL_FIELDS, check_guard
from charter.contract.types import TypeRef
from charter.errors import ContractError
from tests.conftest import ROOT, WriteContract

# Each case mutates tests/data/base.yaml and expects exactly these problems,
# as "line:column: message" after the file name.
MALFORMED = [
    pytest.param(
        {"      total: money\n": "      total: money\n      total: int\n"},
        ["14:7: duplicate key 'total' (first defined at line 13)"],
        id="duplicate_key",
    ),
    pytest.param(
        {"to: cancelled}": "to: canceled}"},
        ["21:50: transition 'cancel' names unknown state 'canceled' (did you mean 'cancelled'?)"],
        id="unknown_state",
    ),
    pytest.param(
        {"from: [pending, confirmed], to: cancelled": "from: [pending, confirmd], to: cancelled"},
        ["21:34: transition 'cancel' names unknown state 'confirmd' (did you mean 'confirmed'?)"],
        id="unknown_state_in_from",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: entity.totl <= 100000"},
        ["40:15: guard 'small_orders_only': 'entity' has no field 'totl' (did you mean 'total'?)"],
        id="guard_unknown_field",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: entty.total <= 100000"},
        [
            "40:15: guard 'small_orders_only': unknown name 'entty' (did you mean 'entity'?); this guard may use params, entity, principal"
        ],
        id="guard_unknown_name",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: entity.total <= "},
        ["40:15: guard 'small_orders_only': CEL syntax error at column 16: mismatched input '<EOF>'"],
        id="guard_syntax_error",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: params.reason > 3"},
        [
            "40:15: guard 'small_orders_only': type error: No such overload: the operation is not defined for the given operand types (CEL never converts types; money is an int of cents in guards)"
        ],
        id="guard_type_mismatch",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: entity.total + 1"},
        ["40:15: guard 'small_orders_only': gives int, but a guard must give true or false"],
        id="guard_not_boolean",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: isSmall(entity.total)"},
        ["40:15: guard 'small_orders_only': unknown function 'isSmall'; guards may call " + ", ".join(GUARD_FUNCTIONS)],
        id="guard_unknown_function",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: entity.total.cents > 0"},
        ["40:15: guard 'small_orders_only': 'entity.total' is money and has no field 'cents'"],
        id="guard_field_of_scalar",
    ),
    pytest.param(
        {"version: 1.0.0": "version: 1.0"},
        ["2:10: version '1.0' is not semantic versioning: write MAJOR.MINOR.PATCH, e.g. 1.0.0"],
        id="bad_semver",
    ),
    pytest.param(
        {"version: 1.0.0": "version: v1"},
        ["2:10: version 'v1' is not semantic versioning: write MAJOR.MINOR.PATCH, e.g. 1.0.0"],
        id="bad_semver_text",
    ),
    pytest.param(
        {"    enforced_by: [{transition: Order.cancel}]\n": ""},
        [
            "44:5: boundary 'no_late_cancel' is enforced by no rule: add `enforced_by:` (a transition, guard, sequence, approval or scope) or mark it `advisory: true`"
        ],
        id="unenforced_boundary",
    ),
    pytest.param(
        {"{transition: Order.cancel}": "{transition: Order.cancle}"},
        [
            "46:32: boundary 'no_late_cancel' is enforced by unknown transition 'Order.cancle' (write Entity.transition) (did you mean 'Order.cancel'?)"
        ],
        id="boundary_unknown_transition",
    ),
    pytest.param(
        {"{transition: Order.cancel}": "{guard: small_order_only}"},
        [
            "46:27: boundary 'no_late_cancel' is enforced by unknown guard 'small_order_only' (did you mean 'small_orders_only'?)"
        ],
        id="boundary_unknown_guard",
    ),
    pytest.param(
        {"  cancel_order:\n    kind: write": "  cancel_ordr:\n    kind: write"},
        [
            "7:11: binding 'tests.data.shop_backend:cancel_ordr' does not resolve: module 'tests.data.shop_backend' defines no function 'cancel_ordr' (did you mean 'cancel_order'?)"
        ],
        id="binding_missing_function",
    ),
    pytest.param(
        {"python: tests.data.shop_backend": "python: tests.data.no_such_backend"},
        [
            "7:11: binding module 'tests.data.no_such_backend' cannot be bound: no such module in the contract's folder, a folder above it, or on CHARTER_BACKEND_PATH (set it to the folder your backend package is in)"
        ],
        id="binding_missing_module",
    ),
    pytest.param(
        {
            "    scopes: [orders:write]\n": "    scopes: [orders:write]\n    binding: {python: tests.data.shop_backend}\n"
        },
        ["43:23: binding 'tests.data.shop_backend' of 'cancel_order' must be 'package.module:function'"],
        id="binding_op_format",
    ),
    pytest.param(
        {"owners:": "owner:"},
        ["1:1: missing required key 'owners'", "4:1: unknown key 'owner' (did you mean 'owners'?)"],
        id="unknown_top_level_key",
    ),
    pytest.param(
        {"    transition: cancel\n": "    transtion: cancel\n"},
        ["37:5: operations.cancel_order: unknown key 'transtion' (did you mean 'transition'?)"],
        id="unknown_operation_key",
    ),
    pytest.param(
        {"summary: A small shop used by the malformed-contract tests.\n": ""},
        ["1:1: missing required key 'summary'"],
        id="missing_required_key",
    ),
    pytest.param(
        {"      total: money": "      total: mony"},
        ["13:14: field 'Order.total' has unknown type 'mony' (did you mean 'money'?)"],
        id="unknown_field_type",
    ),
    pytest.param(
        {"      total: money": "      total: list[money"},
        [
            "13:14: field 'Order.total': type 'list[money' does not parse: expected a primitive (str, int, float, bool, money, datetime, date), a declared name, list[T] or T?"
        ],
        id="unparseable_type",
    ),
    pytest.param(
        {"    params: {id: int}\n    returns: Order": "    params: {id: str}\n    returns: Order"},
        ["28:18: key param 'get_order.id' is str but Order.id is int"],
        id="key_type_mismatch",
    ),
    pytest.param(
        {
            "    entity: Order\n    key: id\n    params: {id: int, reason: str}": "    entity: Ordr\n    key: id\n    params: {id: int, reason: str}"
        },
        [
            "33:13: operation 'cancel_order' acts on unknown entity 'Ordr' (did you mean 'Order'?)",
            "37:17: operation 'cancel_order' performs transition 'cancel' but acts on no entity; add `entity:`",
            "40:15: guard 'small_orders_only': unknown name 'entity': operation 'cancel_order' reads no existing entity (it needs `entity:` and `key:`), so this guard may use params, principal",
        ],
        id="unknown_entity",
    ),
    pytest.param(
        {"    returns: Order\n  cancel_order:": "    returns: Order\n    transition: confirm\n  cancel_order:"},
        ["30:17: read operation 'get_order' cannot perform a transition; make it kind: write"],
        id="transition_on_read",
    ),
    pytest.param(
        {"    transition: cancel\n": "    transition: cancell\n"},
        ["37:17: operation 'cancel_order' performs unknown transition 'cancell' of Order (did you mean 'cancel'?)"],
        id="unknown_transition",
    ),
    pytest.param(
        {"initial: pending": "initial: new"},
        ["18:16: initial state 'new' of Order is not one of its states"],
        id="initial_not_a_state",
    ),
    pytest.param(
        {"    scopes: [orders:write]\n": "    scopes: [orders:write]\n    after: [get_ordr]\n"},
        ["43:13: operation 'cancel_order' must run after unknown operation 'get_ordr' (did you mean 'get_order'?)"],
        id="after_unknown_operation",
    ),
    pytest.param(
        {"states: [pending, confirmed, dispatched, cancelled]": "states: [pending, confirmed, dispatched, pending]"},
        ["17:48: state 'pending' is listed twice", "21:50: transition 'cancel' names unknown state 'cancelled'"],
        id="duplicate_state",
    ),
    pytest.param(
        {"      note: str?\n": "      note: str?\n      status: str\n"},
        ["15:7: field 'Order.status' is the lifecycle's state field; declare it only under lifecycle"],
        id="state_field_declared_twice",
    ),
    pytest.param(
        {"boundaries:": "limits: {max_calls: 2, max_writes: 3}\nboundaries:"},
        ["43:36: limits.max_writes (3) exceeds limits.max_calls (2)"],
        id="writes_exceed_calls",
    ),
    pytest.param(
        {"    kind: write": "    kind: delete"},
        ["31:11: operations.cancel_order.kind: expected 'read' or 'write', got 'delete'"],
        id="invalid_kind",
    ),
    pytest.param(
        {"  cancel_order:\n    kind: write": "  class:\n    kind: write"},
        ["30:3: operation name 'class' must be a snake_case identifier and not a Python keyword"],
        id="keyword_operation_name",
    ),
    pytest.param(
        {
            "    scopes: [orders:write]\n": "    scopes: [orders:write]\n  confirm_order:\n    kind: write\n    doc: Confirm.\n    entity: Order\n    key: id\n    params: {id: int}\n    transition: confirm\n    guards:\n      - {id: small_orders_only, when: params.id > 0, message: Positive ids.}\n    binding: {python: 'tests.data.shop_backend:get_order'}\n    scopes: [orders:write]\n"
        },
        [
            "51:14: guard id 'small_orders_only' is already used by operation 'cancel_order'; guard ids are unique in a contract"
        ],
        id="duplicate_guard_id",
    ),
    pytest.param(
        {"  get_order:\n    kind: read": "  get_order:\n   kind: read\n    doc: x"},
        ["25:8: invalid YAML: mapping values are not allowed here"],
        id="invalid_yaml",
    ),
    pytest.param(
        {"    scopes: [orders:write]": "    scopes: orders:write"},
        ["42:13: operations.cancel_order.scopes: expected a list, got 'orders:write'"],
        id="scopes_not_a_list",
    ),
    pytest.param(
        {"    returns: Order\n  cancel_order:": "    returns: list[Order]\n  cancel_order:"},
        [
            "30:3: operation 'cancel_order' depends on the state of Order, but no read operation returns one Order by its key for the gate to check it; add one (kind: read, entity: Order, key: ..., returns: Order)"
        ],
        id="state_read_without_reader",
    ),
    pytest.param(
        {"    params: {id: int, reason: str}": "    params: {id: int, reason: str?}"},
        [
            "35:34: invalid YAML: expected ',' or '}', but got '?' (inside {...} an optional type must be quoted, e.g. 'str?', or written one per line)"
        ],
        id="optional_in_flow_mapping",
    ),
    pytest.param(
        {"    params: {id: int, reason: str}": "    params: {id: int, reason: str, tags: list[str]}"},
        [
            "35:46: invalid YAML: expected ',' or '}', but got '[' (inside {...} a list type must be quoted, e.g. 'list[str]', or written one per line)"
        ],
        id="list_in_flow_mapping",
    ),
    pytest.param(
        {
            "    params: {id: int, reason: str}": "    params: {id: int, reason: str, amount: 'money?'}",
            "when: entity.total <= 100000": "when: params.amount > 0",
        },
        ["40:15: guard 'small_orders_only': params.amount may be null; test params.amount != null first"],
        id="guard_optional_param_may_be_null",
    ),
    pytest.param(
        {
            "    params: {id: int, reason: str}": "    params: {id: int, reason: str, amount: 'money?'}",
            "when: entity.total <= 100000": "when: has(params.amount) && params.amount > 0",
        },
        ["40:15: guard 'small_orders_only': params.amount may be null; test params.amount != null first"],
        id="guard_has_does_not_test_null",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: size(entity.note) > 0"},
        ["40:15: guard 'small_orders_only': entity.note may be null; test entity.note != null first"],
        id="guard_optional_entity_field_may_be_null",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: sise(params.reason) > 0"},
        [
            "40:15: guard 'small_orders_only': unknown function 'sise' (did you mean 'size'?); guards may call "
            + ", ".join(GUARD_FUNCTIONS)
        ],
        id="guard_unknown_function_did_you_mean",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: entity.total <= 500.0"},
        [
            "40:15: guard 'small_orders_only': entity.total is money, compared with the float 500.0; money is integer cents in guards: write 50000 for 500.00"
        ],
        id="guard_money_against_float",
    ),
    pytest.param(
        {"{transition: Order.cancel}": "{approval: cancel_order}"},
        [
            "46:30: boundary 'no_late_cancel' is enforced by the approval of 'cancel_order', which does not require approval; add `requires_approval: true` to it"
        ],
        id="boundary_approval_not_required",
    ),
    pytest.param(
        {"{transition: Order.cancel}": "{approval: cancel_ordr}"},
        [
            "46:30: boundary 'no_late_cancel' is enforced by the approval rule of unknown operation 'cancel_ordr' (did you mean 'cancel_order'?)"
        ],
        id="boundary_approval_unknown_operation",
    ),
    pytest.param(
        {"{transition: Order.cancel}": "{scope: get_order}"},
        ["46:27: boundary 'no_late_cancel' is enforced by the scopes of 'get_order', which lists none; add `scopes:`"],
        id="boundary_scope_without_scopes",
    ),
    pytest.param(
        {"{transition: Order.cancel}": "{scope: cancel_order, guard: small_orders_only}"},
        [
            "46:19: boundaries.0.enforced_by.0: a rule names exactly one of transition, guard, sequence, approval, scope, quota, provenance"
        ],
        id="boundary_rule_names_two_kinds",
    ),
    pytest.param(
        {"      note: str?\n": "      note: str?\n      __secret: str\n"},
        ["15:7: field name '__secret' of Order must be a Python identifier not starting with '__'"],
        id="dunder_field_name",
    ),
    pytest.param(
        {"    params: {id: int, reason: str}": "    params: {id: int, reason: str, charter: str}"},
        [
            "35:36: param name 'charter' of cancel_order is reserved: Python bindings receive the call's context under that name"
        ],
        id="reserved_param_name",
    ),
    pytest.param(
        {"contract: shop": "contract: json"},
        [
            "1:11: contract name 'json' is taken in a program (a Python builtin, an importable module or a runtime name); choose another, e.g. 'orders'"
        ],
        id="contract_named_like_a_module",
    ),
    pytest.param(
        {"entities:\n  Order:": "enums:\n  Literal: [a, b]\nentities:\n  Order:"},
        ["9:3: type name 'Literal' must be PascalCase, e.g. 'Order', and not a reserved name"],
        id="reserved_type_name",
    ),
]

# Who may call a write is always said: scopes, or `public: true` (issue 13, the OpenAPI importer's fault).
MALFORMED += [
    pytest.param(
        {"    scopes: [orders:write]\n": ""},
        [
            "30:3: write operation 'cancel_order' lists no scopes, so any caller could run it: add `scopes: [...]` naming what a caller must hold, or `public: true` if anyone may"
        ],
        id="write_without_scopes",
    ),
    pytest.param(
        {"    scopes: [orders:write]\n": "    scopes: []\n    public: false\n"},
        [
            "30:3: write operation 'cancel_order' lists no scopes, so any caller could run it: add `scopes: [...]` naming what a caller must hold, or `public: true` if anyone may"
        ],
        id="write_with_empty_scopes_not_public",
    ),
    pytest.param(
        {"    scopes: [orders:write]\n": "    scopes: [orders:write]\n    public: true\n"},
        [
            "43:13: operation 'cancel_order' is public but lists scopes orders:write: remove `public: true` or the scopes"
        ],
        id="public_with_scopes",
    ),
    pytest.param(
        {"    scopes: [orders:write]\n": "    public: yes\n"},
        ["42:13: operations.cancel_order.public: expected true or false, got 'yes'"],
        id="public_not_a_bool",
    ),
    pytest.param(
        {"boundaries:": "to_decide: [scopes, '']\nboundaries:"},
        ["43:21: to_decide.1: String should have at least 1 character"],
        id="to_decide_empty_item",
    ),
    pytest.param(
        {
            "when: entity.total <= 100000": "when: entity.total + 100 <= params.ratio",
            "params: {id: int, reason: str}": "params: {id: int, reason: str, ratio: float}",
        },
        [
            "40:15: guard 'small_orders_only': entity.total is money, mixed with the float params.ratio; money is "
            "integer cents in guards and CEL would compare the cents with the float: keep the float out of money "
            "arithmetic, or convert it to cents explicitly, e.g. int(params.ratio * 100.0)"
        ],
        id="guard_money_against_float_value",
    ),
    pytest.param(
        {
            "entities:\n": "records:\n"
            + "".join(f"  R{i}: {{next: R{i + 1}, skip: 'R1?', many: 'list[R1]'}}\n" for i in range(1, 16))
            + "  R16: {v: int}\nentities:\n",
            "params: {id: int, reason: str}": "params: {id: int, reason: str, deep: R1}",
        },
        [
            "52:42: param 'cancel_order.deep' (R1) nests 17 levels deep even with every optional field null and "
            "every list empty, but a call's arguments may nest at most 16 levels, so every call would be refused; "
            "flatten the nested records, or make a deep field optional or a list"
        ],
        id="param_nested_deeper_than_a_call_may_be",
    ),
    pytest.param(
        {"python: tests.data.shop_backend": "python: subprocess:getoutput"},
        [
            "7:11: binding module 'subprocess' cannot be bound: 'subprocess' is part of Python's standard library (a "
            "module of yours by that name would shadow it); a contract binds only to its own backend code: write a "
            "function in a module under the contract's folder (or on CHARTER_BACKEND_PATH) and bind to that; and a "
            "contract's default binding names a module only ('package.module'); operations use module:<operation "
            "name>"
        ],
        id="default_binding_names_a_function_once_with_the_reason",
    ),
    pytest.param(
        {"python: tests.data.shop_backend": "python: tests.data.shop_backend:get_order"},
        [
            "7:11: the contract's default binding 'tests.data.shop_backend:get_order' must name a module only: a "
            "contract's default binding names a module only ('package.module'); operations use module:<operation "
            "name>, e.g. `binding: {python: tests.data.shop_backend}`"
        ],
        id="default_binding_names_a_function_once",
    ),
    pytest.param(
        {"params: {id: int, reason: str}": "params: {id: int, reason: {type: int, secret: true}}"},
        ["35:51: param 'cancel_order.reason' is secret, so it must be str or list[str] (a password, a token), not int"],
        id="secret_param_not_text",
    ),
    pytest.param(
        {"params: {id: int, reason: str}": "params: {id: {type: int, secret: true}, reason: str}"},
        [
            "35:38: param 'cancel_order.id' is secret, so it must be str or list[str] (a password, a token), not int",
            "35:38: param 'cancel_order.id' is the operation's key, which messages and receipts name; a key cannot "
            "be secret",
        ],
        id="secret_key_param",
    ),
    pytest.param(
        {
            "params: {id: int, reason: str}": "params: {id: int, reason: str, by: date}",
            "when: entity.total <= 100000": "when: params.by > '2026-01-01'",
        },
        [
            "40:15: guard 'small_orders_only': type error: No such overload: the operation is not defined for the "
            "given operand types (CEL never converts types; money is an int of cents in guards)"
        ],
        id="guard_date_compared_with_text",
    ),
    pytest.param(
        {"      note: str?\n": "      note: str?\n      due: Date\n"},
        ["15:12: field 'Order.due' has unknown type 'Date' (did you mean 'date'?)"],
        id="date_type_misspelled",
    ),
]


# Lookups (contract language v2): reads the gate performs for a guard, checked like guards.
_LOOKUP = "    lookups:\n      order: {operation: get_order, args: {id: params.id}}\n    guards:\n"
MALFORMED += [
    pytest.param(
        {
            "    guards:\n": _LOOKUP.replace(
                "order: {operation: get_order, args: {id: params.id}}",
                "again: {operation: cancel_order, args: {id: params.id, reason: params.reason}}",
            )
        },
        [
            "39:26: lookup 'again' of 'cancel_order' names write operation 'cancel_order'; only a `kind: read` "
            "operation may be looked up (the gate performs a lookup before deciding, so it must not act)"
        ],
        id="lookup_of_a_write",
    ),
    pytest.param(
        {"    guards:\n": _LOOKUP.replace("get_order", "get_ordr")},
        ["39:26: lookup 'order' of 'cancel_order' names unknown operation 'get_ordr' (did you mean 'get_order'?)"],
        id="lookup_of_an_unknown_operation",
    ),
    pytest.param(
        {
            "    guards:\n": _LOOKUP.replace("params.id", "params.reason"),
            "when: entity.total <= 100000": "when: lookups.order.total <= 100000",
        },
        ["39:48: lookup 'order' of 'cancel_order', arg 'id': params.reason is str, but the param is int"],
        id="lookup_arg_of_the_wrong_type",
    ),
    pytest.param(
        {"    guards:\n": _LOOKUP, "when: entity.total <= 100000": "when: lookups.order.totl <= 100000"},
        ["42:15: guard 'small_orders_only': 'lookups.order' has no field 'totl' (did you mean 'total'?)"],
        id="lookup_guard_unknown_field",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: lookups.order.total <= 100000"},
        [
            "40:15: guard 'small_orders_only': unknown name 'lookups'; this guard may use params, entity, principal "
            "(declare the read under the operation's `lookups:`, e.g. `lookups: {x: {operation: a_read}}`)"
        ],
        id="guard_names_an_undeclared_lookup",
    ),
]


# Provenance (`from:` params, issue 15): each source must name a read's text field.
_REASON = "params: {id: int, reason: str}"
MALFORMED += [
    pytest.param(
        {_REASON: "params: {id: int, reason: {type: str, from: [get_order]}}"},
        [
            "35:50: param 'cancel_order.reason': source 'get_order' names the whole result of get_order: any text "
            "anywhere in it would count, which would launder injected text (a search echoing its query, a "
            "document's sender); name one text field, e.g. 'get_order.note'"
        ],
        id="provenance_whole_operation",
    ),
    pytest.param(
        {_REASON: "params: {id: int, reason: {type: str, from: [get_order.total]}}"},
        [
            "35:50: param 'cancel_order.reason': source 'get_order.total' ends at money: provenance compares text; "
            "name a str or enum field"
        ],
        id="provenance_source_not_text",
    ),
    pytest.param(
        {_REASON: "params: {id: int, reason: {type: str, from: [cancel_order.reason]}}"},
        [
            "35:50: param 'cancel_order.reason': source 'cancel_order.reason': cancel_order is a write operation; a "
            "source is a read operation's result at a field path"
        ],
        id="provenance_write_operation",
    ),
    pytest.param(
        {_REASON: "params: {id: int, reason: {type: str, from: [get_order.nte]}}"},
        ["35:50: param 'cancel_order.reason': source 'get_order.nte': Order has no field 'nte' (did you mean 'note'?)"],
        id="provenance_unknown_field",
    ),
    pytest.param(
        {_REASON: "params: {id: int, reason: {type: int, from: [request]}}"},
        ["35:49: param 'cancel_order.reason' is int: provenance (`from:`) applies to str, enum and list[str] params"],
        id="provenance_on_an_int",
    ),
    pytest.param(
        {"enforced_by: [{transition: Order.cancel}]": "enforced_by: [{provenance: cancel_order.reason}]"},
        [
            "46:32: boundary 'no_late_cancel' is enforced by the provenance of 'cancel_order.reason', but param "
            "'reason' of cancel_order declares no `from:`"
        ],
        id="provenance_boundary_without_from",
    ),
]


# Quotas over time (issue 15): each is added after cancel_order's scopes.
_SCOPES = "    scopes: [orders:write]\n"
_DAILY = "{id: daily_cancels, count: true, per: [params.id], window: 24h, max: 5, message: At most five a day.}"


def _quota(body: str) -> dict[str, str]:
    return {_SCOPES: f"{_SCOPES}    quotas:\n      - {body}\n"}


MALFORMED += [
    pytest.param(
        _quota("{id: daily_cancels, sum: params.reason, per: [params.id], window: 24h, max: 5, message: M.}"),
        [
            "44:34: quota 'daily_cancels': sum `params.reason` is str, but a sum must be an int or money (money "
            "counts in integer cents); use `count: true` to count calls"
        ],
        id="quota_sum_not_numeric",
    ),
    pytest.param(
        _quota("{id: daily_cancels, sum: 'params.reason + \"x\"', per: [params.id], window: 24h, max: 5, message: M.}"),
        [
            "44:34: quota 'daily_cancels': sum `params.reason + \"x\"` is str, but a sum must be an int or money "
            "(money counts in integer cents); use `count: true` to count calls"
        ],
        id="quota_sum_expression_not_numeric",
    ),
    pytest.param(
        _quota("{id: daily_cancels, sum: params.amout, per: [params.id], window: 24h, max: 5, message: M.}"),
        ["44:34: quota 'daily_cancels': sum: 'params' has no field 'amout'"],
        id="quota_sum_unknown_field",
    ),
    pytest.param(
        {
            **_quota("{id: daily_cancels, sum: params.tip, per: [params.id], window: 24h, max: 5, message: M.}"),
            "params: {id: int, reason: str}": "params: {id: int, reason: str, tip: 'money?'}",
        },
        [
            "44:34: quota 'daily_cancels': sum: may be null when an optional value is; test it first, e.g. `x != null ? x : 0`"
        ],
        id="quota_sum_nullable",
    ),
    pytest.param(
        _quota("{id: daily_cancels, count: true, per: [principal.scopes], window: 24h, max: 5, message: M.}"),
        [
            "44:48: quota 'daily_cancels': per key `principal.scopes` is list[str], but a key must be a scalar: str, "
            "int, bool, enum, date"
        ],
        id="quota_key_not_scalar",
    ),
    pytest.param(
        _quota("{id: daily_cancels, count: true, per: [params.id], window: 1 day, max: 5, message: M.}"),
        [
            "44:68: quota 'daily_cancels': window '1 day' is not one of <n>m, <n>h or <n>d (e.g. 90m, 24h, 30d; a "
            "sliding window on the gate's UTC clock) or run (this run only)"
        ],
        id="quota_window_malformed",
    ),
    pytest.param(
        _quota("{id: daily_cancels, count: true, per: [params.id], window: 400d, max: 5, message: M.}"),
        ["44:68: quota 'daily_cancels': window '400d' is longer than 366 days, the longest a quota may count"],
        id="quota_window_too_long",
    ),
    pytest.param(
        _quota("{id: daily_cancels, count: true, per: [params.id], window: 24h, max: 0, message: M.}"),
        ["44:78: quota 'daily_cancels': max 0 refuses every call; remove the operation or its scopes instead"],
        id="quota_max_zero",
    ),
    pytest.param(
        _quota("{id: DailyCancels, count: true, per: [params.id], window: 24h, max: 5, message: M.}"),
        ["44:14: quota id 'DailyCancels' must be lower snake_case"],
        id="quota_id_not_snake_case",
    ),
    pytest.param(
        _quota("{id: daily_cancels, count: true, sum: params.id, per: [params.id], window: 24h, max: 5, message: M.}"),
        ["44:9: operations.cancel_order.quotas.0: a quota names exactly one of `sum: <CEL>` or `count: true`"],
        id="quota_sum_and_count",
    ),
    pytest.param(
        {
            **_quota(_DAILY),
            "    returns: Order\n  cancel_order:": f"    returns: Order\n    quotas:\n      - {_DAILY}\n  cancel_order:",
        },
        [
            "46:14: quota id 'daily_cancels' is already used by operation 'get_order'; quota ids are unique in a "
            "contract (the audit log counts by contract name and quota id)"
        ],
        id="quota_id_twice",
    ),
    pytest.param(
        {
            **_quota(_DAILY),
            "enforced_by: [{transition: Order.cancel}]": "enforced_by: [{transition: Order.cancel}, {quota: daily_cancel}]",
        },
        [
            "48:55: boundary 'no_late_cancel' is enforced by unknown quota 'daily_cancel' (did you mean 'daily_cancels'?)"
        ],
        id="boundary_unknown_quota",
    ),
]


# Contract v2 messages in the author's terms (issue 15, M5): one message where pydantic gave
# one per union member, and the contract's keys instead of pydantic's wording.
_PARAMS = "params: {id: int, reason: str}"
_FROM = "params: {id: int, reason: {type: str, from: [request]}}"
MALFORMED += [
    pytest.param(
        {_PARAMS: "params: {id: int, reason: {type: str, from: [{sorce: x}]}}"},
        ["35:51: operations.cancel_order.params.reason.from.0: unknown key 'sorce' (did you mean 'source'?)"],
        id="from_item_misspelt_key",
    ),
    pytest.param(
        {_PARAMS: "params: {id: int, reason: {type: str, from: [[request]]}}"},
        [
            "35:50: operations.cancel_order.params.reason.from.0: expected a source (request, principal or "
            "<read>.<field>) or {source: <source>, match: exact|token}, got a list"
        ],
        id="from_item_of_no_form",
    ),
    pytest.param(
        {_PARAMS: "params: {id: int, reason: {tpe: str}}"},
        ["35:32: operations.cancel_order.params.reason: unknown key 'tpe' (did you mean 'type'?)"],
        id="param_mapping_misspelt_key",
    ),
    pytest.param(
        {_PARAMS: "params: {id: int, reason: [str]}"},
        [
            "35:31: operations.cancel_order.params.reason: expected a type (e.g. str or 'money?') or {type: <type>, "
            "from: [<source>, ...], secret: true}, got a list"
        ],
        id="param_of_no_form",
    ),
    pytest.param(
        _quota("{id: daily_cancels, count: true, per: [params.id], window: 24h, max: -1, message: M.}"),
        ["44:78: operations.cancel_order.quotas.0.max: must be 0 or more, got -1"],
        id="quota_max_negative",
    ),
    pytest.param(
        _quota("{id: daily_cancels, count: true, per: [params.id], window: 24h, max: 2000.00, message: M.}"),
        [
            "44:78: operations.cancel_order.quotas.0.max: expected an integer, got 2000.0: a max is a count of "
            "calls, or for a money sum integer cents (write 200000 for 2,000.00)"
        ],
        id="quota_max_as_money",
    ),
    pytest.param(
        _quota(
            "{id: daily_cancels, count: true, per: [params.id], window: 99999999999999999999999h, max: 5, message: M.}"
        ),
        [
            "44:68: quota 'daily_cancels': window '99999999999999999999999h' is longer than 366 days, the longest a "
            "quota may count"
        ],
        id="quota_window_far_too_long",
    ),
    pytest.param(
        {_SCOPES: _SCOPES + "    requires_approval: {when: 'foo.bar > 1', reason: big}\n"},
        [
            "43:31: requires_approval of 'cancel_order': unknown name 'foo'; this condition may use params, entity, "
            "principal"
        ],
        id="approval_condition_unknown_name",
    ),
    pytest.param(
        {_PARAMS: _FROM, "when: entity.total <= 100000": "when: \"'request' in provenance.id\""},
        ["40:15: guard 'small_orders_only': param id declares no `from:`, so provenance.id does not exist"],
        id="provenance_of_a_param_without_from",
    ),
    pytest.param(
        {"when: entity.total <= 100000": "when: \"'request' in provenance.reason\""},
        [
            "40:15: guard 'small_orders_only': no param of this operation declares `from:`, so `provenance` does "
            "not exist here"
        ],
        id="provenance_without_any_from",
    ),
    pytest.param(
        {
            _PARAMS: _FROM,
            _SCOPES: _SCOPES + "    requires_approval: {when: \"'request' in provenance.id\", reason: big}\n",
        },
        ["43:31: requires_approval of 'cancel_order': param id declares no `from:`, so provenance.id does not exist"],
        id="approval_provenance_of_a_param_without_from",
    ),
]


@pytest.mark.parametrize(
    ("per", "expected"),
    [
        (
            "[principal.id]",
            "44:47: warning: quota 'daily_cancels' is keyed only by the principal, so a second token for the same "
            "account doubles it; key it by what it protects, e.g. per: [params.account]",
        ),
        (
            "[]",
            "44:14: warning: quota 'daily_cancels' has no `per` keys, so every caller shares one total; key it by "
            "what it protects, e.g. per: [params.account]",
        ),
        ("[params.id, principal.id]", None),
    ],
)
def test_quota_keyed_only_by_principal_is_warned(write_contract: WriteContract, per: str, expected: str | None) -> None:
    path = write_contract(replace=_quota(_DAILY.replace("per: [params.id]", f"per: {per}")))
    warnings = [f"{w.line}:{w.column}: {w.message}" for w in load_contract(path).warnings]
    assert warnings == ([expected] if expected else [])


# Contract v2 (issue 15): principal attributes, any-of sequences, conditional approval.
_ATTRS = "  python: tests.data.shop_backend\n"
_OP = "    scopes: [orders:write]\n"


def _attributes(text: str) -> dict[str, str]:
    return {_ATTRS: _ATTRS + f"principal:\n  attributes: {text}\n"}


MALFORMED += [
    pytest.param(
        _attributes("{DailyLimit: money}"),
        ["9:16: principal attribute name 'DailyLimit' must be lower snake_case, e.g. 'daily_limit'"],
        id="attribute_name_not_snake_case",
    ),
    pytest.param(
        _attributes("{daily_limit: mony}"),
        ["9:29: principal attribute 'daily_limit' has unknown type 'mony' (did you mean 'money'?)"],
        id="attribute_unknown_type",
    ),
    pytest.param(
        _attributes("{limits: 'list[money]'}"),
        [
            "9:24: principal attribute 'limits' is list[money], but an attribute is one bound value (`--attr "
            "limits=VALUE`): declare a primitive type or an enum, not optional, not a list or record"
        ],
        id="attribute_list",
    ),
    pytest.param(
        {
            **_attributes("{daily_limit: money}"),
            "when: entity.total <= 100000": "when: entity.total <= principal.attributes.daily_limt",
        },
        [
            "42:15: guard 'small_orders_only': 'principal.attributes' has no field 'daily_limt' (did you mean "
            "'daily_limit'?)"
        ],
        id="guard_misspelt_attribute",
    ),
    pytest.param(
        {
            **_attributes("{region: str}"),
            "when: entity.total <= 100000": "when: entity.total <= principal.attributes.region",
        },
        [
            "42:15: guard 'small_orders_only': type error: No such overload: the operation is not defined for the "
            "given operand types (CEL never converts types; money is an int of cents in guards)"
        ],
        id="guard_attribute_type_mismatch",
    ),
    pytest.param(
        {_OP: _OP + "    after: {any: [get_ordr]}\n"},
        ["43:19: operation 'cancel_order' must run after unknown operation 'get_ordr' (did you mean 'get_order'?)"],
        id="after_any_unknown_operation",
    ),
    pytest.param(
        {_OP: _OP + "    after: [get_order, {any: [get_order, cancel_order]}]\n"},
        ["43:42: operation 'cancel_order' cannot require itself to run first"],
        id="after_any_itself",
    ),
    pytest.param(
        {_OP: _OP + "    after: {any: [get_order, get_order]}\n"},
        ["43:30: operation 'cancel_order': 'get_order' is listed twice in one any-of group"],
        id="after_any_listed_twice",
    ),
    pytest.param(
        {_OP: _OP + "    after: {any: []}\n"},
        ["43:18: operations.cancel_order.after.any: is empty; list at least 1 item"],
        id="after_any_empty",
    ),
    pytest.param(
        {_OP: _OP + "    requires_approval: {when: params.reson != '', reason: Asked twice.}\n"},
        ["43:31: requires_approval of 'cancel_order': 'params' has no field 'reson' (did you mean 'reason'?)"],
        id="approval_when_unknown_field",
    ),
    pytest.param(
        {_OP: _OP + "    requires_approval: {when: entity.total + 1, reason: Large.}\n"},
        ["43:31: requires_approval of 'cancel_order': gives int, but a guard must give true or false"],
        id="approval_when_not_boolean",
    ),
    pytest.param(
        {_OP: _OP + "    requires_approval: {when: entity.total > 100}\n"},
        ["43:24: missing required key 'reason' in operations.cancel_order.requires_approval"],
        id="approval_without_reason",
    ),
    pytest.param(
        {_OP: _OP + "    requires_approval: 3\n"},
        [
            "43:24: operations.cancel_order.requires_approval: expected true, false or {when: <CEL>, reason: <text>}, got 3"
        ],
        id="approval_of_no_form",
    ),
    pytest.param(
        {_OP: _OP + "    after: [get_order, 3]\n"},
        ["43:24: operations.cancel_order.after.1: expected an operation name or {any: [...]}, got 3"],
        id="after_item_of_no_form",
    ),
]


# Human approvals (issue 16): the contract's `approvals:` block.
_AT_END = "boundaries:\n"  # the block goes before it, so the lines above keep their numbers
_APPROVALS = "approvals: {scope: shop:approve, expires: 24h}\n" + _AT_END
MALFORMED += [
    pytest.param(
        {_AT_END: "approvals: {scope: Shop Approvers}\n" + _AT_END},
        ["43:20: approvals.scope 'Shop Approvers' must look like 'payments:approve' (lowercase, colon-separated)"],
        id="approvals_scope_malformed",
    ),
    pytest.param(
        {_AT_END: "approvals: {scope: 'shop:*'}\n" + _AT_END},
        ["43:20: approvals.scope 'shop:*' is a pattern; name the one scope an approver holds, e.g. 'payments:approve'"],
        id="approvals_scope_pattern",
    ),
    pytest.param(
        {_AT_END: "approvals: {expires: 1 day}\n" + _AT_END},
        ["43:22: approvals.expires '1 day' is not one of <n>m, <n>h or <n>d (e.g. 30m, 24h, 7d)"],
        id="approvals_expires_malformed",
    ),
    pytest.param(
        {_AT_END: "approvals: {expires: 31d}\n" + _AT_END},
        ["43:22: approvals.expires '31d' is longer than 30 days, the longest a request may wait"],
        id="approvals_expires_too_long",
    ),
    pytest.param(
        {_AT_END: "approvals: {expires: run}\n" + _AT_END},
        ["43:22: approvals.expires 'run' is not one of <n>m, <n>h or <n>d (e.g. 30m, 24h, 7d)"],
        id="approvals_expires_run",
    ),
    pytest.param(
        {_AT_END: "approvals: {scope: shop:approve, approvers: 2}\n" + _AT_END},
        ["43:34: approvals: unknown key 'approvers'"],
        id="approvals_unknown_key",
    ),
]


def test_an_approval_without_the_approvals_block_is_a_warning(write_contract: WriteContract) -> None:
    path = write_contract(replace={_OP: _OP + "    requires_approval: true\n"})
    assert [f"{w.line}:{w.column}: {w.message}" for w in load_contract(path).warnings] == [
        "43:24: warning: 'cancel_order' requires approval but the contract has no `approvals:` block, so its calls "
        "pause for a principal holding the default scope shop:approve and expire after 24h; declare them: "
        "`approvals: {scope: shop:approve, expires: 24h}`"
    ]
    with_block = write_contract(replace={_OP: _OP + "    requires_approval: true\n", _AT_END: _APPROVALS})
    assert load_contract(with_block).warnings == ()


def test_the_approvals_block_compiles_and_hashes_with_its_defaults(write_contract: WriteContract) -> None:
    base = compile_contract(load_contract(write_contract()))
    assert base.gate.approvals is None  # not written: the artifact is as before the block existed
    assert (base.gate.policy.scope, base.gate.policy.expires_seconds) == ("shop:approve", 86400)
    assert b'"approvals"' not in msgspec.json.encode(base.gate)
    written = compile_contract(load_contract(write_contract(replace={_AT_END: _APPROVALS})))
    implicit = compile_contract(load_contract(write_contract(replace={_AT_END: "approvals: {}\n" + _AT_END})))
    assert written.gate.approvals is not None
    assert (written.gate.approvals.scope, written.gate.approvals.expires_seconds) == ("shop:approve", 86400)
    assert written.sha256 == implicit.sha256 != base.sha256  # the defaults, written or not, hash the same
    other = compile_contract(
        load_contract(write_contract(replace={_AT_END: "approvals: {scope: shop:review, expires: 30m}\n" + _AT_END}))
    )
    assert other.gate.approvals == ApprovalPolicy(scope="shop:review", expires_seconds=1800)
    assert other.sha256 != written.sha256


def test_an_any_of_group_of_one_is_allowed_with_a_warning(write_contract: WriteContract) -> None:
    path = write_contract(replace={_OP: _OP + "    after: [{any: [get_order]}]\n"})
    checked = load_contract(path)
    assert [f"{w.line}:{w.column}: {w.message}" for w in checked.warnings] == [
        "43:19: warning: operation 'cancel_order' has an any-of group of one operation, 'get_order': it means the "
        "same as listing it (`after: [get_order]`)"
    ]


def test_a_long_approval_reason_is_a_warning(write_contract: WriteContract) -> None:
    reason = "the order is large and was placed by a new customer"
    path = write_contract(
        replace={
            _OP: _OP + f"    requires_approval: {{when: entity.total > 1, reason: {reason}}}\n",
            _AT_END: "approvals: {scope: shop:approve}\n" + _AT_END,
        }
    )
    assert [f"{w.line}:{w.column}: {w.message}" for w in load_contract(path).warnings] == [
        "43:57: warning: the approval reason of 'cancel_order' is 51 characters; the prompt shows it as `approval "
        "if <reason>` on the operation's line: keep it to 28 (about 8 tokens)"
    ]


def test_a_boundary_may_be_enforced_by_a_conditional_approval(write_contract: WriteContract) -> None:
    path = write_contract(
        replace={
            _OP: _OP + "    requires_approval: {when: entity.total > 50000, reason: a large order}\n",
            "enforced_by: [{transition: Order.cancel}]": "enforced_by: [{approval: cancel_order}]",
        }
    )
    assert load_contract(path).model.boundaries[0].enforced_by[0].approval == "cancel_order"


@pytest.mark.parametrize(("replace", "expected"), MALFORMED)
def test_malformed_contract_gets_exact_messages(
    write_contract: WriteContract, replace: dict[str, str], expected: list[str]
) -> None:
    path = write_contract(replace=replace)
    with pytest.raises(ContractError) as caught:
        load_contract(path)
    assert [f"{p.line}:{p.column}: {p.message}" for p in caught.value.problems] == expected
    assert all(p.file == str(path) for p in caught.value.problems)
    assert str(caught.value).splitlines() == [f"{path}:{line}" for line in expected]


def test_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 20


def test_base_contract_is_valid(write_contract: WriteContract) -> None:
    checked = load_contract(write_contract())
    assert (checked.name, checked.version) == ("shop", "1.0.0")
    assert str(checked.records["Order"]["status"]) == "OrderStatus"
    assert checked.enums["OrderStatus"] == ("pending", "confirmed", "dispatched", "cancelled")


@pytest.mark.parametrize("name", ["orders", "invoices"])
def test_example_contracts_check(name: str) -> None:
    checked = load_contract(ROOT / "contracts" / f"{name}.yaml")
    assert checked.name == name
    assert checked.model.operations


def test_empty_file(write_contract: WriteContract) -> None:
    with pytest.raises(ContractError, match=r"1:1: the file is empty"):
        load_contract(write_contract(""))


def test_not_a_mapping(write_contract: WriteContract) -> None:
    with pytest.raises(ContractError, match=r"1:1: a contract is a mapping"):
        load_contract(write_contract("- just\n- a list\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=r"nope.yaml:1:1: no such file"):
        load_contract(tmp_path / "nope.yaml")


def test_yaml_12_booleans_keep_state_names(write_contract: WriteContract) -> None:
    # YAML 1.1 would read `on` and `off` as booleans and the states would vanish.
    path = write_contract(
        replace={
            "states: [pending, confirmed, dispatched, cancelled]": "states: [pending, confirmed, dispatched, cancelled, on, off]"
        }
    )
    assert load_contract(path).enums["OrderStatus"][-2:] == ("on", "off")


def test_every_problem_is_reported_in_file_order(write_contract: WriteContract) -> None:
    path = write_contract(replace={"to: cancelled}": "to: canceled}", "initial: pending": "initial: new"})
    with pytest.raises(ContractError) as caught:
        load_contract(path)
    lines = [p.line for p in caught.value.problems]
    assert lines == sorted(lines)
    assert len(lines) == 2


def test_bindings_are_not_imported_at_check_time(write_contract: WriteContract, tmp_path: Path) -> None:
    # A backend whose import has a side effect: checking must not run it.
    marker = tmp_path / "imported"
    package = tmp_path / "sidefx"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "backend.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef get_order(*, id): ...\ndef cancel_order(*, id, reason): ...\n"
    )
    path = write_contract(replace={"python: tests.data.shop_backend": "python: sidefx.backend"})
    load_contract(path)
    assert not marker.exists()


def test_json_schema_accepts_the_examples_and_rejects_garbage() -> None:
    schema = Contract.model_json_schema(by_alias=True)
    for name in ("orders", "invoices"):
        document = yaml.safe_load((ROOT / "contracts" / f"{name}.yaml").read_text())
        jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"contract": "x", "operations": {"op": {"kind": "delete"}}}, schema)
    json.dumps(schema)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0.0", "1.0.1"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-2", "1.0.0-10"),
        ("1.9.0", "1.10.0"),
        ("1.0.0-beta", "1.0.0-rc"),
    ],
)
def test_semver_ordering(older: str, newer: str) -> None:
    assert SemVer(older) < SemVer(newer)
    assert str(SemVer(newer)) == newer


def test_readme_example_contract_is_valid(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\ncontract: shop") + len("```yaml\n")
    example = tmp_path / "shop.yaml"
    example.write_text(readme[start : readme.index("```", start)], encoding="utf-8")
    (tmp_path / "shop_backend.py").write_text("def get_order(*, id): ...\ndef cancel_order(*, id, reason): ...\n")
    checked = load_contract(example)
    assert checked.model.operations["cancel_order"].after == ["get_order"]


@given(st.tuples(*[st.integers(0, 10**6)] * 3), st.tuples(*[st.integers(0, 10**6)] * 3))
def test_semver_orders_releases_like_tuples(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    left, right = SemVer(".".join(map(str, a))), SemVer(".".join(map(str, b)))
    assert (left < right) == (a < b)
    assert (left == right) == (a == b)


@pytest.mark.parametrize(
    "when",
    [
        "params.amount != null && params.amount > 0",  # the form the checker's hint names
        "params.amount == null || params.amount <= 50000",
        "entity.note == null || size(entity.note) > 0",
        "math.greatest([entity.total, 1]) > 0 && sets.contains([1, 2], [1])",  # extensions the README lists
    ],
)
def test_null_safe_guards_and_guard_extensions_check(write_contract: WriteContract, when: str) -> None:
    path = write_contract(
        replace={
            "    params: {id: int, reason: str}": "    params: {amount: 'money?', id: int, reason: str}",
            "when: entity.total <= 100000": f"when: {when}",
        }
    )
    assert load_contract(path).params["cancel_order"]["amount"].optional


def test_self_transitions_and_stateless_contracts_check(write_contract: WriteContract) -> None:
    renew = write_contract(
        replace={"cancel: {from: [pending, confirmed], to: cancelled}": "cancel: {from: [pending], to: pending}"}
    )
    assert load_contract(renew).model.entities["Order"].lifecycle.transitions["cancel"].to == "pending"  # type: ignore[union-attr]
    stateless = (
        "contract: clock\nversion: 1.0.0\nsummary: Time.\nowners: [a@example.com]\nchangelog: First.\n"
        "binding: {python: tests.data.shop_backend}\n"
        "operations:\n  get_order:\n    kind: read\n    doc: Now.\n    params: {zone: 'str?', fmt: str}\n"
        "    returns: str\n"
    )
    for text in (stateless, stateless.replace("operations:", "entities: {}\noperations:")):
        checked = load_contract(write_contract(text, name="clock.yaml"))
        assert checked.model.entities == {}
        assert list(checked.params["get_order"]) == ["zone", "fmt"]


def test_a_param_type_as_deep_as_a_call_may_be_checks(write_contract: WriteContract) -> None:
    # The limit is the wire's: 15 nested records put a field at level 16, the deepest allowed.
    records = "records:\n" + "".join(f"  R{i}: {{next: R{i + 1}}}\n" for i in range(1, 15)) + "  R15: {v: int}\n"
    path = write_contract(
        replace={
            "entities:\n": records + "entities:\n",
            "params: {id: int, reason: str}": "params: {id: int, deep: R1}",
        }
    )
    assert load_contract(path).params["cancel_order"]["deep"].name == "R1"


def test_a_guard_that_divides_by_zero_on_a_sample_checks(write_contract: WriteContract) -> None:
    # Division by zero depends on the value, not the type: the checker accepts it, and the
    # gate fails closed on the call whose value divides by zero.
    guard = "size(params.reason) == 0 || 100 / (size(params.reason) - 1) > 0"
    path = write_contract(replace={"when: entity.total <= 100000": f"when: {guard}"})
    assert load_contract(path).model.operations["cancel_order"].guards[0].when == guard


_GUARD_PIECES = st.sampled_from(
    [
        "params.amount",
        "params.ratio",
        "params.fees",
        "params.name",
        "params.note",
        "entity.total",
        "principal.id",
        "size(",
        "int(",
        "double(",
        "matches(",
        "math.greatest(",
        ")",
        "(",
        "[",
        "]",
        "{",
        "}",
        ",",
        ".",
        "?",
        ":",
        " / ",
        " % ",
        " + ",
        " - ",
        " * ",
        " <= ",
        " == ",
        " != ",
        " && ",
        " || ",
        "!",
        " in ",
        "0",
        "1",
        "-1",
        "9223372036854775807",
        "0.5",
        "1e400",
        "'('",
        '"a"',
        "null",
        "true",
        "[]",
        "{}",
        "has(",
        ".exists(x, ",
        "x",
        "timestamp('x')",
        "duration('1s')",
        "0u",
        "b'\\xff'",
    ]
)
_FUZZ_VARIABLES = {
    "params": {
        "amount": TypeRef("money"),
        "ratio": TypeRef("float"),
        "fees": TypeRef("list", item=TypeRef("money")),
        "name": TypeRef("str"),
        "note": TypeRef("str", optional=True),
    },
    "entity": {"total": TypeRef("money")},
    "principal": PRINCIPAL_FIELDS,
}


@given(st.lists(_GUARD_PIECES, min_size=1, max_size=12).map("".join))
@example("size(params.fees) == 0 || 100 / (size(params.fees) - 1) > 0")  # the samples hold one fee
@example("params.amount % 0 == 0 && [1][3] == 1")
@example("9223372036854775807 + size(params.name) > 0")
def test_the_guard_checker_answers_any_text_with_messages_never_an_exception(guard: str) -> None:
    problems = check_guard(guard, _FUZZ_VARIABLES, {}, {})
    assert isinstance(problems, list)
    assert all(isinstance(p, str) and p for p in problems)
