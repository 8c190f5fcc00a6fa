"""New queries out of the polled conversation records: each record once, none from before the
bridge started, oldest first, with the device-command and music records XiaoAi handled itself
marked so a keyword policy can still decide."""

from __future__ import annotations

from collections import deque

from server.xiaomi.conversation import ConversationRecord

SEEN_LIMIT = 256


class RecordFilter:
    def __init__(self, started_ms: int) -> None:
        self.started_ms = started_ms
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    @classmethod
    def primed(cls, records: list[ConversationRecord], started_ms: int) -> RecordFilter:
        """A filter for which everything in `records` (the first poll) is already old."""
        newest = max((r.time_ms for r in records), default=0)
        f = cls(max(started_ms, newest))
        for r in records:
            f._remember(r.key)
        return f

    @classmethod
    def after(cls, records: list[ConversationRecord], cursor_ms: int, cursor_key: str,
              not_before_ms: int) -> RecordFilter:
        """A filter for a process taking over: new is what came after the previous holder's
        cursor, but nothing older than `not_before_ms`."""
        f = cls(max(cursor_ms, not_before_ms))
        f._remember(cursor_key)
        for r in records:
            if r.time_ms < cursor_ms:
                f._remember(r.key)
        return f

    def new(self, records: list[ConversationRecord]) -> list[ConversationRecord]:
        """The records not seen before and not older than the start, oldest first."""
        fresh = []
        for r in sorted(records, key=lambda r: r.time_ms):
            if r.time_ms < self.started_ms or r.key in self._seen or not r.query:
                continue
            self._remember(r.key)
            fresh.append(r)
        return fresh

    def _remember(self, key: str) -> None:
        self._seen.add(key)
        self._order.append(key)
        while len(self._order) > SEEN_LIMIT:
            self._seen.discard(self._order.popleft())
