"""Version pinning (NAME@MAJOR[.MINOR[.PATCH]]), the default major and `promote`, publishing
per major line, and guard-bound diffs: in the registry, the CLI (real processes), the HTTP API
(a real server) and MCP (a real client session)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters

from charter.agent import Charter, ScriptedModel
from charter.audit import AuditLog
from charter.contract import load_contract
from charter.errors import ChangeRefused, ContractNotFound, UsageError, VersionConflict
from charter.registry import Registry, diff_contracts, parse_ref
from charter.sandbox import Sandbox
from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving
from tests.conftest import ROOT, WriteContract, charter

GUARD = "when: entity.total <= 100000"
NARROWER = "when: entity.total <= 50000"  # breaking: allows less
WIDER = "when: entity.total <= 200000"  # a relaxation: allows more


def _shop(write_contract: WriteContract, version: str, guard: str = GUARD, name: str | None = None) -> Path:
    return write_contract(
        replace={"version: 1.0.0": f"version: {version}", GUARD: guard}, name=name or f"shop-{version}.yaml"
    )


def _publish(registry: Registry, path: Path, **kwargs: bool) -> Any:
    return registry.publish(load_contract(path), path.read_text(encoding="utf-8"), **kwargs)


@pytest.fixture
def lines(write_contract: WriteContract) -> Registry:
    """shop 1.0.0, 1.4.0 and 2.0.0 (2.0.0 narrows a guard: a breaking change)."""
    registry = Registry()
    _publish(registry, _shop(write_contract, "1.0.0"))
    _publish(registry, _shop(write_contract, "1.4.0"))
    _publish(registry, _shop(write_contract, "2.0.0", NARROWER))
    return registry


# -- the registry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("shop", ("shop", None)),
        ("shop@1", ("shop", "1")),
        ("shop@1.4", ("shop", "1.4")),
        ("shop@1.4.2", ("shop", "1.4.2")),
    ],
)
def test_references_name_a_major_a_minor_or_a_version(ref: str, expected: tuple[str, str | None]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["shop@", "shop@1.x", "shop@v1", "shop@01", "shop@1.2.3.4"])
def test_malformed_references_say_how_to_write_one(ref: str) -> None:
    with pytest.raises(UsageError, match=r"write NAME, NAME@MAJOR, NAME@MAJOR.MINOR or NAME@MAJOR.MINOR.PATCH"):
        parse_ref(ref)


def test_an_unpinned_caller_stays_on_the_default_major(lines: Registry) -> None:
    assert lines.info("shop").version == "1.4.0"  # not 2.0.0: no caller silently crosses a breaking change
    assert lines.get("shop").version == "1.4.0"
    assert lines.info("shop", "1").version == "1.4.0"
    assert lines.info("shop", "1.0").version == "1.0.0"
    assert lines.info("shop", "2").version == "2.0.0"
    assert lines.info("shop", "2.0.0").version == "2.0.0"


def test_promote_moves_the_default_major_and_is_recorded(lines: Registry) -> None:
    assert lines.promote("shop", 2).version == "2.0.0"
    assert lines.info("shop").version == "2.0.0"
    assert Registry(lines.path).default_major("shop") == 2  # it is in the registry, not in this object
    lines.promote("shop", 1)
    assert lines.info("shop").version == "1.4.0"
    with pytest.raises(ContractNotFound, match=r"no version 3; did you mean shop@2.0.0\?"):
        lines.promote("shop", 3)


def test_unknown_versions_list_the_published_ones(lines: Registry) -> None:
    with pytest.raises(ContractNotFound) as caught:
        lines.info("shop", "1.7")
    assert str(caught.value) == (
        "contract 'shop' has no version 1.7; did you mean shop@1.4.0? (published: 1.0.0, 1.4.0, 2.0.0)"
    )


def test_a_patch_can_follow_a_newer_major_and_is_diffed_against_its_own_line(
    lines: Registry, write_contract: WriteContract
) -> None:
    # 1.4.1 widens the guard of 1.4.0: a relaxation against 1.4.0 (against 2.0.0 it would be more).
    with pytest.raises(ChangeRefused, match=r"relaxes rules of 1.4.0"):
        _publish(lines, _shop(write_contract, "1.4.1", WIDER))
    result = _publish(lines, _shop(write_contract, "1.4.1", WIDER), allow_relaxation=True)
    assert result.created
    assert [c.kind for c in result.changes] == ["relaxation"]
    assert lines.info("shop").version == "1.4.1"
    assert lines.info("shop", "2").version == "2.0.0"


def test_a_version_must_be_newer_than_its_own_line_only(lines: Registry, write_contract: WriteContract) -> None:
    with pytest.raises(VersionConflict, match=r"not newer than 1.4.0, the latest published version of major 1"):
        _publish(lines, _shop(write_contract, "1.3.9"))
    with pytest.raises(
        ChangeRefused, match=r"breaking changes to 1.4.0 without a major version bump \(publish it as 3.0.0\)"
    ):
        _publish(lines, _shop(write_contract, "1.5.0", NARROWER))


# -- diff: numeric bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [
        ("entity.total <= 100000", "entity.total <= 500000", "relaxation"),
        ("entity.total <= 100000", "entity.total <= 2000", "breaking"),
        ("entity.total < 100000", "entity.total < 100001", "relaxation"),
        ("entity.total > 0", "entity.total > 100", "breaking"),
        ("entity.total >= 100", "entity.total >= 0", "relaxation"),
        ("100000 >= entity.total", "500000 >= entity.total", "relaxation"),
        ("100 < entity.total", "200 < entity.total", "breaking"),
        ("entity.total <= 100000 || entity.id > 5", "entity.total <= 900000 || entity.id > 5", "relaxation"),
        ("entity.total >= -5", "entity.total >= -10", "relaxation"),
    ],
)
def test_a_changed_numeric_bound_is_classified_by_its_direction(
    write_contract: WriteContract, before: str, after: str, kind: str
) -> None:
    old = load_contract(write_contract(replace={GUARD: f"when: '{before}'"}, name="old.yaml")).model
    new = load_contract(write_contract(replace={GUARD: f"when: '{after}'"}, name="new.yaml")).model
    changes = diff_contracts(old, new)
    assert [c.kind for c in changes] == [kind], changes


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("entity.total <= 100000", "entity.total == 100000"),  # not a bound
        ("entity.total == 100000", "entity.total == 200000"),
        ("!(entity.total <= 100000)", "!(entity.total <= 200000)"),  # under a negation
        ("entity.total <= 1000 * 100", "entity.total <= 2000 * 100"),  # arithmetic next to the number
        ("entity.total + 1 <= 100000", "entity.total + 1 <= 200000"),  # not a plain operand
        ("entity.total <= 100 && entity.id <= 5", "entity.total <= 200 && entity.id <= 4"),  # two changes
        ("entity.total <= 100000 ? true : false", "entity.total <= 200000 ? true : false"),
    ],
)
def test_other_guard_changes_stay_both(write_contract: WriteContract, before: str, after: str) -> None:
    old = load_contract(write_contract(replace={GUARD: f"when: '{before}'"}, name="old.yaml")).model
    new = load_contract(write_contract(replace={GUARD: f"when: '{after}'"}, name="new.yaml")).model
    assert sorted(c.kind for c in diff_contracts(old, new)) == ["breaking", "relaxation"]


def test_contract_diff_exit_status_is_for_ci(write_contract: WriteContract) -> None:
    base = str(_shop(write_contract, "1.0.0"))
    narrower, wider = (
        str(_shop(write_contract, "1.1.0", NARROWER)),
        str(_shop(write_contract, "1.1.0", WIDER, "w.yaml")),
    )
    assert charter("contract", "diff", base, base).returncode == 0
    breaking = charter("contract", "diff", base, narrower)
    assert breaking.returncode == 2, breaking.stdout + breaking.stderr
    assert "failing: breaking change(s) found" in breaking.stdout
    assert charter("contract", "diff", base, wider).returncode == 0  # a relaxation does not fail by default
    assert charter("contract", "diff", base, wider, "--fail-on", "breaking,relaxation").returncode == 2
    assert charter("contract", "diff", base, narrower, "--fail-on", "relaxation").returncode == 0
    as_json = charter("contract", "diff", base, narrower, "--json")
    assert as_json.returncode == 2
    assert [c["kind"] for c in json.loads(as_json.stdout)] == ["breaking"]
    bad = charter("contract", "diff", base, wider, "--fail-on", "breaking,loose")
    assert bad.returncode == 1
    assert "unknown class loose" in bad.stderr


# -- every surface names the version it resolved ---------------------------------------------------


def test_cli_exec_pins_promotes_and_names_the_version(lines: Registry, tmp_path: Path) -> None:
    program = tmp_path / "p.py"
    program.write_text("conclude('ok')\n")

    def version(*ref: str) -> str:
        result = charter("exec", str(program), *ref, "--json")
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["contract"] == "shop"
        return str(body["version"])

    assert version("--contract", "shop") == "1.4.0"
    assert version("--contract", "shop@1.0") == "1.0.0"
    assert version("--contract", "shop@2") == "2.0.0"
    text = charter("exec", str(program), "--contract", "shop@2")
    assert "shop 2.0.0" in text.stdout
    promoted = charter("contract", "promote", "shop@2")
    assert promoted.returncode == 0, promoted.stderr
    assert "unpinned callers now get 2.0.0 (major 2; was 1.4.0)" in promoted.stdout
    assert version("--contract", "shop") == "2.0.0"
    listing = json.loads(charter("contract", "list", "--json").stdout)
    assert [(v["version"], v["default"]) for v in listing] == [("1.0.0", False), ("1.4.0", False), ("2.0.0", True)]
    missing = charter("exec", str(program), "--contract", "shop@3")
    assert missing.returncode == 1
    assert "did you mean shop@2.0.0?" in missing.stderr
    assert "published: 1.0.0, 1.4.0, 2.0.0" in missing.stderr


def test_http_pins_and_names_the_version(lines: Registry, charter_home: Path, shared_sandbox: Sandbox) -> None:
    log = AuditLog(charter_home / "audit.db")
    agent = Charter(model=ScriptedModel(lambda r: "```python\nconclude('ok')\n```"), audit=log, sandbox=shared_sandbox)
    service = CharterService.create(registry=lines, audit=log, agent=agent)
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "i.db"))
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:

        def program(ref: str) -> httpx.Response:
            return client.post("/v1/programs", json={"contract": ref, "program": "conclude('ok')"})

        assert program("shop").json()["version"] == "1.4.0"
        assert program("shop@2").json()["version"] == "2.0.0"
        assert program("shop@1.0.0").json()["version"] == "1.0.0"
        intent = client.post("/v1/intents", json={"contract": "shop@2", "intent": "anything"}).json()
        assert (intent["status"], intent["contract"], intent["version"]) == ("done", "shop", "2.0.0")
        assert client.get("/v1/contracts/shop/1").json()["version"] == "1.4.0"
        assert client.get("/v1/contracts/shop/latest").json()["version"] == "1.4.0"
        assert client.get("/v1/contracts/shop/2.0").json()["version"] == "2.0.0"
        listing = client.get("/v1/contracts").json()
        assert (listing[0]["latest"], listing[0]["default"]) == ("2.0.0", "1.4.0")
        missing = program("shop@3")
        bad = program("shop@1.x")
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:charter:problem:contract-not-found"
    assert "did you mean shop@2.0.0?" in missing.json()["detail"]
    assert bad.status_code == 422


def test_mcp_pins_and_names_the_version(lines: Registry) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "charter", "mcp", "--principal", "ada", "--replay", str(ROOT / "tests/data/model/happy.json")],
        env=dict(os.environ),
        cwd=str(ROOT),
    )

    async def session() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with Client(params) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            seen["operate"] = tools["operate_shop"]
            for ref in ("shop", "shop@2", "shop@1.0"):
                result = await client.call_tool("execute_program", {"contract": ref, "program": "conclude('ok')"})
                seen[ref] = json.loads(result.content[0].text)
            seen["missing"] = await client.call_tool(
                "execute_program", {"contract": "shop@3", "program": "conclude(1)"}
            )
            operated = await client.call_tool("operate_shop", {"intent": "Cancel order 101", "version": "2"})
            seen["operate_pinned"] = json.loads(operated.content[0].text)
        return seen

    seen = anyio.run(session)
    assert "contract shop 1.4.0" in seen["operate"].description
    assert "version" in seen["operate"].input_schema["properties"]
    assert [seen[ref]["version"] for ref in ("shop", "shop@2", "shop@1.0")] == ["1.4.0", "2.0.0", "1.0.0"]
    assert seen["missing"].is_error is True
    assert "did you mean shop@2.0.0?" in seen["missing"].content[0].text
    # The recorded model answers for the orders contract, so the run does not succeed; what matters
    # here is the version the pinned intent ran under.
    assert (seen["operate_pinned"]["contract"], seen["operate_pinned"]["version"]) == ("shop", "2.0.0")


def test_the_agent_pins_and_names_the_version(lines: Registry, charter_home: Path, shared_sandbox: Sandbox) -> None:
    agent = Charter(
        model=ScriptedModel(lambda r: "```python\nconclude('ok')\n```"),
        registry=lines,
        audit=AuditLog(charter_home / "audit.db"),
        sandbox=shared_sandbox,
    )
    assert agent.handle("anything", contract="shop").version == "1.4.0"
    pinned = agent.handle("anything", contract="shop@2")
    assert (pinned.status, pinned.contract, pinned.version) == ("done", "shop", "2.0.0")
    with pytest.raises(ContractNotFound, match=r"did you mean shop@1.4.0\?"):
        agent.handle("anything", contract="shop@1.9")
