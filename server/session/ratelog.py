"""Rate-limited warnings: a device repeating the same mistake must not flood the log."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("server.session")


class RateLimitedLog:
    """Log a repeated problem once, then a count every `every` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def warn(self, tag: str, key: str, message: str) -> None:
        now = time.monotonic()
        self._count[key] = self._count.get(key, 0) + 1
        if now - self._last.get(key, -1e9) >= self.every:
            n = self._count[key]
            log.warning("[%s] %s%s", tag, message, f" (x{n} since last report)" if n > 1 else "")
            self._last[key] = now
            self._count[key] = 0
