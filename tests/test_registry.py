"""The registry, on a real SQLite file: immutable versions, ordering, and publish rules."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from charter.contract import load_contract
from charter.errors import ChangeRefused, ContractNotFound, VersionConflict
from charter.registry import Registry, parse_ref
from charter.registry import charter_home as home_of_charter
from tests.conftest import ROOT, WriteContract


def _publish(registry: Registry, path: Path, **kwargs: bool):  # type: ignore[no-untyped-def]
    return registry.publish(load_contract(path), path.read_text(encoding="utf-8"), **kwargs)


def test_default_location_follows_charter_home(charter_home: Path) -> None:
    assert Registry().path == charter_home / "charter.db"
    assert charter_home.joinpath("charter.db").is_file()


def test_publish_then_get_rebuilds_the_same_artifact(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.db")
    path = ROOT / "contracts" / "orders.yaml"
    result = _publish(registry, path)
    assert result.created
    from charter.compiler import compile_contract

    assert registry.get("orders") == compile_contract(load_contract(path))
    assert registry.source("orders", "1.0.0") == path.read_text(encoding="utf-8")
    assert [v.version for v in registry.versions("orders")] == ["1.0.0"]


def test_republishing_identical_content_is_a_no_op(write_contract: WriteContract) -> None:
    registry = Registry()
    first = _publish(registry, write_contract())
    again = _publish(registry, write_contract(replace={"contract: shop": "# reformatted\ncontract: shop"}))
    assert not again.created
    assert again.info == first.info
    assert len(registry.list()) == 1


def test_same_version_with_other_content_is_refused(write_contract: WriteContract) -> None:
    registry = Registry()
    _publish(registry, write_contract())
    with pytest.raises(
        VersionConflict, match=r"shop 1.0.0 is already published with other content .* bump the version"
    ):
        _publish(registry, write_contract(replace={"Cancel an order.": "Cancel one order."}))


def test_version_must_be_greater_than_latest(write_contract: WriteContract) -> None:
    registry = Registry()
    _publish(registry, write_contract(replace={"version: 1.0.0": "version: 1.2.0"}))
    with pytest.raises(
        VersionConflict, match=r"shop 1.1.0 is not newer than 1.2.0, the latest published version of major 1"
    ):
        _publish(registry, write_contract(replace={"version: 1.0.0": "version: 1.1.0", "Cancel an order.": "x."}))


def test_breaking_change_needs_major_bump(write_contract: WriteContract) -> None:
    registry = Registry()
    _publish(registry, write_contract())
    breaking = {
        "version: 1.0.0": "version: 1.1.0",
        "params: {id: int, reason: str}": "params: {id: int, reason: str, by: str}",
    }
    with pytest.raises(ChangeRefused) as refused:
        _publish(registry, write_contract(replace=breaking))
    assert "without a major version bump (publish it as 2.0.0)" in str(refused.value)
    assert "required param 'by' added" in str(refused.value)
    assert [c.kind for c in refused.value.changes] == ["breaking"]
    breaking["version: 1.0.0"] = "version: 2.0.0"
    assert _publish(registry, write_contract(replace=breaking)).created
    assert registry.info("shop", "2").version == "2.0.0"
    assert registry.info("shop").version == "1.0.0"  # unpinned callers stay on major 1 until it is promoted


def test_relaxation_needs_explicit_approval(write_contract: WriteContract) -> None:
    registry = Registry()
    _publish(registry, write_contract())
    relaxed = {
        "version: 1.0.0": "version: 1.0.1",
        "from: [pending, confirmed], to: cancelled": "from: [pending, confirmed, dispatched], to: cancelled",
    }
    with pytest.raises(ChangeRefused, match=r"relaxes rules of 1.0.0.*--allow-relaxation") as refused:
        _publish(registry, write_contract(replace=relaxed))
    assert "'cancel' is now also allowed from dispatched" in str(refused.value)
    assert [v.version for v in registry.versions("shop")] == ["1.0.0"]  # nothing changed
    result = _publish(registry, write_contract(replace=relaxed), allow_relaxation=True)
    assert result.created
    assert [c.kind for c in result.changes] == ["relaxation"]


def test_published_rows_cannot_be_edited_or_deleted_even_with_sql(write_contract: WriteContract) -> None:
    registry = Registry()
    _publish(registry, write_contract())
    db = sqlite3.connect(registry.path)
    with pytest.raises(sqlite3.IntegrityError, match="published contract versions are immutable"):
        db.execute("UPDATE contract_versions SET canonical = '{}'")
    with pytest.raises(sqlite3.IntegrityError, match="published contract versions are immutable"):
        db.execute("DELETE FROM contract_versions")
    db.close()
    assert registry.get("shop").name == "shop"


def test_versions_sort_semantically(write_contract: WriteContract) -> None:
    registry = Registry()
    for version in ("1.2.0", "1.10.0"):
        _publish(
            registry,
            write_contract(replace={"version: 1.0.0": f"version: {version}", "Cancel an order.": f"v{version}."}),
        )
    assert [v.version for v in registry.versions("shop")] == ["1.2.0", "1.10.0"]
    assert registry.get("shop").version == "1.10.0"
    assert registry.get("shop", "1.2.0").version == "1.2.0"


def test_unknown_names_and_versions(write_contract: WriteContract) -> None:
    registry = Registry()
    _publish(registry, write_contract())
    with pytest.raises(ContractNotFound, match=r"no contract named 'shp' is published \(did you mean 'shop'\?\)"):
        registry.get("shp")
    with pytest.raises(
        ContractNotFound, match=r"contract 'shop' has no version 9.0.0; did you mean shop@1.0.0\? \(published: 1.0.0\)"
    ):
        registry.get("shop", "9.0.0")


def test_parse_ref_and_home(charter_home: Path) -> None:
    assert parse_ref("orders@1.2.0") == ("orders", "1.2.0")
    assert parse_ref("orders") == ("orders", None)
    assert home_of_charter() == charter_home


def test_a_server_registry_serves_from_memory_and_sees_another_processs_publish(
    write_contract: WriteContract, tmp_path: Path
) -> None:
    server = Registry(tmp_path / "charter.db")
    _publish(server, write_contract())
    first = server.get("shop")
    assert server.get("shop", "1.0.0") is first  # compiled once, then from memory

    # Another connection publishes (as `charter contract publish` in another process does)
    # and promotes: the server's next lookup of "latest" and MAJOR sees both.
    publisher = Registry(tmp_path / "charter.db")
    _publish(publisher, write_contract(replace={"version: 1.0.0": "version: 1.1.0", "Cancel an order.": "v1.1."}))
    assert server.get("shop").version == "1.1.0"
    assert server.get("shop", "1").version == "1.1.0"
    assert [v.version for v in server.versions("shop")] == ["1.0.0", "1.1.0"]
    assert server.get("shop", "1.0.0") is first
    breaking = {"version: 1.0.0": "version: 2.0.0", "Cancel an order.": "v2."}
    _publish(publisher, write_contract(replace=breaking), allow_relaxation=True)
    assert server.get("shop").version == "1.1.0"  # major 1 stays the default until promoted
    publisher.promote("shop", 2)
    assert server.get("shop").version == "2.0.0"
    assert server.names() == ["shop"]
    with pytest.raises(ContractNotFound):
        server.get("nothing")


# -- who published each version (schema step 3) -----------------------------------------


def test_the_publisher_is_recorded_once_and_is_as_immutable_as_the_version(write_contract: WriteContract) -> None:
    registry = Registry()
    path = write_contract()
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"), published_by="ada")
    again = registry.publish(load_contract(path), path.read_text(encoding="utf-8"), published_by="bob")
    assert not again.created
    [info] = registry.versions("shop")
    assert (info.published_by, info.relaxation_approved) == ("ada", False)  # the first publication's
    with sqlite3.connect(registry.path) as db, pytest.raises(sqlite3.IntegrityError, match="immutable"):
        db.execute("UPDATE contract_versions SET published_by = 'mallory'")
    assert registry.versions("shop")[0].published_by == "ada"


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 201])
def test_a_bad_publisher_name_is_refused_and_nothing_is_published(write_contract: WriteContract, name: str) -> None:
    from charter.errors import UsageError

    registry = Registry()
    path = write_contract()
    with pytest.raises(UsageError, match="--by NAME"):
        registry.publish(load_contract(path), path.read_text(encoding="utf-8"), published_by=name)
    assert registry.names() == []


def test_publish_records_by_or_the_os_user_and_list_shows_it(write_contract: WriteContract) -> None:
    import getpass
    import json

    from tests.conftest import charter

    first = charter("contract", "publish", str(write_contract()), "--by", "release-bot")
    assert first.returncode == 0, first.stderr
    assert "published shop 1.0.0 by release-bot" in first.stdout
    newer = write_contract(replace={"version: 1.0.0": "version: 1.1.0"}, name="newer.yaml")
    second = charter("contract", "publish", str(newer))
    assert second.returncode == 0, second.stderr
    listing = json.loads(charter("contract", "list", "--json").stdout)
    assert [(v["version"], v["published_by"], v["relaxation_approved"]) for v in listing] == [
        ("1.0.0", "release-bot", False),
        ("1.1.0", getpass.getuser(), False),
    ]
    bad = charter("contract", "publish", str(newer), "--by", "")
    assert bad.returncode == 1
    assert "--by NAME" in bad.stderr


def test_a_0_1_registry_upgrades_its_versions_show_no_publisher_and_new_ones_record_it(
    charter_home: Path, write_contract: WriteContract
) -> None:
    import shutil

    from charter.errors import SchemaMismatch
    from tests.conftest import charter

    charter_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests" / "data" / "release_0_1" / "charter.db", charter_home / "charter.db")
    with pytest.raises(SchemaMismatch, match="charter db upgrade"):
        Registry()
    assert charter("db", "upgrade", "--home", str(charter_home)).returncode == 0
    registry = Registry()
    old = {(v.name, v.version): v for v in registry.list()}
    assert set(old) == {("invoices", "1.0.0"), ("orders", "1.0.0")}
    assert {v.published_by for v in old.values()} == {None}
    path = write_contract()
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"), published_by="ada")
    assert registry.info("shop").published_by == "ada"
    assert registry.get("orders", "1.0.0").version == "1.0.0"  # the 0.1 versions still compile
