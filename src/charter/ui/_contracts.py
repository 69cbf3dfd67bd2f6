"""The review app's Contracts pages: every published version (who published it, whether a
relaxation was acknowledged), one version as its callers and its gate see it, and the
classified changes between any two versions.

    GET /ui/contracts                                 every contract and version
    GET /ui/contracts/{name}/{version}                one version: prompt block, stubs, operations,
                                                      hard boundaries and the rules enforcing each
    GET /ui/contracts/{name}/diff?from=X&to=Y         changes from X to Y, breaking/relaxation/additive

Any signed-in viewer may read them (the API's GET /v1/contracts answers every token alike).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from charter.compiler.artifact import OperationRule
from charter.errors import ContractNotFound, UsageError
from charter.ui._app import SignedIn, UiContext, UiError, query_values
from charter.ui._code import highlighted_lines

__all__ = ["add_routes"]

_MAX_VERSION = 64


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of an operation as the page lists it: its id as boundaries name it, and its text."""

    label: str  # e.g. "guard:refund_within_total", as a boundary's enforced_by names it
    text: str


def rules_of(operation: OperationRule) -> list[Rule]:
    """The gate's rules for `operation`, in the order the gate applies them."""
    rules = [Rule(f"scope:{scope}", f"the principal holds {scope}") for scope in operation.scopes]
    if operation.after:
        rules.append(Rule(f"after:{operation.name}", "after " + ", ".join(operation.after) + " succeeded in the run"))
    transition = operation.transition
    if transition is not None:
        rules.append(
            Rule(
                f"transition:{transition.name}",
                f"{transition.field} in [{', '.join(transition.from_states)}] -> {transition.to}",
            )
        )
    rules += [Rule(f"guard:{g.id}", f"{g.when} ({g.message})") for g in operation.guards]
    rules += [Rule(f"provenance:{operation.name}.{p.param}", _sources(p.sources)) for p in operation.provenance]
    rules += [Rule(f"quota:{q.id}", f"at most {q.max} per {q.window}") for q in operation.quotas]
    rules += [Rule(f"lookup:{lookup.name}", f"reads {lookup.operation}") for lookup in operation.lookups]
    if operation.requires_approval:
        when = operation.approval_when or "always"
        reason = f" ({operation.approval_reason})" if operation.approval_reason else ""
        rules.append(Rule(f"approval:{operation.name}", f"{when}{reason}"))
    return rules


def _sources(sources: tuple[object, ...]) -> str:
    labels = [str(getattr(source, "label", source)) for source in sources]
    return "from " + ", ".join(labels)


def _not_found(error: ContractNotFound | UsageError) -> UiError:
    status = 404 if isinstance(error, ContractNotFound) else 400
    title = "No such contract version" if status == 404 else "Not a version"
    return UiError(status, title, f"{error} (every published version is listed at /ui/contracts)")


def add_routes(router: APIRouter, ui: UiContext) -> None:
    @router.get("/contracts")
    def contracts(request: Request, viewer: SignedIn) -> HTMLResponse:
        return ui.render(request, "contracts.html", viewer, contracts=ui.service.contract_versions())

    # Before /contracts/{name}/{version}: "diff" is no version, but the routes are matched in order.
    @router.get("/contracts/{name}/diff", response_model=None)
    def diff(request: Request, viewer: SignedIn, name: str) -> Response:
        chosen = query_values(request, {"from": _MAX_VERSION, "to": _MAX_VERSION})
        listing = {c.name: c for c in ui.service.contract_versions()}
        if name not in listing:
            raise UiError(404, "No such contract", f"no contract named {name!r} is published (see /ui/contracts)")
        versions = [v.version for v in listing[name].versions]
        new = chosen.get("to", versions[-1])
        old = chosen.get("from", versions[-2] if len(versions) > 1 else versions[-1])
        try:
            review = ui.service.contract_changes(name, old, new)
        except (ContractNotFound, UsageError) as error:
            raise UiError(400, "Cannot compare these versions", f"{error}; pick both from the lists") from None
        return ui.render(request, "contract_diff.html", viewer, review=review)

    @router.get("/contracts/{name}/{version}", response_model=None)
    def version(request: Request, viewer: SignedIn, name: str, version: str) -> Response:
        if version == "latest" or (version.isdigit() or version.count(".") == 1):
            # A selector (latest, MAJOR, MAJOR.MINOR): the page of the version it selects now.
            try:
                info = ui.service.registry.info(name, None if version == "latest" else version)
            except (ContractNotFound, UsageError) as error:
                raise _not_found(error) from None
            return RedirectResponse(f"/ui/contracts/{info.name}/{info.version}", status_code=303)
        try:
            review = ui.service.contract_review(name, version)
        except (ContractNotFound, UsageError) as error:
            raise _not_found(error) from None
        return ui.render(
            request,
            "contract.html",
            viewer,
            review=review,
            stubs=highlighted_lines(review.compiled.stub_source),
            rules={op.name: rules_of(op) for op in review.operations},
        )
