"""Embedded (single-process) leases and bus: today's default needs no server. One process owns
a data directory (see datadir_lock.py), so in-process structures are the whole truth; they keep
the same semantics (generations, fencing, delivery to every subscriber) as the shared backends so
code above them runs unchanged."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from server.state.base import Handler, Lease

log = logging.getLogger("server.state")


@dataclass(slots=True)
class _Holding:
    owner: str
    generation: int
    expires: float


class LocalLeases:
    def __init__(self) -> None:
        self._leases: dict[str, _Holding] = {}
        self._values: dict[str, tuple[str, int]] = {}

    async def acquire(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        now = time.monotonic()
        held = self._leases.get(name)
        if held is not None and held.owner != owner and held.expires > now:
            return None
        if held is None:
            held = self._leases[name] = _Holding(owner, 1, now + ttl_s)
        else:
            if held.owner != owner or held.expires <= now:
                held.generation += 1
            held.owner, held.expires = owner, now + ttl_s
        return Lease(name, owner, held.generation, ttl_s, now)

    async def release(self, lease: Lease) -> None:
        held = self._leases.get(lease.name)
        if held is not None and held.owner == lease.owner and held.generation == lease.generation:
            held.expires = 0.0

    async def holder(self, name: str) -> tuple[str, int] | None:
        held = self._leases.get(name)
        if held is None or held.expires <= time.monotonic():
            return None
        return held.owner, held.generation

    async def fenced_set(self, lease: Lease, key: str, value: str) -> bool:
        held = self._leases.get(lease.name)
        if (held is None or held.owner != lease.owner or held.generation != lease.generation
                or held.expires <= time.monotonic()):
            return False
        old = self._values.get(key)
        if old is not None and old[1] > lease.generation:
            return False
        self._values[key] = (value, lease.generation)
        return True

    async def fenced_get(self, key: str) -> tuple[str, int] | None:
        return self._values.get(key)


class LocalBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        for handler in list(self._handlers.get(channel, [])):
            try:
                result = handler(dict(message))
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:  # noqa: BLE001 - one bad handler must not stop the others
                log.exception("state: handler for %s failed", channel)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)
