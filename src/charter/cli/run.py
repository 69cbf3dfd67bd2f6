"""`charter run "INTENT"`: the Runtime Agent answers an intent under a published contract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charter.cli._output import fail
from charter.cli.execute import (
    AttrOption,
    ContractOption,
    InputOption,
    JsonOption,
    PrincipalOption,
    ScopeOption,
    SecretInputOption,
    check_declared,
    inputs_from,
    principal_from,
    report,
)
from charter.errors import CharterError


def run(
    intent: Annotated[str, typer.Argument(help='What should be done, e.g. "Cancel order 123".')],
    contract: ContractOption,
    principal: PrincipalOption = None,
    scope: ScopeOption = None,
    attr: AttrOption = None,
    model: Annotated[str | None, typer.Option(help="Claude model id (env CHARTER_MODEL).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens per answer (env CHARTER_MAX_TOKENS).")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds for one request to the model (env CHARTER_MODEL_TIMEOUT).")
    ] = None,
    retries: Annotated[
        int | None, typer.Option(help="Retries of a failed model request (env CHARTER_MODEL_RETRIES).")
    ] = None,
    repair_rounds: Annotated[
        int | None, typer.Option(help="Attempts after the first program (env CHARTER_REPAIR_ROUNDS).")
    ] = None,
    replay: Annotated[
        list[Path] | None,
        typer.Option(help="Serve the model's answers from a recording (JSON) instead of the API; repeatable."),
    ] = None,
    as_json: JsonOption = False,
    input_: InputOption = None,
    secret_input: SecretInputOption = None,
) -> None:
    """Answer INTENT: Claude writes one program, the sandbox runs it, the gate checks every call.

    Only the conclusion is printed, with the intent run's id and the contract version. Exit
    status: 0 done, 2 refused, 3 failed, 4 backend unavailable, 5 awaiting approval (--json: approval_id),
    1 for a usage error (nothing ran).
    """
    from charter.agent import AgentSettings, AnthropicModel, Charter
    from charter.agent._recorded import recorded_model

    try:
        # Before the audit log is opened: a bad id writes nothing.
        acting = principal_from(principal, scope, attributes=attr)
        if acting.attributes:
            from charter.registry import Registry, parse_ref

            check_declared(acting, Registry().get(*parse_ref(contract)))
        inputs, secret = inputs_from(input_, secret_input)
        settings = AgentSettings.from_env(
            model=model, max_tokens=max_tokens, timeout_s=timeout, max_retries=retries, repair_rounds=repair_rounds
        )
        agent_model = recorded_model(settings, replay) if replay else AnthropicModel(settings)
        charter = Charter(model=agent_model, settings=settings)
        conclusion = charter.handle(intent, contract=contract, principal=acting, inputs=inputs, secret_inputs=secret)
    except CharterError as error:
        fail(error)
    report(conclusion, as_json=as_json, attempts=conclusion.attempts)
