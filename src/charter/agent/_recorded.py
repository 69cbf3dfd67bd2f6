"""Recorded Messages API responses, served to the real anthropic client over an httpx2
MockTransport: the demo without an API key, and the agent's tests.

A recording is a JSON file:

    {"note": "...", "exchanges": [
        {"intent": "Cancel order 123", "turn": 1, "status": 200, "headers": {...}, "body": {...}},
        ...]}

`intent` is matched against the request's first user message (the rendered intent),
`turn` is the answer's place in the conversation (1, then 2 after one repair round).
Several exchanges with the same intent and turn are served in order: a 429 then a 200
is a retry. A request nothing matches gets a 404 error body naming what was asked, so
a missing recording fails loudly instead of hanging or guessing.
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
from charter.errors import UsageError

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
    """Serves `exchanges`; `requests` keeps every request body it received, decoded."""

    def __init__(self, exchanges: Sequence[Exchange]) -> None:
        super().__init__(self._answer)
        self._exchanges = list(exchanges)
        self._served: set[int] = set()
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        messages = body.get("messages", [])
        first = messages[0]["content"] if messages else ""
        turn = len(messages) // 2 + 1
        with self._lock:
            self.requests.append(body)
            for index, exchange in enumerate(self._exchanges):
                if index not in self._served and exchange.turn == turn and exchange.intent in first:
                    self._served.add(index)
                    return httpx2.Response(exchange.status, headers=exchange.headers, json=exchange.body)
        missing = {
            "type": "error",
            "error": {"type": "not_found_error", "message": f"no recorded response for turn {turn} of: {first!r}"},
        }
        return httpx2.Response(404, json=missing)


def recorded_model(settings: AgentSettings, paths: Iterable[Path]) -> AnthropicModel:
    """The real anthropic client answering from recordings (`charter run --replay`, the demo)."""
    transport = RecordedTransport(load_recordings(paths))
    return AnthropicModel(settings, api_key="recorded", http_client=httpx2.Client(transport=transport))
