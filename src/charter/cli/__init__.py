"""The `charter` command line: thin commands over the library."""

from __future__ import annotations

import typer

from charter.cli import audit, contract, db, sandbox
from charter.cli._help import conventional_help
from charter.cli.demo import demo
from charter.cli.execute import execute
from charter.cli.run import run
from charter.cli.serve import mcp, serve, token_app

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
app.add_typer(db.app, name="db")
app.add_typer(token_app, name="token")
app.command()(run)
app.command("exec")(execute)
app.command()(demo)
app.command()(serve)
app.command()(mcp)


def main() -> None:
    conventional_help(typer.main.get_command(app))(prog_name="charter")
