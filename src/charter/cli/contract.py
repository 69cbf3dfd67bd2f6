"""`charter contract ...`: check, compile, publish, diff, list, show, schema, import-openapi."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from charter.cli._output import fail, out, print_json, say
from charter.compiler import artifact_files, compile_contract
from charter.contract import Contract, load_contract
from charter.errors import CharterError, ContractError
from charter.registry import Registry, diff_contracts, parse_ref

app = typer.Typer(help="Write, check, compile, diff and publish contract versions.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="A contract file (YAML).", dir_okay=False)]


@app.command()
def check(files: Annotated[list[Path], typer.Argument(help="Contract files to check.")]) -> None:
    """Check contract files; print every problem as file:line:column: message."""
    failed = False
    for file in files:
        try:
            checked = load_contract(file)
        except ContractError as exc:
            failed = True
            for problem in exc.problems:
                out.print(str(problem), markup=False, style="red")
            continue
        compiled = compile_contract(checked)
        say(
            f"{checked.file}: ok ({compiled.name} {compiled.version}, sha256 {compiled.sha256[:12]})",
            "green",
        )
        if checked.model.to_decide:
            say(
                f"{checked.file}: a draft: {len(checked.model.to_decide)} item(s) under `to_decide:`; publish refuses "
                "it until each is decided and deleted",
                "yellow",
            )
    if failed:
        raise typer.Exit(1)


@app.command("compile")
def compile_(
    file: FileArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the artifacts to.")],
) -> None:
    """Compile one contract: stubs.py, prompt.md, gate.json, surface.json and manifest.json."""
    try:
        compiled = compile_contract(load_contract(file))
    except CharterError as exc:
        fail(exc)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in artifact_files(compiled).items():
        (out_dir / name).write_text(text, encoding="utf-8")
        say(f"wrote {out_dir / name}")
    say(f"{compiled.name} {compiled.version} sha256 {compiled.sha256}", "green")


@app.command()
def publish(
    file: FileArg,
    allow_relaxation: Annotated[
        bool,
        typer.Option("--allow-relaxation", help="Accept loosened or removed rules (a governance change)."),
    ] = False,
) -> None:
    """Record an immutable contract version in the registry."""
    try:
        checked = load_contract(file)
        result = Registry().publish(checked, file.read_text(encoding="utf-8"), allow_relaxation=allow_relaxation)
    except CharterError as exc:  # ChangeRefused included: its message lists the offending changes
        fail(exc)
    info = result.info
    if not result.created:
        say(f"{info.name} {info.version} is already published with this content (sha256 {info.sha256[:12]})")
        say("nothing to do")
        return
    say(f"published {info.name} {info.version} (sha256 {info.sha256[:12]})", "green")
    for change in result.changes:
        say(f"  {change}")


def _model(ref: str) -> tuple[str, Contract]:
    path = Path(ref)
    if path.exists():
        checked = load_contract(path)
        return f"{checked.file} ({checked.version})", checked.model
    name, version = parse_ref(ref)
    registry = Registry()
    info = registry.info(name, version)
    return f"{info.name}@{info.version}", registry.model(info.name, info.version)


@app.command()
def diff(
    old: Annotated[str, typer.Argument(help="A contract file, or NAME[@VERSION] from the registry.")],
    new: Annotated[str, typer.Argument(help="A contract file, or NAME[@VERSION] from the registry.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
) -> None:
    """List the changes from OLD to NEW, classified as breaking, relaxation or additive."""
    try:
        old_label, old_model = _model(old)
        new_label, new_model = _model(new)
    except CharterError as exc:
        fail(exc)
    changes = diff_contracts(old_model, new_model)
    if as_json:
        print_json([{"kind": c.kind, "where": c.where, "message": c.message} for c in changes])
        return
    say(f"{old_label} -> {new_label}: {len(changes)} change(s)")
    styles = {"breaking": "red", "relaxation": "yellow", "additive": "green"}
    for change in changes:
        say(f"  {change}", styles[change.kind])


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List published contract versions."""
    versions = Registry().list()
    if as_json:
        print_json(
            [
                {
                    "name": v.name,
                    "version": v.version,
                    "sha256": v.sha256,
                    "published_at": v.published_at,
                }
                for v in versions
            ]
        )
        return
    if not versions:
        say("no contracts published yet (charter contract publish FILE)")
        return
    table = Table("contract", "version", "sha256", "published", "from")
    for v in versions:
        table.add_row(v.name, v.version, v.sha256[:12], v.published_at, v.source_file)
    out.print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (latest when no version).")],
    stubs: Annotated[bool, typer.Option("--stubs", help="Print the typed proxy stubs.")] = False,
    source: Annotated[bool, typer.Option("--source", help="Print the file as published.")] = False,
) -> None:
    """Show a published version: its operational model, stubs or source."""
    name, version = parse_ref(ref)
    registry = Registry()
    try:
        info = registry.info(name, version)
        compiled = registry.get(info.name, info.version)
    except CharterError as exc:
        fail(exc)
    if source:
        say(registry.source(info.name, info.version).rstrip("\n"))
        return
    say(
        f"{info.name} {info.version}  sha256 {info.sha256}  published {info.published_at} from {info.source_file}",
        "bold",
    )
    say()
    say((compiled.stub_source if stubs else compiled.prompt_context).rstrip("\n"))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the contract format, for editors."""
    document = Contract.model_json_schema(by_alias=True)
    # Our title replaces the model's class name, which means nothing to an editor user.
    document = {**document, "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Charter contract"}
    print_json(document)


@app.command("import-openapi")
def import_openapi(
    spec: Annotated[Path, typer.Argument(help="An OpenAPI 3 document (YAML or JSON).", dir_okay=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the draft here (default: print it).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The contract's name (default: from info.title).")] = None,
) -> None:
    """Draft a contract from an OpenAPI 3.0/3.1 document: operations, entities, scopes and HTTP
    bindings filled in, and a `to_decide:` list at its top that publish refuses until it is empty."""
    from charter.contract.openapi import draft_from_openapi, load_openapi

    try:
        draft = draft_from_openapi(load_openapi(spec), name=name, source=str(spec))
    except CharterError as error:
        fail(error)
    if output is None:
        print(draft.text, end="")
        return
    if output.exists():
        fail(f"{output} exists; the draft is not written over a file (give another --output)")
    output.write_text(draft.text, encoding="utf-8")
    say(f"drafted {output}: {draft.operations} operations, {draft.entities} entities; {len(draft.todos)} to decide")
    say(
        f"next: decide each item under `to_decide:` at its top and delete it (publish refuses the draft until "
        f"the list is gone), then `charter contract publish {output}`"
    )
