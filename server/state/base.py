"""Interfaces of the state backends. Each backend (embedded, PostgreSQL, Redis) implements the
ones it serves; `open_state` picks them from `state.url` / `state.redis_url`.

Leases with fencing: a lease names one job that exactly one process may do at a time (poll one
Xiaomi speaker). `acquire` takes or renews it and returns a `Lease` whose `generation` grows every
time the lease changes hands. The holder must stop acting when its own clock says the lease ran
out (`Lease.valid`, measured from *before* the request, so network delay only shortens it), and
every write that matters goes through `fenced_set`, which the store refuses unless the writer's
generation is still the current holder's. A holder frozen by SIGSTOP or a long pause that wakes up
after another process took over therefore cannot overwrite the new holder's progress, even if it
missed its own deadline check. Bare advisory locks are not used: a frozen process keeps its
connection, and with it the lock, forever.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.memory.store import MemoryStore

# The holder stops this fraction of the TTL early: a margin for clock-rate drift between hosts.
LEASE_SAFETY = 0.8


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    owner: str
    generation: int  # the fencing token
    ttl_s: float
    # time.monotonic() taken before the acquire request went out.
    requested_at: float

    @property
    def deadline(self) -> float:
        return self.requested_at + self.ttl_s * LEASE_SAFETY

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.deadline


class Leases(Protocol):
    async def acquire(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        """Take the lease, or renew it when `owner` already holds it. None: someone else holds it."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give it up at once (a clean shutdown), so another process need not wait for the TTL."""
        ...

    async def holder(self, name: str) -> tuple[str, int] | None:
        """(owner, generation) of a live lease, or None."""
        ...

    async def fenced_set(self, lease: Lease, key: str, value: str) -> bool:
        """Store `value` under `key` only while `lease` is the current live holding. False: refused.
        A key belongs to one lease (name it after the lease, e.g. "speaker-1:progress")."""
        ...

    async def fenced_get(self, key: str) -> tuple[str, int] | None:
        """(value, generation that wrote it) or None."""
        ...


Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class Bus(Protocol):
    """Fleet-wide messages (JSON objects) on named channels; every process receives every
    message published on a channel it subscribed to, its own included."""

    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    async def subscribe(self, channel: str, handler: Handler) -> None: ...


@dataclass
class StateBackend:
    """What `open_state` returns: the chosen implementations and how to close them."""

    kind: str  # "embedded" | "postgresql" | "postgresql+redis"
    memory: MemoryStore
    leases: Leases
    bus: Bus
    # Other stores of the chosen engine, by name (e.g. the PostgreSQL pool for other packages).
    extras: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        return self.kind != "embedded"

    async def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:  # noqa: BLE001 - closing anyway
                import logging

                logging.getLogger("server.state").exception("closing the state backend")
        self._closers.clear()
