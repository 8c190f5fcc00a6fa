"""Typed chat (`listen detect` with text, from py-xiaozhi or a browser page) of one session:
each message is an LLM call and a stored exchange, so it is bounded in length and in turns per
minute. Beyond either, the message is ignored (and logged, rate-limited)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class TypedTextGuard:
    def __init__(self, max_chars: int, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_chars = max_chars
        self.per_minute = per_minute
        self.clock = clock
        self._recent: deque[float] = deque()  # accepted turns within the last 60 s

    def refusal(self, text: str) -> str | None:
        """None to accept `text` as a turn (counted), else why it is refused."""
        if self.max_chars and len(text) > self.max_chars:
            return f"typed text of {len(text)} characters (limit {self.max_chars})"
        now = self.clock()
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        if self.per_minute and len(self._recent) >= self.per_minute:
            return f"more than {self.per_minute} typed turns per minute"
        self._recent.append(now)
        return None
