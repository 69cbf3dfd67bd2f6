"""Conventional `--help` for every command: `PROGRAM` and `[RUN]` in the usage line (not
`{program}`), an option's value as a word in capitals (`--bundle FILE`, never `<path>`),
and no type at all beside a flag (never `<bool>`).

Applied once, to the whole command tree, by `conventional_help` in `charter.cli.main`, so a
new command gets it without repeating it; an explicit `metavar=` on a parameter wins.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

# typer carries its own copy of click: its commands and parameter types are not the `click`
# package's classes, so they are recognised here by what they have.

__all__ = ["conventional_help"]


class _Argument(TyperArgument):
    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the name column already says what it is


class _Flag(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _metavar_of(param: TyperOption) -> str:
    described = param.type_descriptor
    if described.is_path:
        return "DIR" if "dir" in str(described.path_type).lower() else "FILE"
    return (param.name or "value").upper().replace("_", "-")


def conventional_help(command: Any) -> Any:
    """Give every parameter of `command` (a typer command or group) and its subcommands a
    conventional metavar, the help option included. Returns `command`."""
    help_option = command.get_help_option(command.context_class(command))
    for param in [*command.params, help_option]:
        if isinstance(param, TyperArgument):
            param.metavar = (param.metavar or param.name or "arg").upper()
            param.__class__ = _Argument
        elif isinstance(param, TyperOption):
            if param.is_flag or param.count:
                param.__class__ = _Flag
            elif param.metavar is None:
                param.metavar = _metavar_of(param)
    for sub in getattr(command, "commands", {}).values():
        conventional_help(sub)
    return command
