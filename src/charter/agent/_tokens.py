"""Token estimates where no API is there to count: benchmarks and the scripted model.

Anthropic documents that a Claude token is about 3.5 English characters. The estimate
is that ratio, rounded up; it is labelled as an estimate wherever it is shown. Counts
reported by the real API (the usage block of each response) are always used as given.
"""

from __future__ import annotations

import math

__all__ = ["CHARS_PER_TOKEN", "estimate_tokens"]

CHARS_PER_TOKEN = 3.5


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)
