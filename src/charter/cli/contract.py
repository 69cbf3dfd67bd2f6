"""`charter contract ...`: check, compile, publish, diff, list, show, schema, import-openapi."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from charter.cli._output import fail, out, print_json, safe_text, say
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
                say(str(problem), "red")
            continue
        compiled = compile_contract(checked)
        say(
            f"{checked.file}: ok ({compiled.name} {compiled.version}, sha256 {compiled.sha256[:12]})",
            "green",
        )
        for warning in checked.warnings:  # risky but sound: said, and the check still passes
            say(str(warning), "yellow")
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
    by: Annotated[
        str | None,
        typer.Option("--by", help="Who publishes it, recorded with the version (default: your OS user name)."),
    ] = None,
) -> None:
    """Record an immutable contract version in the registry, with who published it."""
    try:
        checked = load_contract(file)
        result = Registry().publish(
            checked,
            file.read_text(encoding="utf-8"),
            allow_relaxation=allow_relaxation,
            published_by=by if by is not None else _os_user(),
        )
    except CharterError as exc:  # ChangeRefused included: its message lists the offending changes
        fail(exc)
    info = result.info
    if not result.created:
        say(f"{info.name} {info.version} is already published with this content (sha256 {info.sha256[:12]})")
        say("nothing to do")
        return
    by_whom = f" by {info.published_by}" if info.published_by else ""
    say(f"published {info.name} {info.version}{by_whom} (sha256 {info.sha256[:12]})", "green")
    for module in checked.modules.values():
        say(f"  binding module {module.module}: {module.path} (sha256 {module.sha256[:12]})")
    for change in result.changes:
        say(f"  {change}")


def _os_user() -> str | None:
    """The OS user's login name, the default publisher; None (not recorded) where it has none
    (getpass finds no LOGNAME/USER and the uid has no passwd entry, as in some containers)."""
    try:
        return getpass.getuser() or None
    except (OSError, KeyError):
        return None


def _model(ref: str) -> tuple[str, Contract]:
    path = Path(ref)
    if path.exists():
        checked = load_contract(path)
        return f"{checked.file} ({checked.version})", checked.model
    name, version = parse_ref(ref)  # UsageError for a bad selector: the caller reports it
    registry = Registry()
    info = registry.info(name, version)
    return f"{info.name}@{info.version}", registry.model(info.name, info.version)


EXIT_CHANGES_FOUND = 2  # `diff`: changes of a class named by --fail-on were found (1 is a usage error)
_CHANGE_KINDS = ("breaking", "relaxation", "additive")


def _fail_on(text: str) -> set[str]:
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = kinds - set(_CHANGE_KINDS)
    if unknown:
        fail(f"--fail-on {text!r}: unknown class {', '.join(sorted(unknown))}; choose from {', '.join(_CHANGE_KINDS)}")
    return kinds


@app.command()
def diff(
    old: Annotated[str, typer.Argument(help="A contract file, or NAME[@VERSION] from the registry.")],
    new: Annotated[str, typer.Argument(help="A contract file, or NAME[@VERSION] from the registry.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
    fail_on: Annotated[
        str,
        typer.Option(help="Comma-separated change classes that exit 2 (breaking, relaxation, additive)."),
    ] = "breaking",
) -> None:
    """List the changes from OLD to NEW, classified as breaking, relaxation or additive.

    Exit status: 0 when no change of a --fail-on class (default: breaking) was found, 2 when
    one was (for CI), 1 for a usage error."""
    failing = _fail_on(fail_on)
    try:
        old_label, old_model = _model(old)
        new_label, new_model = _model(new)
    except CharterError as exc:
        fail(exc)
    if old_model.contract != new_model.contract:
        # Versions of one contract are compared; two contracts share no history to classify.
        fail(
            f"{old_label} is contract '{old_model.contract}' but {new_label} is contract '{new_model.contract}': "
            "diff compares two versions of one contract; give two versions of the same name"
        )
    changes = diff_contracts(old_model, new_model)
    if as_json:
        print_json([{"kind": c.kind, "where": c.where, "message": c.message} for c in changes])
    else:
        say(f"{old_label} -> {new_label}: {len(changes)} change(s)")
        styles = {"breaking": "red", "relaxation": "yellow", "additive": "green"}
        for change in changes:
            say(f"  {change}", styles[change.kind])
    found = sorted({c.kind for c in changes} & failing)
    if found:
        if not as_json:
            say(f"failing: {', '.join(found)} change(s) found (--fail-on {','.join(sorted(failing))})", "red")
        raise typer.Exit(EXIT_CHANGES_FOUND)


@app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="NAME@MAJOR: the major line unpinned callers get from now on.")],
) -> None:
    """Make a major line the default: callers that name no version get its newest version.

    Until a contract is promoted, its first published major is the default, so no caller
    crosses a breaking change without the author saying so."""
    try:
        name, selector = parse_ref(ref)
        if selector is None or "." in selector:
            fail(f"'{ref}': promote names a major line, e.g. `charter contract promote {name}@2`")
        registry = Registry()
        before = registry.info(name)
        info = registry.promote(name, int(selector))
    except CharterError as exc:
        fail(exc)
    say(f"{name}: unpinned callers now get {info.version} (major {selector}; was {before.version})", "green")


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List published contract versions; `default` marks what an unpinned caller gets."""
    registry = Registry()
    versions = registry.list()
    defaults = {name: registry.info(name).version for name in {v.name for v in versions}}
    if as_json:
        print_json(
            [
                {
                    "name": v.name,
                    "version": v.version,
                    "sha256": v.sha256,
                    "published_at": v.published_at,
                    "published_by": v.published_by,
                    "relaxation_approved": v.relaxation_approved,
                    "default": defaults[v.name] == v.version,
                }
                for v in versions
            ]
        )
        return
    if not versions:
        say("no contracts published yet (charter contract publish FILE)")
        return
    table = Table("contract", "version", "sha256", "published", "by", "from", "default")
    for v in versions:
        mark = "yes" if defaults[v.name] == v.version else ""
        # Cells as Text: a str cell is read as rich markup, and a path may hold "[...]".
        cells = (v.name, v.version, v.sha256[:12], v.published_at, v.published_by or "-", v.source_file, mark)
        table.add_row(*(safe_text(cell) for cell in cells))
    out.print(table)


@app.command()
def show(
    ref: Annotated[
        str, typer.Argument(help="NAME, NAME@MAJOR, NAME@MAJOR.MINOR or NAME@X.Y.Z (default major's newest).")
    ],
    stubs: Annotated[bool, typer.Option("--stubs", help="Print the typed proxy stubs.")] = False,
    source: Annotated[bool, typer.Option("--source", help="Print the file as published.")] = False,
) -> None:
    """Show a published version: its operational model, stubs or source."""
    registry = Registry()
    try:
        name, version = parse_ref(ref)
        info = registry.info(name, version)
        compiled = registry.get(info.name, info.version)
    except CharterError as exc:
        fail(exc)
    if source:
        say(registry.source(info.name, info.version).rstrip("\n"))
        return
    say(
        f"{info.name} {info.version}  sha256 {info.sha256}  published {info.published_at} "
        f"by {info.published_by or '(not recorded)'} from {info.source_file}",
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
