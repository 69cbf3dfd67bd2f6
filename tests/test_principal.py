"""Principal ids and scopes are checked before anything is written, at every entry point;
guards compare principals by their confusable skeletons (Unicode TR39)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from charter.errors import InvalidPrincipal, UsageError
from charter.principal import Principal, check_distinct, same_principal, skeleton
from charter.runner import Runner
from charter.server import TokenStore
from tests.conftest import ROOT, Governed, WriteContract, charter, compiled
from tests.test_server import Api, api  # noqa: F401  (the real HTTP server fixture)

ZERO_WIDTH = "alice\u200b"  # U+200B ZERO WIDTH SPACE
BIDI = "al\u202eecila"  # U+202E RIGHT-TO-LEFT OVERRIDE
MIXED = "\u0430lice"  # a Cyrillic U+0430, then Latin: mixed-script
LOOK_ALIKE = "\u0455\u0430\u0455\u04bb\u0430"  # 'sasha' in Cyrillic letters: single-script, yet it reads 'sasha'
INVALID = {"zero-width": ZERO_WIDTH, "bidi control": BIDI, "mixed-script": MIXED}
REASONS = {
    "zero-width": "U+200B ZERO WIDTH SPACE at position 5",
    "bidi control": "U+202E RIGHT-TO-LEFT OVERRIDE at position 2",
    "mixed-script": "mixes scripts (Unicode TR39)",
}
REFUSED = [*INVALID, "look-alike"]


def receipts(home: Path) -> int:
    """Receipts in the audit log (0 when it was never created)."""
    path = home / "audit.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM receipts").fetchone()[0])


def known_sasha(home: Path) -> bytes:
    """A token file whose principal is 'sasha'; returns its bytes."""
    added = charter("token", "add", "sasha-token", "-p", "sasha", "-s", "orders:read")
    assert added.returncode == 0, added.stderr
    return (home / "tokens.yaml").read_bytes()


def case(kind: str) -> tuple[str, str]:
    """(principal id, what the refusal must say) for one kind of bad id."""
    if kind == "look-alike":
        return LOOK_ALIKE, "looks like the principal 'sasha' of the token file"
    return INVALID[kind], REASONS[kind]


# -- the Python API: a Principal that is not valid cannot be made ---------------------------------


@pytest.mark.parametrize(
    ("principal_id", "reason"),
    [
        ("", "the principal id is empty"),
        (" alice", "U+0020 SPACE at position 0"),
        ("alice bob", "U+0020 SPACE at position 5"),
        ("alice\n", "U+000A (a control character) at position 5"),
        ("al\u00adice", "U+00AD SOFT HYPHEN"),
        (ZERO_WIDTH, REASONS["zero-width"]),
        (BIDI, REASONS["bidi control"]),
        ("alice\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE"),
        (MIXED, REASONS["mixed-script"]),
        ("pay\u03c1al", "mixes scripts"),  # Greek rho
        ("a\u0301lice", "is not in Unicode normal form NFKC; write '\\xe1lice'"),
        ("x" * 300, "longer than 256 characters"),
    ],
)
def test_a_principal_that_is_not_valid_cannot_be_made(principal_id: str, reason: str) -> None:
    with pytest.raises(InvalidPrincipal, match=None) as raised:
        Principal(principal_id)
    assert reason in str(raised.value)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("scope", ["Orders:read", "orders read", "orders:read\u200b", "", ":read"])
def test_a_scope_that_is_not_valid_cannot_be_held(scope: str) -> None:
    with pytest.raises(InvalidPrincipal, match="is not valid: a scope is lowercase ASCII words joined by ':'"):
        Principal("alice", frozenset({"orders:read", scope}))


@pytest.mark.parametrize("principal_id", ["alice", "ops.bot-1", "alice@example.com", "Ελένη", "田中さん", "Ана"])
def test_ordinary_ids_in_one_script_are_principals(principal_id: str) -> None:
    assert Principal(principal_id, frozenset({"orders:read", "audit:read"})).id == principal_id


def test_look_alikes_share_a_skeleton_and_others_do_not() -> None:
    assert skeleton(LOOK_ALIKE) == skeleton("sasha") == skeleton("SASHA")
    assert same_principal("sasha", LOOK_ALIKE)
    assert same_principal("alice", "alice")
    assert not same_principal("alice", "alicia")
    assert not same_principal("lee", "kim")
    assert not same_principal(None, "sasha")  # an optional id not set is nobody
    with pytest.raises(TypeError):
        same_principal("alice", 1)  # type: ignore[arg-type]


# -- the command line: token add, exec, run, mcp refuse before anything is written ------------------


def test_token_add_refuses_bad_and_look_alike_ids_and_scopes_and_the_file_is_unchanged(charter_home: Path) -> None:
    before = known_sasha(charter_home)
    attempts = [(["-p", principal_id, "-s", "orders:read"], reason) for principal_id, reason in map(case, REFUSED)]
    attempts += [
        (["-p", "bob", "-s", "Orders:Read"], "scope 'Orders:Read' is not valid"),
        (["-p", "", "-s", "orders:read"], "the principal id is empty"),
    ]
    for args, reason in attempts:
        added = charter("token", "add", "other", *args)
        assert (added.returncode, reason in added.stderr, added.stdout) == (1, True, ""), added.stderr
    assert (charter_home / "tokens.yaml").read_bytes() == before


@pytest.fixture
def published(charter_home: Path) -> Path:
    result = charter("contract", "publish", "contracts/orders.yaml")
    assert result.returncode == 0, result.stderr
    return charter_home


PROGRAM = 'conclude("ok")'


@pytest.mark.parametrize("command", ["exec", "run", "mcp"])
def test_exec_run_and_mcp_stdio_refuse_bad_and_look_alike_ids_with_nothing_written(
    published: Path, tmp_path: Path, command: str
) -> None:
    tokens = known_sasha(published)
    program = tmp_path / "program.py"
    program.write_text(PROGRAM, encoding="utf-8")
    args = {
        "exec": ["exec", str(program), "-c", "orders"],
        "run": ["run", "What is the status of order 101?", "-c", "orders", "--replay", str(tmp_path / "none.json")],
        "mcp": ["mcp"],
    }[command]
    attempts = [(["-p", principal_id, "-s", "orders:read"], reason) for principal_id, reason in map(case, REFUSED)]
    attempts.append((["-p", "ada", "-s", "orders:read\u200b"], "is not valid: a scope is lowercase ASCII words"))
    for who, reason in attempts:
        result = charter(*args, *who)
        assert (result.returncode, reason in result.stderr) == (1, True), (who, result.stdout, result.stderr)
    assert receipts(published) == 0
    assert (published / "tokens.yaml").read_bytes() == tokens
    if command == "exec":  # the same command with a valid id runs, and is recorded
        result = charter(*args, "-p", "ada", "-s", "orders:read")
        assert result.returncode == 0, result.stderr
        assert receipts(published) > 0


# -- HTTP: the token file's principals are checked when it is loaded --------------------------------


def test_a_token_file_with_a_bad_or_look_alike_principal_is_refused_when_loaded(charter_home: Path) -> None:
    tokens = charter_home / "tokens.yaml"
    before = known_sasha(charter_home)
    for kind in REFUSED:
        data = yaml.safe_load(before)
        principal_id, _ = case(kind)
        data["tokens"].append({**data["tokens"][0], "name": "other", "principal": principal_id})
        tokens.write_text(yaml.safe_dump(data), encoding="utf-8")
        with pytest.raises(UsageError) as raised:
            TokenStore(tokens).entries()
        expected = "looks like the principal 'sasha' of the file" if kind == "look-alike" else REASONS[kind]
        assert f"{tokens}: tokens.1" in str(raised.value)
        assert expected in str(raised.value)
    served = charter("serve", "127.0.0.1:0")  # the last file: a look-alike beside 'sasha'
    assert served.returncode == 1
    assert "looks like the principal 'sasha' of the file" in served.stderr
    assert receipts(charter_home) == 0


def test_a_running_server_refuses_every_token_once_the_file_holds_a_bad_principal(
    api: Api,  # noqa: F811
    charter_home: Path,
) -> None:
    tokens = charter_home / "tokens.yaml"
    good = tokens.read_text(encoding="utf-8")
    for kind, principal_id in INVALID.items():
        data = yaml.safe_load(good)
        for entry in data["tokens"]:
            if entry["name"] == "ada":
                entry["principal"] = principal_id
        tokens.write_text(yaml.safe_dump(data), encoding="utf-8")
        before = receipts(charter_home)
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.tokens['ada']}"}) as client:
            response = client.post("/v1/programs", json={"contract": "orders", "program": PROGRAM})
        assert response.status_code == 401, (kind, response.text)
        assert receipts(charter_home) == before


# -- the four-eyes guard, with the real sandbox and gate ---------------------------------------------


def test_a_look_alike_cannot_approve_what_sasha_submitted(governed: Governed) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples.invoices import backend as invoices

    invoices.seed()
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox)
    contract = compiled("invoices")
    scopes = frozenset({"invoices:read", "invoices:write", "invoices:approve"})
    submitted = runner.execute(
        'i = invoices.submit_invoice(number="INV-1001")\nconclude(i.submitted_by)',
        contract=contract,
        principal=Principal("sasha", scopes),
    )
    assert submitted.answer == "sasha"
    approve = 'invoices.approve_invoice(number="INV-1001")\nconclude("approved")'
    twin = runner.execute(approve, contract=contract, principal=Principal(LOOK_ALIKE, scopes))
    assert twin.status == "refused", twin.outcome
    assert twin.reason is not None
    assert "The person who submitted an invoice may not approve it. (guard four_eyes)" in twin.reason
    assert invoices.get_invoice(number="INV-1001")["state"] == "submitted"
    other = runner.execute(approve, contract=contract, principal=Principal("kim", scopes))
    assert other.status == "done", other.outcome
    assert invoices.get_invoice(number="INV-1001")["approved_by"] == "kim"


# -- the checker: same_principal in guards, a warning on raw principal.id comparisons ----------------


def test_check_warns_on_a_raw_principal_id_comparison_and_passes(write_contract: WriteContract, tmp_path: Path) -> None:
    source = (ROOT / "contracts" / "invoices.yaml").read_text(encoding="utf-8")
    raw = source.replace(
        "when: '!same_principal(entity.submitted_by, principal.id)'", "when: entity.submitted_by != principal.id"
    )
    assert raw != source
    file = ROOT / ".charter" / "test-raw-four-eyes.yaml"  # below the checkout so its binding resolves
    file.parent.mkdir(exist_ok=True)
    file.write_text(raw, encoding="utf-8")
    try:
        checked = charter("contract", "check", str(file))
    finally:
        file.unlink()
    assert checked.returncode == 0, checked.stdout
    line = raw.splitlines().index("        when: entity.submitted_by != principal.id") + 1
    assert (
        f"{file.relative_to(ROOT)}:{line}:38: warning: guard 'four_eyes' compares principal.id with !=, which a look-alike id passes"
        in checked.stdout
    )
    assert "write !same_principal(entity.submitted_by, principal.id)" in checked.stdout
    clean = charter("contract", "check", "contracts/invoices.yaml")
    assert clean.returncode == 0
    assert "warning" not in clean.stdout


def test_same_principal_is_type_checked_in_guards(write_contract: WriteContract) -> None:
    from charter.contract.cel_guards import check_guard
    from charter.contract.types import TypeRef

    variables = {"params": {"owner": TypeRef("str"), "n": TypeRef("int")}, "principal": {"id": TypeRef("str")}}
    assert check_guard("!same_principal(params.owner, principal.id)", variables, {}, {}) == []
    [problem] = check_guard("same_principal(params.n, principal.id)", variables, {}, {})
    assert "same_principal() takes two strings" in problem


@pytest.mark.parametrize("blank", ["\u3164", "\uffa0", "\u115falice", "\u2800", "ali\u3164ce"])
def test_ids_that_show_as_blank_are_refused(blank: str) -> None:
    # Hangul fillers and the blank Braille pattern are letters or symbols, not C* or Z*, yet show as nothing.
    with pytest.raises(InvalidPrincipal, match=r"FILLER|BRAILLE PATTERN BLANK"):
        Principal(blank, frozenset())


def test_a_digit_that_looks_like_a_letter_makes_a_look_alike() -> None:
    # TR39 maps '0' to 'O'; folded again after the skeleton, 'b0b' looks like 'bob'.
    assert same_principal("b0b", "bob")
    assert same_principal("B0B", "bob")
    assert not same_principal("bob", "bill")


# -- compatibility forms and decorated letters: 'ada' written another way is 'ada' ------------------

# Each reads 'ada' (finding A1): full-width, full-width capitals, full-width mixed, small capitals,
# circled letters, and U+00AA FEMININE ORDINAL INDICATOR for the first 'a'.
ADA_LOOK_ALIKES = {
    "full-width": "\uff41\uff44\uff41",
    "full-width capitals": "\uff21\uff24\uff21",
    "full-width mixed": "\uff21\uff44\uff41",
    "small capitals": "\u1d00\u1d05\u1d00",
    "circled": "\u24d0\u24d3\u24d0",
    "ordinal indicator": "\u00aada",
}
# Those not in NFKC form cannot be an id at all; the message names the character and the id to write.
NOT_NFKC = {
    "full-width": ("U+FF41 FULLWIDTH LATIN SMALL LETTER A at position 0", "write 'ada'"),
    "full-width capitals": ("U+FF21 FULLWIDTH LATIN CAPITAL LETTER A at position 0", "write 'ADA'"),
    "full-width mixed": ("U+FF21 FULLWIDTH LATIN CAPITAL LETTER A at position 0", "write 'Ada'"),
    "circled": ("U+24D0 CIRCLED LATIN SMALL LETTER A at position 0", "write 'ada'"),
    "ordinal indicator": ("U+00AA FEMININE ORDINAL INDICATOR at position 0", "write 'ada'"),
}


@pytest.mark.parametrize("kind", NOT_NFKC)
def test_an_id_not_in_nfkc_form_is_refused_naming_the_character_and_what_to_write(kind: str) -> None:
    character, instead = NOT_NFKC[kind]
    with pytest.raises(InvalidPrincipal) as raised:
        Principal(ADA_LOOK_ALIKES[kind])
    assert character in str(raised.value)
    assert "normal form NFKC" in str(raised.value)
    assert instead in str(raised.value)


@pytest.mark.parametrize(
    ("look_alike", "plain"),
    [
        *((text, "ada") for text in ADA_LOOK_ALIKES.values()),
        ("\U0001f170\U0001f173\U0001f170", "ada"),  # NEGATIVE SQUARED LATIN CAPITAL LETTER A, D, A
        ("\U0001f1e6\U0001f1e9\U0001f1e6", "ada"),  # REGIONAL INDICATOR SYMBOL LETTER A, D, A
        ("\u0280\u028f\u0262\u029c\u026a\u029f\u0274\u0299", "ryghilnb"),  # the small capitals of U+0250..U+02AF
        ("\ua730\ua731", "fs"),  # LATIN LETTER SMALL CAPITAL F, S (Latin Extended-D)
        ("\u0276", "oe"),  # LATIN LETTER SMALL CAPITAL OE: its skeleton holds a small capital E
        ("\u1d43\u1d48\u1d43", "ada"),  # MODIFIER LETTER SMALL A, D, A
    ],
)
def test_compatibility_forms_and_decorated_letters_share_their_letters_skeleton(look_alike: str, plain: str) -> None:
    assert skeleton(look_alike) == skeleton(plain) == skeleton(plain.upper())
    assert same_principal(plain, look_alike)  # the CEL function of guards compares the same way


def test_a_different_id_is_still_a_different_principal() -> None:
    for other in ("adam", "ida", "oda", "\u00e1da", "\u0250da"):  # the last two: a with acute, turned a
        assert not same_principal("ada", other), other
    assert Principal("adam").id == "adam"


@pytest.mark.parametrize("kind", ADA_LOOK_ALIKES)
def test_each_look_alike_of_ada_is_refused_as_self_approval(charter_home: Path, kind: str) -> None:
    from charter.approvals import ApprovalStore, SelfApproval
    from charter.audit import AuditLog
    from tests.test_approvals_store import SCOPE, records, request

    log = AuditLog(charter_home / "audit.db")
    store = ApprovalStore(log)
    look_alike = ADA_LOOK_ALIKES[kind]
    _, by_ada = request(log, principal="ada")
    # An id no longer accepted may still be held by a log or a token of an earlier release.
    approver = Principal.of_record(look_alike, frozenset({SCOPE}))
    with pytest.raises(SelfApproval):
        store.decide(by_ada, approver, "approved", "looks fine")
    # And the other way round: a request recorded for the look-alike, approved by 'ada'.
    _, by_look_alike = request(log, principal=look_alike)
    with pytest.raises(SelfApproval):
        store.decide(by_look_alike, Principal("ada", frozenset({SCOPE})), "approved", "looks fine")
    assert records(log) == []
    decided, _ = store.decide(by_ada, Principal("adam", frozenset({SCOPE})), "approved", "a second person checked")
    assert decided.approver == "adam"


def test_token_add_refuses_every_look_alike_of_ada_and_accepts_another_person(charter_home: Path) -> None:
    added = charter("token", "add", "ada-token", "-p", "ada", "-s", "ledger:read")
    assert added.returncode == 0, added.stderr
    before = (charter_home / "tokens.yaml").read_bytes()
    for kind, look_alike in ADA_LOOK_ALIKES.items():
        refused = charter("token", "add", "twin", "-p", look_alike, "-s", "ledger:approve")
        reason = NOT_NFKC[kind][1] if kind in NOT_NFKC else "looks like the principal 'ada' of the token file"
        assert (refused.returncode, refused.stdout) == (1, ""), (kind, refused.stdout)
        assert reason in refused.stderr, (kind, refused.stderr)
    assert (charter_home / "tokens.yaml").read_bytes() == before
    other = charter("token", "add", "adam-token", "-p", "adam", "-s", "ledger:approve")
    assert other.returncode == 0, other.stderr
    assert [e.principal for e in TokenStore(charter_home / "tokens.yaml").entries()] == ["ada", "adam"]


def test_a_run_recorded_for_an_id_no_longer_accepted_still_replays(governed: Governed) -> None:
    from charter.replay import replay_run

    # A run an earlier release recorded for full-width 'ada': the log is never rewritten.
    principal = Principal.of_record(ADA_LOOK_ALIKES["full-width"], frozenset({"orders:read"}))
    execution = governed.runner.execute(
        "o = orders.get_order(id=123)\nconclude(o.status)", contract=governed.contract, principal=principal
    )
    assert execution.status == "done", execution.outcome
    record = governed.log.run(execution.run_id)
    assert record.opened.principal == ADA_LOOK_ALIKES["full-width"]
    report = replay_run(record, governed.contract, governed.runner.sandbox)
    assert report.identical, report


# -- the reserved id: Charter's own decisions are recorded as 'charter' -----------------------------


@pytest.mark.parametrize("reserved", ["charter", "Charter", "CHARTER", "\u1d04\u029c\u1d00\u0280\u1d1b\u1d07\u0280"])
def test_the_system_principal_and_its_look_alikes_cannot_be_made(reserved: str) -> None:
    from charter.approvals.store import EXPIRY_APPROVER
    from charter.principal import SYSTEM_PRINCIPAL

    assert EXPIRY_APPROVER == SYSTEM_PRINCIPAL == "charter"
    with pytest.raises(InvalidPrincipal, match="reserved: Charter records its own decisions under it"):
        Principal(reserved)
    # A run an earlier release recorded for it still reads back.
    assert Principal.of_record(reserved).id == reserved


def test_token_add_and_exec_refuse_the_reserved_id_with_nothing_written(published: Path, tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM, encoding="utf-8")
    for command in (
        ["token", "add", "sys", "-p", "charter", "-s", "orders:read"],
        ["exec", str(program), "-c", "orders", "-p", "Charter"],
    ):
        result = charter(*command)
        assert result.returncode == 1, result.stdout
        assert (
            "is reserved: Charter records its own decisions under it" in result.stderr
            or "which is reserved" in result.stderr
        )
    assert not (published / "tokens.yaml").exists()
    assert receipts(published) == 0


def test_a_token_an_earlier_release_issued_for_such_an_id_is_refused_and_can_be_revoked(charter_home: Path) -> None:
    tokens = charter_home / "tokens.yaml"
    before = known_sasha(charter_home)
    data = yaml.safe_load(before)
    for name, principal_id in (("fw", ADA_LOOK_ALIKES["full-width"]), ("sys", "charter")):
        data["tokens"].append({**data["tokens"][0], "name": name, "principal": principal_id, "sha256": "0" * 64})
    tokens.write_text(yaml.safe_dump(data), encoding="utf-8")  # as release 0.2 could write it
    for name, reason in (("fw", "normal form NFKC: write 'ada'"), ("sys", "'charter' is reserved")):
        with pytest.raises(UsageError) as raised:
            TokenStore(tokens).entries()
        assert reason in str(raised.value)
        assert f"revoke it: `charter token revoke {name}`" in str(raised.value)
        revoked = charter("token", "revoke", name)
        assert revoked.returncode == 0, revoked.stderr
    assert [e.principal for e in TokenStore(tokens).entries()] == ["sasha"]


@pytest.mark.parametrize(
    ("requester", "look_alike"),
    [
        ("bill", "biII"),  # capital i: TR39's look-alike of l, lost if case is folded first (B1)
        ("ida", "\u0130da"),  # dotted capital I: casefolds to i + a combining dot
        ("ada", "a\u0338da"),  # combining long solidus overlay (B2)
        ("ada", "a\u0336da"),  # combining long stroke overlay
        ("ada", "a\u0332da"),  # combining low line
        ("ada", "ad\u0363a"),  # combining latin small letter a
    ],
)
def test_ids_that_differ_by_capitals_or_marks_are_the_same_principal(requester: str, look_alike: str) -> None:
    assert same_principal(requester, look_alike)
    assert same_principal(look_alike, requester)
    with pytest.raises(InvalidPrincipal, match="looks like the principal"):
        check_distinct(look_alike, [requester], where="the token file")


def test_ids_that_only_resemble_in_part_stay_distinct() -> None:
    for a, b in [("ada", "adam"), ("bill", "will"), ("ann", "anna"), ("alice", "alicia")]:
        assert not same_principal(a, b)
