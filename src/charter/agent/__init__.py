"""The Runtime Agent: natural-language intent in, one governed program, a conclusion out.

    from charter.agent import Charter, ScriptedModel
    charter = Charter()                      # Claude (ANTHROPIC_API_KEY); settings from CHARTER_* variables
    conclusion = charter.handle("Cancel order 123", contract="orders", principal=principal)
    print(conclusion.status, conclusion.text, conclusion.run_id)

For tests, `ScriptedModel` answers from a list or a function and never touches the
network; `AnthropicModel(http_client=...)` runs the real SDK over a transport you give.
"""

from charter.agent._anthropic import AnthropicModel, model_requests_allowed
from charter.agent._charter import Charter, Conclusion
from charter.agent._model import (
    DEFAULT_MODEL,
    AgentSettings,
    Message,
    Model,
    ModelReply,
    ModelRequest,
    ScriptedModel,
    Usage,
)
from charter.agent._program import check_program, extract_program
from charter.agent._tokens import estimate_tokens

__all__ = [
    "DEFAULT_MODEL",
    "AgentSettings",
    "AnthropicModel",
    "Charter",
    "Conclusion",
    "Message",
    "Model",
    "ModelReply",
    "ModelRequest",
    "ScriptedModel",
    "Usage",
    "check_program",
    "estimate_tokens",
    "extract_program",
    "model_requests_allowed",
]
