"""`charter token`, `charter serve` and `charter mcp` as real processes: their usage errors and files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import ROOT, charter


def test_tokens_are_added_listed_and_revoked_and_only_hashes_are_kept(charter_home: Path) -> None:
    added = charter("token", "add", "upstream-ai", "-p", "support-agent", "-s", "orders:read", "-s", "orders:write")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("chr_")
    assert "it is not shown again" in added.stderr
    stored = yaml.safe_load((charter_home / "tokens.yaml").read_text(encoding="utf-8"))
    [entry] = stored["tokens"]
    assert (entry["name"], entry["principal"], entry["scopes"]) == (
        "upstream-ai",
        "support-agent",
        ["orders:read", "orders:write"],
    )
    assert token not in (charter_home / "tokens.yaml").read_text(encoding="utf-8")
    listed = charter("token", "list", "--json")
    assert json.loads(listed.stdout) == [
        {"name": "upstream-ai", "principal": "support-agent", "scopes": ["orders:read", "orders:write"]}
    ]
    twice = charter("token", "add", "upstream-ai", "-p", "x")
    assert twice.returncode == 1
    assert "a token named 'upstream-ai' exists" in twice.stderr
    assert charter("token", "revoke", "upstream-ai").returncode == 0
    missing = charter("token", "revoke", "upstream-ai")
    assert (missing.returncode, "no token is named 'upstream-ai' (tokens: none)" in missing.stderr) == (1, True)


def test_a_malformed_token_file_is_named_with_its_field(charter_home: Path) -> None:
    charter_home.mkdir(parents=True, exist_ok=True)
    (charter_home / "tokens.yaml").write_text("tokens:\n  - name: a\n    principal: b\n    sha256: short\n")
    result = charter("token", "list")
    assert result.returncode == 1
    assert f"{charter_home / 'tokens.yaml'}: tokens.0.sha256: String should match pattern" in result.stderr


def test_serve_prints_the_openapi_document_kept_in_the_repo() -> None:
    result = charter("serve", "--openapi")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))


def test_a_bad_address_is_a_usage_error() -> None:
    for command in (["serve", "localhost"], ["mcp", "--http", "127.0.0.1:99999"]):
        result = charter(*command)
        assert result.returncode == 1
        assert "is not HOST:PORT, e.g. 127.0.0.1:8700" in result.stderr
