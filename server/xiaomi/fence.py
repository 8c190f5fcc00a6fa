"""Who may act on a speaker, and the progress mark of its conversation ("handled up to here").

In a fleet exactly one process polls a speaker, under a lease (server/fleet/leased.py). The
bridge asks its fence before every command it sends the speaker and claims each query by a
fenced write of the cursor *before* acting on it: a process that was paused (SIGSTOP, a long GC,
a frozen VM) and wakes up after another took the speaker over is refused both, so it neither talks
over the new holder nor answers a query a second time. The Xiaomi cloud knows nothing of our
tokens, so the check happens as close to the request as we can put it; the window left is the
time between the check and the request leaving the socket (no await in between for the local check).

One process (embedded state) owns its speakers outright: `Unfenced` allows everything and keeps
no cursor, which is today's behaviour.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

from server.xiaomi.conversation import ConversationRecord
from server.xiaomi.errors import NotOurSpeaker, XiaomiError

log = logging.getLogger("server.xiaomi")


@dataclass(frozen=True, slots=True)
class Cursor:
    """The newest query a holder of the speaker took on."""

    time_ms: int
    key: str

    def dump(self) -> str:
        return json.dumps({"time_ms": self.time_ms, "key": self.key})

    @classmethod
    def load(cls, text: str | None) -> Cursor | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(int(data["time_ms"]), str(data["key"]))
        except (ValueError, KeyError, TypeError):
            log.warning("xiaomi: unreadable conversation cursor %r; starting from now", text[:80])
            return None


class SpeakerFence(Protocol):
    async def check(self, write: bool = True) -> None:
        """Raise NotOurSpeaker unless this process may still act on the speaker. `write=False`
        (a status read) checks only our own lease deadline, without asking the store."""
        ...

    async def claim(self, record: ConversationRecord) -> None:
        """Move the cursor to `record` by a fenced write; NotOurSpeaker when the store refuses."""
        ...

    async def cursor(self) -> Cursor | None:
        """The cursor the previous holder left, or None (first start, or embedded)."""
        ...


class Unfenced:
    """One process, one owner: every action is ours and the poller's memory is the cursor."""

    async def check(self, write: bool = True) -> None:
        return None

    async def claim(self, record: ConversationRecord) -> None:
        return None

    async def cursor(self) -> Cursor | None:
        return None


class LeaseHolding(Protocol):
    """What a fleet lease gives its job (server.fleet.leased.LeaseHandle)."""

    @property
    def generation(self) -> int: ...

    def valid(self) -> bool: ...

    async def still_held(self) -> bool: ...

    async def try_fenced_set(self, key: str, value: str) -> bool: ...

    async def fenced_get(self, key: str) -> str | None: ...


class LeaseFence:
    """The fence of one term of a speaker's fleet lease (see module docstring)."""

    def __init__(self, holding: LeaseHolding, cursor_key: str, tag: str, counter: RefusalCounter) -> None:
        self.holding = holding
        self.cursor_key = cursor_key
        self.tag = tag
        self.counter = counter

    def _refuse(self, what: str) -> NotOurSpeaker:
        self.counter.refused += 1
        log.warning("[%s] refused %s: this process no longer holds the speaker's lease (generation %d); "
                    "another process acts on it now", self.tag, what, self.holding.generation)
        return NotOurSpeaker(f"[{self.tag}] not ours any more (lease generation {self.holding.generation})")

    async def check(self, write: bool = True) -> None:
        if not self.holding.valid():
            raise self._refuse("a command" if write else "a status read")
        if write:
            try:
                held = await self.holding.still_held()
            except Exception as exc:  # noqa: BLE001 - store unreachable: our own deadline decides
                # Nobody can take the lease over before it runs out in the store, which is after
                # our own (earlier) deadline: until then acting is still safe.
                log.info("[%s] lease store unreachable (%s); acting on our own lease deadline", self.tag, exc)
                held = True
            if not held:
                raise self._refuse("a command")
            if not self.holding.valid():  # the store's answer came too late to count
                raise self._refuse("a command")

    async def claim(self, record: ConversationRecord) -> None:
        if not self.holding.valid():
            raise self._refuse(f"the query {record.query!r}")
        try:
            stored = await self.holding.try_fenced_set(self.cursor_key, Cursor(record.time_ms, record.key).dump())
        except Exception as exc:  # noqa: BLE001 - unclaimed, the query is left to XiaoAi
            raise XiaomiError(f"cannot record the query in the lease store ({exc}); XiaoAi answers it") from exc
        if not stored:
            raise self._refuse(f"the query {record.query!r}")

    async def cursor(self) -> Cursor | None:
        return Cursor.load(await self.holding.fenced_get(self.cursor_key))


@dataclass
class RefusalCounter:
    """Actions and claims refused because the lease was gone (Prometheus exposes the total)."""

    refused: int = 0
