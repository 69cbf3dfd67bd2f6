"""Recorded Messages API responses, served to the real anthropic client over an httpx2
MockTransport: the demo without an API key, and the agent's tests.

A recording is a JSON file:

    {"note": "...", "exchanges": [
        {"intent": "Cancel order 123", "turn": 1, "status": 200, "headers": {...}, "body": {...}},
        ...]}

A request is answered by its key: the recorded `intent` found in the request's first user
message (the rendered intent) and the `turn` (1, then 2 after one repair round). The
exchanges with one key are served in order (a 429 then a 200 is a retry) and then again
from the first, so a recording answers the same request any number of times: a server
started with `--replay` serves every client that asks the recorded intents.

A request no exchange matches raises `RecordingMismatch`: a local error naming the
recording files and what they hold, never a Messages API error and never the prompt.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx2
import msgspec

from charter.agent._anthropic import AnthropicModel
from charter.agent._model import AgentSettings
from charter.errors import RecordingMismatch, UsageError

__all__ = ["Exchange", "RecordedTransport", "load_recordings", "recorded_model"]


class Exchange(msgspec.Struct, frozen=True, kw_only=True):
    intent: str
    turn: int = 1
    status: int = 200
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: Any


class _Recording(msgspec.Struct, frozen=True, kw_only=True):
    note: str = ""
    exchanges: tuple[Exchange, ...]


def load_recordings(paths: Iterable[Path]) -> list[Exchange]:
    exchanges: list[Exchange] = []
    for path in paths:
        try:
            recording = msgspec.json.decode(Path(path).read_bytes(), type=_Recording)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
            raise UsageError(f"{path}: not a recording of model responses: {error}") from None
        exchanges.extend(recording.exchanges)
    return exchanges


class RecordedTransport(httpx2.MockTransport):
    """Serves `exchanges` by key (intent, turn), reusably; `requests` keeps every request body
    it received, decoded. `source` names the recording in errors (its file names)."""

    def __init__(self, exchanges: Sequence[Exchange], *, source: str = "the recording") -> None:
        super().__init__(self._answer)
        self._keys: dict[tuple[str, int], list[Exchange]] = {}
        for exchange in exchanges:
            self._keys.setdefault((exchange.intent, exchange.turn), []).append(exchange)
        self._served: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._source = source
        self.requests: list[dict[str, Any]] = []

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        try:
            body = json.loads(request.content)
            messages = body.get("messages") or []
            first = messages[0]["content"] if messages else ""
        except (ValueError, AttributeError, LookupError, TypeError):
            body, messages, first = {}, [], ""
        if not isinstance(first, str):  # content blocks: the text of the first one is the rendered intent
            first = "".join(block.get("text", "") for block in first if isinstance(block, dict))
        turn = len(messages) // 2 + 1
        with self._lock:
            self.requests.append(body)
            key = next((k for k in self._keys if k[1] == turn and k[0] in first), None)
            if key is not None:
                recorded = self._keys[key]
                served = self._served.get(key, 0)
                self._served[key] = served + 1
                exchange = recorded[served % len(recorded)]
                return httpx2.Response(exchange.status, headers=exchange.headers, json=exchange.body)
        held = "; ".join(f"{intent!r} turn {turn}" for intent, turn in self._keys) or "nothing"
        raise RecordingMismatch(
            f"{self._source} holds no exchange matching this request (turn {turn} of an intent it does not "
            f"record); it records: {held}. Record the intent, or run without --replay to ask the model",
            tries=1,
        )


def recorded_model(settings: AgentSettings, paths: Iterable[Path]) -> AnthropicModel:
    """The real anthropic client answering from recordings (`charter run --replay`, the demo)."""
    paths = list(paths)
    source = "recording " + ", ".join(str(p) for p in paths)
    transport = RecordedTransport(load_recordings(paths), source=source)
    return AnthropicModel(settings, api_key="recorded", http_client=httpx2.Client(transport=transport))
