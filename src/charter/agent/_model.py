"""The model side of the Runtime Agent: one request in, one answer out.

    Model (protocol)
    ├── AnthropicModel   Claude through the Messages API (the anthropic SDK), bounded retries
    └── ScriptedModel    answers from a list or a function: for tests, yours and ours

A `ModelRequest` is the prompt as data: the instructions and the contract block (both
in the cached prefix) and the conversation. `api_params()` is the exact Messages API
request, so its hash in the audit record identifies what the model saw.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol

import msgspec

from charter.agent._tokens import estimate_tokens
from charter.errors import ScriptExhausted, UsageError

__all__ = [
    "DEFAULT_MODEL",
    "AgentSettings",
    "Message",
    "Model",
    "ModelReply",
    "ModelRequest",
    "ScriptedModel",
    "Usage",
]

DEFAULT_MODEL = "claude-sonnet-5-5"


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the Runtime Agent asks its model. `from_env` reads the CHARTER_* variables."""

    model: str = DEFAULT_MODEL
    max_tokens: int = 4096
    timeout_s: float = 60.0  # one HTTP request to the model
    max_retries: int = 3  # after the first try, for 429, 5xx, overloaded and timeouts
    retry_base_s: float = 1.0  # backoff: base * 2**n, with jitter, unless the API says when
    max_retry_wait_s: float = 30.0  # a longer retry-after than this ends the request instead
    repair_rounds: int = 2  # further attempts after the first program
    max_intent_chars: int = 4000

    _ENV = {
        "model": "CHARTER_MODEL",
        "max_tokens": "CHARTER_MAX_TOKENS",
        "timeout_s": "CHARTER_MODEL_TIMEOUT",
        "max_retries": "CHARTER_MODEL_RETRIES",
        "repair_rounds": "CHARTER_REPAIR_ROUNDS",
    }

    @classmethod
    def from_env(cls, **overrides: Any) -> AgentSettings:
        """Defaults, then the environment, then `overrides` (None values are ignored)."""
        values: dict[str, Any] = {}
        for field, variable in cls._ENV.items():
            raw = os.environ.get(variable)
            if raw:
                values[field] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as error:
            names = ", ".join(f"{v} (or --{k.replace('_s', '').replace('_', '-')})" for k, v in cls._ENV.items())
            raise UsageError(f"agent settings: {error}; check {names}") from None
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.max_tokens < 1 or self.timeout_s <= 0 or self.max_retries < 0 or self.repair_rounds < 0:
            raise UsageError(
                "agent settings: max tokens and timeout must be positive, retries and repair rounds not negative "
                f"(got max_tokens={self.max_tokens}, timeout_s={self.timeout_s}, max_retries={self.max_retries}, "
                f"repair_rounds={self.repair_rounds})"
            )


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts of one answer, as the Messages API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f: getattr(self, f) + getattr(other, f) for f in self.__struct_fields__})

    def as_dict(self) -> dict[str, int]:
        return msgspec.structs.asdict(self)

    @property
    def prompt_tokens(self) -> int:
        """Every input token, however it was billed: fresh, written to or read from the cache."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


class Message(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    text: str


_canonical = msgspec.json.Encoder(order="sorted")


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    max_tokens: int
    instructions: str
    contract_block: str
    messages: tuple[Message, ...]

    def api_params(self) -> dict[str, Any]:
        """The Messages API request. The cache breakpoint closes the contract block, so the
        instructions and the contract (byte-identical per contract version) form the
        cached prefix and only the conversation after them is new."""
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": [
                {"type": "text", "text": self.instructions},
                {"type": "text", "text": self.contract_block, "cache_control": {"type": "ephemeral"}},
            ],
            "messages": [{"role": m.role, "content": m.text} for m in self.messages],
        }

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(_canonical.encode(self.api_params())).hexdigest()

    @property
    def contract_block_sha256(self) -> str:
        return hashlib.sha256(self.contract_block.encode("utf-8")).hexdigest()


class ModelReply(msgspec.Struct, frozen=True, kw_only=True):
    text: str  # the text blocks of the answer, joined
    model: str  # the model that answered, as the API named it
    usage: Usage
    stop_reason: str | None
    request_id: str | None
    raw: str  # the response body, verbatim, for the audit record
    tries: int = 1  # HTTP requests made, retries included


class Model(Protocol):
    """Anything that answers a ModelRequest. Raise ModelUnavailable when there is no answer."""

    @property
    def name(self) -> str: ...

    def complete(self, request: ModelRequest) -> ModelReply: ...


Script = Sequence[str] | Callable[[ModelRequest], str]


class ScriptedModel:
    """A model that answers from a script, for tests: a list of answers used in order, or a
    function from the request to the answer. It never touches the network.

        model = ScriptedModel(["```python\\nrefuse('no')\\n```"])
        Charter(model=model).handle("Cancel order 123", contract="orders", principal=...)
        model.requests[0].messages[-1].text   # what the agent asked

    Usage is estimated (about 3.5 characters a token) and reported with no cache tokens,
    since nothing is cached; its `raw` body has the Messages API's shape.
    """

    def __init__(self, script: Script, *, name: str = "scripted") -> None:
        self._name = name
        self._function = script if callable(script) else None
        self._answers: Iterator[str] = iter(()) if callable(script) else iter(list(script))
        self._size = 0 if callable(script) else len(script)
        self.requests: list[ModelRequest] = []

    @property
    def name(self) -> str:
        return self._name

    def complete(self, request: ModelRequest) -> ModelReply:
        self.requests.append(request)
        if self._function is not None:
            text = self._function(request)
        else:
            try:
                text = next(self._answers)
            except StopIteration:
                raise ScriptExhausted(
                    f"the scripted model was asked for answer {len(self.requests)} but its script has {self._size}",
                    tries=1,
                ) from None
        prompt = "".join([request.instructions, request.contract_block, *(m.text for m in request.messages)])
        usage = Usage(input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(text))
        body = {
            "id": f"msg_scripted_{secrets.token_hex(8)}",
            "type": "message",
            "role": "assistant",
            "model": self._name,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage.as_dict(),
        }
        raw = msgspec.json.encode(body).decode("utf-8")
        return ModelReply(text=text, model=self._name, usage=usage, stop_reason="end_turn", request_id=None, raw=raw)
