"""Claude through the Messages API, with Charter's own bounded retries.

The SDK's retries are switched off (max_retries=0) and done here instead, because the
SDK would honour any retry-after, however long, and its tries would not be countable
for the audit record. Here: 429, 408, 5xx, 529 (overloaded), timeouts and dropped
connections are retried `max_retries` times with exponential backoff and jitter, or
after the retry-after the API sent if that is no longer than `max_retry_wait_s`. Every
other error (bad request, authentication, permission) ends at once, with the API's own
message.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2

from charter.agent._model import AgentSettings, ModelReply, ModelRequest, Usage
from charter.errors import MissingApiKey, ModelRequestsBlocked, ModelUnavailable

__all__ = ["AnthropicModel", "model_requests_allowed"]

_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


def model_requests_allowed() -> bool:
    """False when CHARTER_ALLOW_MODEL_REQUESTS=0: the test suite sets it, so no test can
    reach a real model even through a subprocess."""
    return os.environ.get("CHARTER_ALLOW_MODEL_REQUESTS", "1") != "0"


class AnthropicModel:
    """`http_client` replaces the network (tests and recorded demos pass an httpx2 client
    with a MockTransport); `sleep` replaces time.sleep between retries."""

    def __init__(
        self,
        settings: AgentSettings | None = None,
        *,
        api_key: str | None = None,
        http_client: httpx2.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or AgentSettings.from_env()
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise MissingApiKey(
                "ANTHROPIC_API_KEY is not set: set it so the Runtime Agent can ask Claude, "
                "or run a program you wrote yourself with `charter exec`."
            )
        if http_client is None and not model_requests_allowed():
            raise ModelRequestsBlocked(
                "real model requests are switched off (CHARTER_ALLOW_MODEL_REQUESTS=0); "
                "use charter.agent.ScriptedModel or a recorded transport"
            )
        self._client = anthropic.Anthropic(
            api_key=key,
            http_client=http_client,
            max_retries=0,
            timeout=httpx2.Timeout(self.settings.timeout_s, connect=min(5.0, self.settings.timeout_s)),
        )
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self.settings.model

    def complete(self, request: ModelRequest) -> ModelReply:
        params = request.api_params()
        settings = self.settings
        tries = 0
        while True:
            tries += 1
            try:
                raw = self._client.messages.with_raw_response.create(**params)
                message = raw.parse()
            except anthropic.APIStatusError as error:
                problem = _describe(error)
                if error.status_code not in _RETRYABLE_STATUS:
                    raise ModelUnavailable(f"the Messages API refused the request: {problem}", tries=tries) from None
                wait = _retry_after(error.response.headers)
            except anthropic.APIConnectionError as error:  # includes APITimeoutError
                local = error.__cause__
                if isinstance(local, ModelUnavailable):  # a local stand-in's own answer (recordings): final
                    local.tries = tries
                    raise local from None
                problem = f"{type(error).__name__}: {error}"
                wait = None
            else:
                text = "".join(block.text for block in message.content if block.type == "text")
                usage = message.usage
                return ModelReply(
                    text=text,
                    model=message.model,
                    usage=Usage(
                        input_tokens=usage.input_tokens,
                        output_tokens=usage.output_tokens,
                        cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
                        cache_read_input_tokens=usage.cache_read_input_tokens or 0,
                    ),
                    stop_reason=message.stop_reason,
                    request_id=raw.headers.get("request-id"),
                    raw=raw.http_response.text,
                    tries=tries,
                )
            if tries > settings.max_retries:
                raise ModelUnavailable(
                    f"the Messages API failed {tries} times (the last: {problem}); giving up after "
                    f"{settings.max_retries} retries",
                    tries=tries,
                ) from None
            if wait is None:
                wait = min(settings.retry_base_s * 2 ** (tries - 1), settings.max_retry_wait_s)
                wait *= random.uniform(0.75, 1.0)
            elif wait > settings.max_retry_wait_s:
                raise ModelUnavailable(
                    f"the Messages API asked to retry after {wait:g} s ({problem}), longer than the "
                    f"{settings.max_retry_wait_s:g} s this request may wait",
                    tries=tries,
                ) from None
            self._sleep(wait)


def _describe(error: anthropic.APIStatusError) -> str:
    body: Any = error.body
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        return f"HTTP {error.status_code} {detail.get('type', '')}: {detail.get('message', '')}".rstrip(": ")
    return f"HTTP {error.status_code}: {error.message}"


def _retry_after(headers: httpx2.Headers) -> float | None:
    """Seconds the API asked us to wait (retry-after-ms, then retry-after), if it said."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
        if seconds >= 0:
            return seconds
    return None
