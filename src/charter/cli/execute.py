"""`charter exec`: run a program the caller wrote through sandbox, gate and audit log."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer

from charter.cli._output import fail, print_json, say, warn
from charter.errors import CharterError, UsageError
from charter.inputs import check_inputs, parse_pairs
from charter.principal import Principal

if TYPE_CHECKING:
    from charter.compiler import CompiledContract
    from charter.runner import Answer


ContractOption = Annotated[
    str,
    typer.Option(
        "--contract",
        "-c",
        help="The published contract: NAME (newest of its default major), NAME@MAJOR, NAME@MAJOR.MINOR or NAME@X.Y.Z.",
    ),
]
PrincipalOption = Annotated[
    str | None, typer.Option("--principal", "-p", help="Who the run acts for (default: your user name).")
]
ScopeOption = Annotated[
    list[str] | None, typer.Option("--scope", "-s", help="A scope the principal holds; repeat for more.")
]
AttrOption = Annotated[
    list[str] | None,
    typer.Option(
        "--attr",
        "-a",
        metavar="NAME=VALUE",
        help="A principal attribute the contract declares (principal.attributes), e.g. daily_limit=2000.00; "
        "repeat for more.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the conclusion as JSON.")]
InputOption = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        help="NAME=VALUE: a value the program reads as inputs['NAME'], counted as the request by provenance rules; "
        "repeat for more.",
    ),
]
SecretInputOption = Annotated[
    list[str] | None,
    typer.Option(
        "--secret-input",
        help="NAME=VALUE: an input that is a secret (a password); the audit log records a keyed digest of it, never "
        "the value. Repeat for more.",
    ),
]

# Exit status per run status (charter.status); 1 is a usage error (nothing ran), 4 a server whose
# backend is misconfigured (the program is not at fault).
EXIT_STATUS = {"done": 0, "refused": 2, "failed": 3, "awaiting_approval": 5, "in_doubt": 6, "interrupted": 7}
EXIT_BACKEND_UNAVAILABLE = 4
_STYLE = {"done": "green", "refused": "yellow", "failed": "red"}


def principal_from(
    principal: str | None,
    scopes: list[str] | None,
    *,
    tokens: Path | None = None,
    attributes: list[str] | None = None,
) -> Principal:
    """The principal of --principal/--scope/--attr, checked before anything is written.

    `attributes`: NAME=VALUE texts (charter.principal.parse_attribute); only their syntax is
    checked here, their types by the gate against the contract version a call runs under.

    Raises InvalidPrincipal (a CharterError) for an id or scope that is not valid, or an id
    that looks like (same TR39 skeleton), but is not, a principal of the token file
    (`tokens`, default $CHARTER_HOME/tokens.yaml): the principals Charter knows by name.
    """
    from charter.errors import InvalidPrincipal
    from charter.principal import check_distinct, parse_attribute
    from charter.server import TokenStore

    bound: dict[str, str] = {}
    for text in attributes or ():
        name, value = parse_attribute(text)
        if name in bound:
            raise InvalidPrincipal(f"attribute {name} is given twice (--attr); give each once")
        bound[name] = value
    acting = Principal(principal if principal is not None else getpass.getuser(), frozenset(scopes or ()), bound)
    store = TokenStore(tokens)
    check_distinct(acting.id, (e.principal for e in store.entries()), where=f"the token file {store.path}")
    return acting


def check_declared(acting: Principal, compiled: CompiledContract) -> None:
    """Refuse an --attr the contract version does not declare (UsageError): the gate would
    never read it, so a misspelt `daily_limt=50.00` would leave the real limit unbound."""
    from charter.contract.cel_guards import suggest

    declared = compiled.gate.principal_attributes
    for name in acting.attributes:
        if name not in declared:
            listed = f"it declares {', '.join(sorted(declared))}" if declared else "it declares none"
            raise UsageError(
                f"--attr {name}: contract {compiled.name} {compiled.version} declares no principal attribute "
                f"'{name}'{suggest(name, declared)}; {listed}"
            )


def inputs_from(given: list[str] | None, secret: list[str] | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """The inputs of --input and --secret-input (NAME=VALUE each), checked; UsageError if not."""
    inputs = parse_pairs(given or (), "--input")
    secrets = parse_pairs(secret or (), "--secret-input")
    both = sorted(set(inputs) & set(secrets))
    if both:
        raise UsageError(f"input '{both[0]}' is given by both --input and --secret-input")
    return check_inputs({**inputs, **secrets}, secrets)


def execute(
    program: Annotated[Path, typer.Argument(help="The program file (Python) to run.", dir_okay=False)],
    contract: ContractOption,
    principal: PrincipalOption = None,
    scope: ScopeOption = None,
    attr: AttrOption = None,
    as_json: JsonOption = False,
    input_: InputOption = None,
    secret_input: SecretInputOption = None,
) -> None:
    """Run PROGRAM against a published contract and print its conclusion and run id.

    Exit status: 0 done, 2 refused, 3 failed, 4 backend unavailable (a binding module is
    missing, fails to import or changed since publish), 5 awaiting approval (a call paused for
    a human: `charter approvals show ID`; --json names it in approval_id), 1 for a usage error
    (nothing ran).
    """
    from charter.audit import AuditLog
    from charter.registry import Registry, parse_ref
    from charter.runner import Runner

    try:
        text = program.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read the program {program}: {error}")
    try:
        # Before the audit log is opened: a bad id writes nothing.
        acting = principal_from(principal, scope, attributes=attr)
        inputs, secret = inputs_from(input_, secret_input)
        name, version = parse_ref(contract)
        compiled = Registry().get(name, version)
        check_declared(acting, compiled)
        runner = Runner(audit=AuditLog())
        execution = runner.execute(text, contract=compiled, principal=acting, inputs=inputs, secret_inputs=secret)
    except CharterError as error:
        fail(error)
    report(execution, as_json=as_json)


def report(answer: Answer, *, as_json: bool, **extra: object) -> None:
    """Print a conclusion (text or JSON) and exit with its status (EXIT_STATUS: 0 done, 2 refused,
    3 failed, 5 awaiting approval; EXIT_BACKEND_UNAVAILABLE 4 when the server could not perform a
    call). JSON: run_id, status, cause, answer, approval_id (the approval a paused run waits for,
    else null), decision, data, reason, contract, version, then `extra`."""
    if as_json:
        fields = {"run_id": answer.run_id, "status": answer.status, "cause": answer.cause, "answer": answer.answer}
        fields["approval_id"] = answer.approval_id
        fields["decision"] = msgspec.to_builtins(answer.decision)  # null unless a gate decision decided it
        resolved = {"contract": answer.contract, "version": answer.version}
        unavailable = {"backend_unavailable": list(answer.unavailable)} if answer.unavailable else {}
        print_json({**fields, "data": answer.data, "reason": answer.reason, **resolved, **unavailable, **extra})
    else:
        say(answer.text, _STYLE.get(answer.status, "yellow"))
        say(f"run {answer.run_id}  {answer.contract} {answer.version}  (charter audit show {answer.run_id[:12]})")
    if answer.unavailable:
        for message in answer.unavailable:
            warn(f"error: backend unavailable: {message}")
        raise typer.Exit(EXIT_BACKEND_UNAVAILABLE)
    if answer.status != "done":
        raise typer.Exit(EXIT_STATUS[answer.status])
