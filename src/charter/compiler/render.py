"""Render the stubs and the prompt context from the jinja2 templates in `runtime/`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from charter._paths import shipped_dir
from charter.contract._quotas import notation

__all__ = ["RenderView", "render", "render_text", "templates_dir"]


def templates_dir() -> Path:
    return shipped_dir("runtime")


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # the outputs are Python source and Markdown, never HTML
    )
    # Enum values and states are checked to be snake_case, so plain quoting is exact.
    environment.filters["quoted"] = lambda value: f'"{value}"'
    environment.filters["quota"] = lambda q: notation(q.max, q.window, q.per, money=q.money)
    return environment


@dataclass(frozen=True, slots=True)
class RenderView:
    """What templates see: the compiled rules plus the entity docs and lifecycles."""

    name: str
    version: str
    sha256: str
    summary: str
    enums: dict[str, tuple[str, ...]]
    state_enums: frozenset[str]
    records: dict[str, Any]
    entities: dict[str, Any]
    operations: tuple[Any, ...]
    boundaries: tuple[Any, ...]
    boundaries_by_operation: dict[str, tuple[Any, ...]]

    def boundaries_of(self, operation: Any) -> tuple[Any, ...]:
        return self.boundaries_by_operation.get(operation.name, ())

    @property
    def uses_date(self) -> bool:
        """Whether any field, param or result is a `date` (the stubs then import it)."""
        refs = [*(t for fields in self.records.values() for t in fields.values())]
        for op in self.operations:
            refs.extend(p.type for p in op.params)
            refs.extend([op.returns] if op.returns is not None else [])
        while refs:
            ref = refs.pop()
            if ref.kind == "date":
                return True
            if ref.item is not None:
                refs.append(ref.item)
        return False


def render(template: str, view: RenderView) -> str:
    return _environment().get_template(template).render(c=view)


def render_text(template: str, **values: Any) -> str:
    """Render one of the Runtime Agent's templates (`agent_*.md.j2`) with plain values."""
    return _environment().get_template(template).render(**values)
