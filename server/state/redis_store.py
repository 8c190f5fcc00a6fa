"""Redis leases and pub/sub (optional, `state.redis_url`, next to a PostgreSQL `state.url`).

A lease is one key `xz:lease:<name>` holding "<owner>|<generation>" with a PX expiry; the
generation comes from `INCR xz:lease-gen:<name>`, so it only grows, and every check-then-act runs
as one Lua script (atomic on the Redis server). Redis time is the only clock, as with PostgreSQL.
Fenced values live in Redis too, next to the lease that guards them: a fence must be checked in
the same engine, in the same atomic step, as the write it guards. redis-py is imported only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from server.providers.base import ProviderUnavailable
from server.state.base import Handler, Lease

log = logging.getLogger("server.state.redis")

ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if string.sub(cur, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, sep + 1))
  end
  return false
end
local gen = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. gen, 'PX', ARGV[2])
return gen
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

FENCED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local old = redis.call('HGET', KEYS[2], 'generation')
if old and tonumber(old) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'value', ARGV[3], 'generation', ARGV[2])
return 1
"""


def _lease_key(name: str) -> str:
    return f"xz:lease:{name}"


class RedisLeases:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._fenced_set = client.register_script(FENCED_SET)

    async def acquire(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        requested = time.monotonic()
        gen = await self._acquire(keys=[_lease_key(name), f"xz:lease-gen:{name}"],
                                  args=[owner, int(ttl_s * 1000)])
        if gen is None:
            return None
        return Lease(name, owner, int(gen), ttl_s, requested)

    async def release(self, lease: Lease) -> None:
        await self._release(keys=[_lease_key(lease.name)], args=[f"{lease.owner}|{lease.generation}"])

    async def holder(self, name: str) -> tuple[str, int] | None:
        value = await self.client.get(_lease_key(name))
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else value
        owner, _, gen = text.rpartition("|")
        return owner, int(gen)

    async def fenced_set(self, lease: Lease, key: str, value: str) -> bool:
        done = await self._fenced_set(keys=[_lease_key(lease.name), f"xz:fenced:{key}"],
                                      args=[f"{lease.owner}|{lease.generation}", lease.generation, value])
        return bool(done)

    async def fenced_get(self, key: str) -> tuple[str, int] | None:
        raw = await self.client.hgetall(f"xz:fenced:{key}")
        if not raw:
            return None
        data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}
        return data["value"], int(data["generation"])


class RedisBus:
    """Pub/sub on channels `xz:<channel>`; one listener task per process, reconnecting on loss."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._handlers: dict[str, list[Handler]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready = asyncio.Event()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self.client.publish(f"xz:{channel}", json.dumps(message, ensure_ascii=False))

    async def subscribe(self, channel: str, handler: Handler) -> None:
        name = f"xz:{channel}"
        first = name not in self._handlers
        self._handlers.setdefault(name, []).append(handler)
        if self._pubsub is None:
            self._pubsub = self.client.pubsub()
        if first:
            await self._pubsub.subscribe(name)
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: redis-py resubscribes on the next read
                log.warning("state: Redis pub/sub read failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
            if message is None:
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            try:
                payload = json.loads(message["data"])
            except ValueError:
                continue
            for handler in self._handlers.get(channel, []):
                try:
                    result = handler(payload)
                    if asyncio.iscoroutine(result):
                        task = asyncio.ensure_future(result)
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                except Exception:  # noqa: BLE001
                    log.exception("state: handler for %s failed", channel)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()


async def open_redis(url: str, connect_timeout: float) -> tuple[RedisLeases, RedisBus, Any]:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ProviderUnavailable("state.redis_url is set but the redis package is not installed: "
                                  "pip install 'xiaozhi-voice-server[postgres]'") from None
    client = aioredis.from_url(url, socket_connect_timeout=connect_timeout)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure here is a start-up error with one line
        await client.aclose()
        raise ProviderUnavailable(f"state.redis_url: cannot reach Redis: {exc}") from None
    return RedisLeases(client), RedisBus(client), client
