"""The `charter` command line: thin commands over the library."""

from __future__ import annotations

import typer

from charter.cli import approvals, audit, contract, db, keys, sandbox, ui
from charter.cli._help import conventional_help
from charter.cli._output import warn
from charter.cli.demo import demo
from charter.cli.execute import execute
from charter.cli.run import run
from charter.cli.serve import mcp, serve, token_app
from charter.errors import CharterError

__all__ = ["app", "main"]

app = typer.Typer(
    help="Charter: a governed execution layer for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(contract.app, name="contract")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(sandbox.bench_app, name="bench")
app.add_typer(audit.app, name="audit")
app.add_typer(approvals.app, name="approvals")
app.add_typer(db.app, name="db")
app.add_typer(keys.app, name="keys")
app.add_typer(token_app, name="token")
app.add_typer(ui.app, name="ui")
app.command()(run)
app.command("exec")(execute)
app.command()(demo)
app.command()(serve)
app.command()(mcp)


def main() -> None:
    """Run the command line, with conventional metavars in every command's --help. The one
    place a failure the user can act on becomes `error: ...` with exit status 1, for every
    command: a usage or contract error (CharterError, e.g. a store with another schema version)
    or an OS error on a path the user gave (no such folder, permission denied). Anything else
    is a bug and keeps its traceback."""
    try:
        conventional_help(typer.main.get_command(app))(prog_name="charter")
    except (CharterError, OSError) as error:
        warn(f"error: {_described(error)}")
        raise SystemExit(1) from None


def _described(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)
