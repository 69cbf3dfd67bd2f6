"""Python bindings resolve one way everywhere: from the contract's folder (or CHARTER_BACKEND_PATH),
recorded with their sha256 at publish, loaded lazily per operation from that file; a missing,
broken or changed module is the server's fault (backend-unavailable), never the caller's."""

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

from charter.audit import AuditLog
from charter.backends import BackendUnavailable, PythonBackend
from charter.compiler import compile_contract
from charter.contract import load_contract
from charter.errors import ContractError, VersionConflict
from charter.registry import Registry
from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving
from tests.conftest import BASE_CONTRACT, ROOT, WriteContract, charter

BACKEND = (ROOT / "tests" / "data" / "shop_backend.py").read_text(encoding="utf-8")
GET_1 = "o = shop.get_order(id=1)\nconclude(f'order {o.id} is {o.status}')\n"
CANCEL_1 = "o = shop.cancel_order(id=1, reason='asked')\nconclude(o.status)\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A contract with its backend module beside it, and no backend path configured."""
    monkeypatch.delenv("CHARTER_BACKEND_PATH", raising=False)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "shopback.py").write_text(BACKEND, encoding="utf-8")
    (folder / "shop.yaml").write_text(
        BASE_CONTRACT.replace("python: tests.data.shop_backend", "python: shopback"), encoding="utf-8"
    )
    return folder


def _publish(path: Path) -> None:
    Registry().publish(load_contract(path), path.read_text(encoding="utf-8"))


def _exec(program: str, where: Path, *ref: str) -> Any:
    file = where / "program.py"
    file.write_text(program, encoding="utf-8")
    scopes = ["--scope", "orders:write"]
    return charter("exec", str(file), "--contract", *(ref or ("shop",)), *scopes, "--json", cwd=where)


