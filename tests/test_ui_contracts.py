"""The review app's Contracts pages over HTTP (a real server on loopback, a real registry file):
every published version with who published it and whether a relaxation was acknowledged, a
version's prompt block, stubs, operations and boundaries with their enforcing rules, and the
classified diff between any two versions. A contract whose text carries markup is escaped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from markupsafe import escape

from charter.audit import AuditLog
from charter.contract import load_contract
from charter.registry import Registry
from charter.runner import Runner
from charter.sandbox import Sandbox
from charter.server import CharterService, TokenStore
from tests.conftest import ROOT, WriteContract, charter
from tests.ui_pages import review_app, signed_in

XSS = '<script>alert(1)</script> "><img src=x onerror=alert(1)> javascript:alert(1)'
ORDERS = (ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
# orders 1.1.0 lets a dispatched order be cancelled: a relaxation, published acknowledged.
RELAXED = ORDERS.replace("version: 1.0.0", "version: 1.1.0").replace(
    "cancel: {from: [pending, confirmed]", "cancel: {from: [pending, confirmed, dispatched]"
)


@dataclass
class Site:
    url: str
    token: str
    registry: Registry


def _serve(home: Path, registry: Registry, sandbox: Sandbox) -> Iterator[Site]:
    log = AuditLog(home / "audit.db")
    service = CharterService(registry=registry, audit=log, runner=Runner(audit=log, sandbox=sandbox), agent=None)
    store = TokenStore(home / "tokens.yaml")
    token = store.add("reader", "reader", ["ui"])  # no audit:read: contracts are every viewer's to read
    with review_app(home, service, store) as url:
        yield Site(url, token, registry)


def _publish(registry: Registry, path: Path, **options: object) -> None:
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"), **options)  # type: ignore[arg-type]


@pytest.fixture
def site(charter_home: Path, shared_sandbox: Sandbox, write_contract: WriteContract) -> Iterator[Site]:
    registry = Registry()
    _publish(registry, ROOT / "contracts" / "orders.yaml", published_by="ada")
    _publish(registry, write_contract(RELAXED, name="orders-1.1.yaml"), allow_relaxation=True, published_by="bob")
    _publish(registry, write_contract(replace={"summary: A small shop used": f"summary: {XSS} used"}))  # no publisher
    yield from _serve(charter_home, registry, shared_sandbox)


def test_every_version_is_listed_with_who_published_it_and_whether_a_relaxation_was_acknowledged(
    site: Site,
) -> None:
    with signed_in(site.url, site.token) as client:
        page = client.get("/ui/contracts")
    assert page.status_code == 200, page.text
    text = page.text
    assert 'href="/ui/contracts/orders/1.0.0"' in text
    assert 'href="/ui/contracts/orders/1.1.0"' in text
    assert 'href="/ui/contracts/shop/1.0.0"' in text
    rows = text.split("<tr>")
    [v110] = [row for row in rows if ">1.1.0</a>" in row]
    [v100] = [row for row in rows if 'orders/1.0.0">1.0.0</a>' in row]
    [shop] = [row for row in rows if 'shop/1.0.0">1.0.0</a>' in row]
    assert '<td class="publisher">bob</td>' in v110
    assert '<span class="ack yes">yes</span>' in v110
    assert 'href="/ui/contracts/orders/diff?from=1.0.0&amp;to=1.1.0"' in v110
    assert '<td class="publisher">ada</td>' in v100
    assert '<td class="relaxation">no</td>' in v100
    assert "not recorded" in shop  # published without a publisher
    assert "default</span>" in v110  # the newest of the default major


def test_a_version_shows_its_prompt_block_stubs_operations_and_boundaries_with_their_rules(site: Site) -> None:
    compiled = site.registry.get("orders", "1.0.0")
    with signed_in(site.url, site.token) as client:
        page = client.get("/ui/contracts/orders/1.0.0")
    assert page.status_code == 200, page.text
    text = page.text
    assert str(escape(compiled.summary)) in text
    assert '<td class="publisher">' not in text  # the version page, not the list
    assert '<dd class="publisher">ada</dd>' in text
    first_prompt_line = compiled.prompt_context.splitlines()[0]
    assert str(escape(first_prompt_line)) in text  # the prompt block
    assert '<li id="L1">' in text  # the stubs, numbered and highlighted
    assert '<span class="nf">cancel_order</span>' in text
    for op in compiled.gate.operations.values():
        assert f'<tr id="op-{op.name}">' in text
        assert str(escape(op.doc)) in text
    for boundary in compiled.gate.boundaries:
        assert f'id="boundary-{boundary.id}"' in text
        assert str(escape(boundary.text)) in text
        for rule in boundary.enforced_by:
            assert f"<code>{escape(rule)}</code>" in text  # each enforcing rule, named as the operations list it
    assert "<code>transition:Order.cancel</code>" in text
    assert "scope:orders:write" in text
    assert 'href="/ui/contracts/orders/1.1.0"' in text  # the other versions


def test_a_selector_leads_to_the_version_it_selects_and_an_unknown_one_is_a_clear_404(site: Site) -> None:
    with signed_in(site.url, site.token) as client:
        latest = client.get("/ui/contracts/orders/latest")
        major = client.get("/ui/contracts/orders/1")
        missing = client.get("/ui/contracts/orders/9.9.9")
        unknown = client.get("/ui/contracts/nope<img src=x>/1.0.0")
        malformed = client.get("/ui/contracts/orders/1.x.0")
    assert (latest.status_code, latest.headers["location"]) == (303, "/ui/contracts/orders/1.1.0")
    assert (major.status_code, major.headers["location"]) == (303, "/ui/contracts/orders/1.1.0")
    assert missing.status_code == 404
    assert "has no version &#39;9.9.9&#39; (published: 1.0.0, 1.1.0)" in missing.text
    assert unknown.status_code == 404
    assert "no contract named &#39;nope&lt;img src=x&gt;&#39;" in unknown.text
    assert "<img src=x>" not in unknown.text
    assert malformed.status_code == 400
    assert "1.x.0" in malformed.text


def test_the_diff_marks_each_change_and_compares_any_two_versions(site: Site) -> None:
    with signed_in(site.url, site.token) as client:
        page = client.get("/ui/contracts/orders/diff", params={"from": "1.0.0", "to": "1.1.0"})
        default = client.get("/ui/contracts/orders/diff")  # the newest two
        back = client.get("/ui/contracts/orders/diff", params={"from": "1.1.0", "to": "1.0.0"})
        same = client.get("/ui/contracts/orders/diff", params={"from": "1.0.0", "to": "1.0.0"})
    assert page.status_code == 200, page.text
    text = page.text
    assert '<tr class="relaxation"><td><span class="change change-relaxation">relaxation</span>' in text
    assert "1 relaxation" in text
    assert "relaxation acknowledged at publish: yes" in text
    assert "dispatched" in text  # the change's own words
    assert '<select id="from" name="from">' in text
    assert '<option value="1.0.0" selected>1.0.0</option>' in text
    assert '<option value="1.1.0" selected>1.1.0</option>' in text
    assert default.text.count('<tr class="relaxation">') == text.count('<tr class="relaxation">')
    assert "changes from 1.1.0 to 1.0.0" in back.text
    assert '<tr class="breaking">' in back.text  # taking the relaxation back narrows the rule
    assert "No changes" in same.text


def test_a_bad_diff_request_names_the_field(site: Site) -> None:
    with signed_in(site.url, site.token) as client:
        unknown = client.get("/ui/contracts/orders/diff", params={"from": "0.9.0", "to": "1.1.0"})
        malformed = client.get("/ui/contracts/orders/diff", params={"from": "1.0.0", "to": "<script>"})
        too_long = client.get("/ui/contracts/orders/diff", params={"to": "1" * 65})
        nameless = client.get("/ui/contracts/nothing/diff")
    assert unknown.status_code == 400
    assert "from: contract &#39;orders&#39; has no version &#39;0.9.0&#39;" in unknown.text
    assert malformed.status_code == 400
    assert "to: &#39;&lt;script&gt;&#39; is not a version" in malformed.text
    assert too_long.status_code == 400
    assert "to is longer than 64 characters" in too_long.text
    assert nameless.status_code == 404
    assert "no contract named &#39;nothing&#39;" in nameless.text


def test_every_value_of_a_contract_is_escaped(site: Site) -> None:
    with signed_in(site.url, site.token) as client:
        version = client.get("/ui/contracts/shop/1.0.0").text
        listing = client.get("/ui/contracts").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in version  # the summary and the source, shown as text
    for text in (version, listing):
        assert "<script>alert" not in text
        assert "<img src=x" not in text
        assert 'href="javascript:' not in text


def test_an_earlier_release_registry_shows_its_versions_as_not_recorded_after_the_upgrade(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    charter_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests" / "data" / "release_0_1" / "charter.db", charter_home / "charter.db")
    upgrade = charter("db", "upgrade", "--home", str(charter_home))
    assert upgrade.returncode == 0, upgrade.stderr
    for site in _serve(charter_home, Registry(), shared_sandbox):
        with signed_in(site.url, site.token) as client:
            listing = client.get("/ui/contracts")
            version = client.get("/ui/contracts/invoices/1.0.0")
        assert listing.status_code == 200, listing.text
        assert 'href="/ui/contracts/orders/1.0.0"' in listing.text
        assert listing.text.count("not recorded") == 2  # orders and invoices 1.0.0, published by release 0.1.0
        assert version.status_code == 200, version.text
        assert '<dd class="publisher"><span class="muted">not recorded</span></dd>' in version.text
