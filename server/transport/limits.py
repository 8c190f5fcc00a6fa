"""Limits on the ways in: requests per client address per minute, open connections in all and
per address, and which address a request really comes from behind a declared reverse proxy.

All state is bounded: the per-address tables forget the least recently seen addresses beyond
`max_addresses`, so a flood of source addresses costs a fixed amount of memory.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


def host_of(peer: str) -> str:
    """'1.2.3.4:5678' / '[::1]:80' / '::1' -> the address alone."""
    peer = peer.strip()
    if peer.startswith("["):
        return peer[1:].split("]", 1)[0]
    if peer.count(":") == 1:
        return peer.split(":", 1)[0]
    return peer


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(host_of(address).split("%")[0]).is_loopback
    except ValueError:
        return False


def client_address(peer: str, headers: Mapping[str, str], trusted_proxies: frozenset[str]) -> str:
    """The client's address: the socket peer, unless the peer is a declared reverse proxy, in
    which case the last address that proxy appended to X-Forwarded-For (or X-Real-IP). Headers
    from anyone else are ignored: they are trivially forged."""
    host = host_of(peer)
    if host not in trusted_proxies:
        return host
    forwarded = headers.get("X-Forwarded-For", "")
    candidate = forwarded.rsplit(",", 1)[-1].strip() if forwarded else headers.get("X-Real-IP", "").strip()
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return host


class RateLimiter:
    """At most `per_minute` events per key in any 60 s (token bucket: a burst of `per_minute`,
    refilled continuously)."""

    def __init__(self, per_minute: int, max_addresses: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        if self.per_minute <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(slots=True)
class ConnectionSlots:
    """Open connections, in all and per address. `acquire` before accepting, `release` when the
    connection ends (exactly once per successful acquire). An address of None counts in the
    total only (a declared reverse proxy: its clients are counted by their forwarded address)."""

    max_total: int
    max_per_address: int
    total: int = 0
    _per: dict[str, int] = field(default_factory=dict)

    def refusal(self, address: str | None) -> str | None:
        """Why a new connection from `address` must be refused now, or None."""
        if self.max_total and self.total >= self.max_total:
            return f"server full ({self.total} connections)"
        if address is None:
            return None
        if self.max_per_address and self._per.get(address, 0) >= self.max_per_address:
            return f"too many connections from {address} ({self._per[address]})"
        return None

    def acquire(self, address: str | None) -> str | None:
        reason = self.refusal(address)
        if reason is None:
            self.total += 1
            if address is not None:
                self._per[address] = self._per.get(address, 0) + 1
        return reason

    def release(self, address: str | None) -> None:
        self.total = max(0, self.total - 1)
        if address is None:
            return
        n = self._per.get(address, 0) - 1
        if n > 0:
            self._per[address] = n
        else:
            self._per.pop(address, None)

    def count(self, address: str) -> int:
        return self._per.get(address, 0)