def test_exec_from_another_directory_loads_the_module_recorded_at_publish(project: Path, tmp_path: Path) -> None:
    published = charter("contract", "publish", str(project / "shop.yaml"), cwd=project)
    assert published.returncode == 0, published.stderr
    assert f"binding module shopback: {project / 'shopback.py'}" in published.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _exec(GET_1, elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["answer"] == "order 1 is pending"


@pytest.mark.parametrize(
    ("binding", "why"),
    [
        ("subprocess:getoutput", "'subprocess' is part of Python's standard library"),
        ("os.path:join", "'os' is part of Python's standard library"),
        ("yaml:safe_load", "'yaml' is an installed package"),
    ],
)
def test_a_binding_outside_the_project_is_refused_at_check(project: Path, binding: str, why: str) -> None:
    path = project / "shop.yaml"
    path.write_text(
        path.read_text().replace(
            "    scopes: [orders:write]\n", f"    scopes: [orders:write]\n    binding: {{python: '{binding}'}}\n"
        )
    )
    with pytest.raises(ContractError) as caught:
        load_contract(path)
    message = str(caught.value)
    assert why in message
    assert "write a function in a module under the contract's folder (or on CHARTER_BACKEND_PATH)" in message
    checked = charter("contract", "check", str(path))
    assert checked.returncode == 1
    assert why in checked.stdout


def test_the_backend_path_is_where_modules_outside_the_contract_folder_live(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (project / "shopback.py").rename(code / "shopback.py")
    with pytest.raises(ContractError, match="no such module in the contract's folder"):
        load_contract(project / "shop.yaml")
    monkeypatch.setenv("CHARTER_BACKEND_PATH", str(code))
    assert load_contract(project / "shop.yaml").modules["shopback"].path == str(code / "shopback.py")


def test_a_changed_module_is_refused_with_both_hashes_until_republished(project: Path, charter_home: Path) -> None:
    _publish(project / "shop.yaml")
    recorded = Registry().get("shop").modules[0].sha256
    module = project / "shopback.py"
    module.write_text(BACKEND.replace('"note": reason', '"note": "changed"'), encoding="utf-8")
    service = CharterService.create(registry=Registry(), audit=AuditLog(charter_home / "a.db"), agent=None)
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["orders:read", "orders:write"])
    app = create_app(service, store, IdempotencyStore(charter_home / "i.db"))
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        response = client.post("/v1/programs", json={"contract": "shop", "program": GET_1})
        untouched = client.post("/v1/programs", json={"contract": "shop", "program": "conclude('ok')"})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:charter:problem:backend-unavailable"
    import hashlib

    now = hashlib.sha256(module.read_bytes()).hexdigest()
    assert f"sha256 recorded at publish {recorded}, file now {now}" in body["detail"]
    assert "charter contract publish" in body["detail"]
    assert (body["contract"], body["version"]) == ("shop", "1.0.0")
    assert len(body["run_id"]) == 32
    assert untouched.json()["status"] == "done"  # a run that binds nothing from it is not affected

    cli = _exec(GET_1, project)
    assert cli.returncode == 4, cli.stdout + cli.stderr
    assert "backend unavailable" in cli.stderr
    assert recorded in cli.stderr
    assert now in cli.stderr

    # Re-publishing the same version with a changed module is refused: it is a new patch version.
    with pytest.raises(VersionConflict, match=r"publish the change as a new patch version \(1.0.1\)"):
        _publish(project / "shop.yaml")
    bumped = project / "shop.yaml"
    bumped.write_text(bumped.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    _publish(bumped)
    result = _exec(GET_1, project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == "1.0.1"
    assert _exec(GET_1, project, "shop@1.0.0").returncode == 4  # the old version stays refused


def test_a_missing_or_broken_module_affects_only_its_operations(project: Path, tmp_path: Path) -> None:
    (project / "cancelling.py").write_text(BACKEND, encoding="utf-8")
    path = project / "shop.yaml"
    path.write_text(
        path.read_text().replace(
            "    scopes: [orders:write]\n",
            "    scopes: [orders:write]\n    binding: {python: 'cancelling:cancel_order'}\n",
        )
    )
    _publish(path)
    (project / "cancelling.py").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reads = _exec(GET_1, elsewhere)
    assert reads.returncode == 0, reads.stdout + reads.stderr
    cancels = _exec(CANCEL_1, elsewhere)
    assert cancels.returncode == 4
    assert "operation cancel_order: binding module 'cancelling' recorded at publish" in cancels.stderr
    assert json.loads(cancels.stdout)["backend_unavailable"]
    # The gate's own read of the entity goes through the same loader: its failure is the server's too.
    (project / "shopback.py").unlink()
    unread = _exec(CANCEL_1, elsewhere)
    assert unread.returncode == 4, unread.stdout + unread.stderr
    assert "cancel_order refused: contract shop 1.0.0, operation get_order: binding module 'shopback'" in unread.stderr


def test_a_module_that_fails_to_import_is_the_servers_fault_in_mcp(project: Path) -> None:
    (project / "shopback.py").write_text("raise RuntimeError('no database configured')\n" + BACKEND)
    path = project / "shop.yaml"
    # Publish records the broken file as it is: its import fails only when an operation runs.
    _publish(path)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "charter", "mcp", "--principal", "ada", "--scope", "orders:read"],
        env=dict(os.environ),
        cwd=str(project.parent),
    )

    async def session() -> Any:
        async with Client(params) as client:
            return await client.call_tool("execute_program", {"contract": "shop", "program": GET_1})

    result = anyio.run(session)
    assert result.is_error is True
    body = json.loads(result.content[0].text)
    assert body["type"] == "urn:charter:problem:backend-unavailable"
    assert body["internal"] is True
    assert "module 'shopback' raised RuntimeError" in body["detail"]  # the HTTP API's problem shape
    assert "no database configured" not in body["detail"]  # withheld: the server's log has it


def test_an_import_failures_text_is_withheld_like_any_backend_error(project: Path, charter_home: Path) -> None:
    # The secret is raised in a helper the binding module imports: any text an import raises may hold one.
    (project / "shopconfig.py").write_text("raise RuntimeError('config password hunter2')\n", encoding="utf-8")
    (project / "shopback.py").write_text("import shopconfig  # noqa: F401\n" + BACKEND, encoding="utf-8")
    _publish(project / "shop.yaml")
    program = "try:\n    shop.get_order(id=1)\nexcept OperationError as error:\n    print(error.code, str(error))\n"
    ran = _exec(program + "shop.get_order(id=1)\n", project)
    assert ran.returncode == 4, ran.stdout + ran.stderr
    answer = json.loads(ran.stdout)
    assert (answer["status"], answer["cause"]) == ("failed", "BACKEND_UNAVAILABLE")
    assert "hunter2" not in ran.stdout  # the program's output, the reason, the caller's JSON
    assert "cannot load binding 'shopback:get_order' (module 'shopback' raised RuntimeError" in ran.stdout
    log = AuditLog(charter_home / "audit.db")
    assert all(b"hunter2" not in row.body for row in log.stored())  # nor any signed receipt
    kept = log.backend_errors(answer["run_id"])
    assert [(k.operation, k.error_type, k.message) for k in kept] == [
        ("get_order", "RuntimeError", "config password hunter2"),
        ("get_order", "RuntimeError", "config password hunter2"),
    ]


def test_a_republished_module_runs_its_new_code_in_a_running_server(project: Path, charter_home: Path) -> None:
    note = "o = shop.cancel_order(id=1, reason='asked')\nconclude(o.note)\n"
    _publish(project / "shop.yaml")
    service = CharterService.create(registry=Registry(), audit=AuditLog(charter_home / "a.db"), agent=None)
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["orders:read", "orders:write"])
    app = create_app(service, store, IdempotencyStore(charter_home / "i.db"))
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:

        def run(ref: str) -> httpx.Response:
            return client.post("/v1/programs", json={"contract": ref, "program": note})

        assert run("shop").json()["answer"] == "asked"  # 1.0.0's module is loaded now
        (project / "shopback.py").write_text(BACKEND.replace('"note": reason', '"note": "v2 " + reason'))
        assert run("shop@1.0.0").json()["answer"] == "asked"  # what runs is still what was published
        bumped = project / "shop.yaml"
        bumped.write_text(bumped.read_text().replace("version: 1.0.0", "version: 1.0.1"))
        _publish(bumped)
        fresh = run("shop").json()
    assert (fresh["version"], fresh["answer"]) == ("1.0.1", "v2 asked")  # not the module loaded for 1.0.0


def test_a_contract_without_module_records_names_the_fix(write_contract: WriteContract) -> None:
    path = write_contract(replace={"python: tests.data.shop_backend": "python: nowhere_backend"})
    compiled = compile_contract(load_contract(path, resolve_bindings=False))
    assert compiled.modules == ()
    backend = PythonBackend(compiled)  # nothing is imported until an operation is called
    with pytest.raises(BackendUnavailable) as caught:
        backend.invoke("get_order", {"id": 1})
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert "operation get_order: binding module 'nowhere_backend' was not recorded at publish" in caught.value.message
    assert "set CHARTER_BACKEND_PATH" in caught.value.message
