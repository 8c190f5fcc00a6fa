"""PostgreSQL state backend (asyncpg): memory, leases with fencing, and LISTEN/NOTIFY pub/sub,
shared by every process pointed at the same database.

Every write is one statement (or one short transaction) under READ COMMITTED; nothing waits on
an LLM inside a transaction. Schema changes are versioned per component in `xz_schema` and
applied under a transaction-scoped advisory lock, so processes starting together do not race.
asyncpg is imported only here, so the embedded default never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from server.memory.store import StoredExchange, SummaryState
from server.providers.base import ProviderUnavailable
from server.state.base import Handler, Lease, StateBackend
from server.state.config import StateConfig

log = logging.getLogger("server.state.pg")

# Any constant: the advisory lock key that serializes schema migrations across processes.
MIGRATION_LOCK = 0x787A5F7363686D61

MEMORY_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS exchanges (
        id BIGSERIAL PRIMARY KEY,
        user_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        user_text TEXT NOT NULL,
        assistant_text TEXT NOT NULL,
        interrupted BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX IF NOT EXISTS exchanges_user ON exchanges (user_id, id);
    CREATE TABLE IF NOT EXISTS summaries (
        user_id TEXT PRIMARY KEY,
        summary TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        version BIGINT NOT NULL DEFAULT 0,
        through_id BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS kv (
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    """,
]

LEASE_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        generation BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE IF NOT EXISTS fenced_values (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        generation BIGINT NOT NULL,
        lease TEXT NOT NULL,
        updated TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
]


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


async def migrate(pool: Any, component: str, migrations: Sequence[str]) -> int:
    """Apply `component`'s migrations not yet recorded in xz_schema; returns its version. Other
    packages (the device registry, pairing) register their own component the same way."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS xz_schema (component TEXT PRIMARY KEY, "
                           "version INTEGER NOT NULL, updated TIMESTAMPTZ NOT NULL DEFAULT now())")
        current = await conn.fetchval("SELECT version FROM xz_schema WHERE component = $1", component) or 0
        if current > len(migrations):
            raise ProviderUnavailable(f"state.url: the database's {component} schema is version {current}, newer "
                                      f"than this server's ({len(migrations)}): upgrade the server")
        for version in range(current + 1, len(migrations) + 1):
            await conn.execute(migrations[version - 1])
            log.info("state: %s schema migrated to version %d", component, version)
        if current < len(migrations):
            await conn.execute("INSERT INTO xz_schema (component, version) VALUES ($1, $2) ON CONFLICT (component) "
                               "DO UPDATE SET version = excluded.version, updated = now()", component, len(migrations))
    return len(migrations)


def _exchange(r: Any) -> StoredExchange:
    return StoredExchange(r["user_text"], r["assistant_text"], r["interrupted"], r["ts"], r["session_id"], r["id"])


_COLUMNS = "id, user_text, assistant_text, interrupted, ts, session_id"


class PgMemoryStore:
    """MemoryStore on PostgreSQL: the same behaviour as SqliteMemoryStore, shared by processes."""

    def __init__(self, pool: Any, max_exchanges_per_user: int = 0) -> None:
        self.pool = pool
        # 0: keep everything; else the oldest exchanges of a user beyond this are deleted.
        self.max_exchanges_per_user = max_exchanges_per_user

    async def add_exchange(self, user_id: str, session_id: str, user: str, assistant: str,
                           interrupted: bool = False) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO exchanges (user_id, session_id, ts, user_text, assistant_text, "
                               "interrupted) VALUES ($1, $2, $3, $4, $5, $6)",
                               user_id, session_id, time.time(), user, assistant, interrupted)
            if self.max_exchanges_per_user:
                await conn.execute("DELETE FROM exchanges WHERE user_id = $1 AND id <= (SELECT id FROM exchanges "
                                   "WHERE user_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                                   user_id, self.max_exchanges_per_user)

    async def count_exchanges(self, user_id: str) -> int:
        return int(await self.pool.fetchval("SELECT COUNT(*) FROM exchanges WHERE user_id = $1", user_id))

    async def recent_exchanges(self, user_id: str, limit: int) -> list[StoredExchange]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM exchanges WHERE user_id = $1 "  # noqa: S608
                                     "ORDER BY id DESC LIMIT $2", user_id, limit)
        return [_exchange(r) for r in reversed(rows)]

    async def session_exchanges(self, user_id: str, session_id: str) -> list[StoredExchange]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM exchanges WHERE user_id = $1 "  # noqa: S608
                                     "AND session_id = $2 ORDER BY id", user_id, session_id)
        return [_exchange(r) for r in rows]

    async def exchanges_after(self, user_id: str, after_id: int, limit: int) -> list[StoredExchange]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM exchanges WHERE user_id = $1 "  # noqa: S608
                                     "AND id > $2 ORDER BY id DESC LIMIT $3", user_id, after_id, limit)
        return [_exchange(r) for r in reversed(rows)]

    async def get_summary(self, user_id: str) -> str:
        return (await self.summary_state(user_id)).summary

    async def summary_state(self, user_id: str) -> SummaryState:
        row = await self.pool.fetchrow("SELECT summary, version, through_id FROM summaries WHERE user_id = $1",
                                       user_id)
        return SummaryState(row["summary"], row["version"], row["through_id"]) if row else SummaryState()

    async def set_summary(self, user_id: str, summary: str) -> None:
        await self.pool.execute("INSERT INTO summaries (user_id, summary, updated, version) VALUES ($1, $2, $3, 1) "
                                "ON CONFLICT (user_id) DO UPDATE SET summary = excluded.summary, "
                                "updated = excluded.updated, version = summaries.version + 1",
                                user_id, summary, time.time())

    async def put_summary(self, user_id: str, summary: str, expected_version: int, through_id: int) -> bool:
        # One statement either way: the row lock taken by the update makes the version check and
        # the write atomic, so of two writers holding the same version exactly one succeeds.
        if expected_version == 0:
            row = await self.pool.fetchval(
                "INSERT INTO summaries (user_id, summary, updated, version, through_id) VALUES ($1, $2, $3, 1, $4) "
                "ON CONFLICT (user_id) DO UPDATE SET summary = excluded.summary, updated = excluded.updated, "
                "version = 1, through_id = excluded.through_id WHERE summaries.version = 0 RETURNING version",
                user_id, summary, time.time(), through_id)
        else:
            row = await self.pool.fetchval(
                "UPDATE summaries SET summary = $2, updated = $3, version = version + 1, through_id = $4 "
                "WHERE user_id = $1 AND version = $5 RETURNING version",
                user_id, summary, time.time(), through_id, expected_version)
        return row is not None

    async def get_value(self, user_id: str, key: str) -> str | None:
        return await self.pool.fetchval("SELECT value FROM kv WHERE user_id = $1 AND key = $2", user_id, key)

    async def set_value(self, user_id: str, key: str, value: str | None) -> None:
        if value is None:
            await self.pool.execute("DELETE FROM kv WHERE user_id = $1 AND key = $2", user_id, key)
        else:
            await self.pool.execute("INSERT INTO kv (user_id, key, value) VALUES ($1, $2, $3) "
                                    "ON CONFLICT (user_id, key) DO UPDATE SET value = excluded.value",
                                    user_id, key, value)

    async def forget(self, user_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for table in ("exchanges", "summaries", "kv"):
                await conn.execute(f"DELETE FROM {table} WHERE user_id = $1", user_id)  # noqa: S608 - fixed names

    async def close(self) -> None:
        """The pool belongs to the backend, which closes it."""


class PgLeases:
    """Leases on PostgreSQL time (one clock for the whole fleet), with fenced writes."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def acquire(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        requested = time.monotonic()
        # Take a free or expired lease, or renew our own. The generation (fencing token) grows
        # whenever the lease changes hands or lapsed, never on a renewal in time; rows are never
        # deleted, so it only ever grows.
        generation = await self.pool.fetchval(
            "INSERT INTO leases (name, owner, generation, expires_at) "
            "VALUES ($1, $2, 1, now() + make_interval(secs => $3)) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at, "
            "generation = leases.generation + "
            "CASE WHEN leases.owner = excluded.owner AND leases.expires_at > now() THEN 0 ELSE 1 END "
            "WHERE leases.owner = excluded.owner OR leases.expires_at <= now() "
            "RETURNING generation", name, owner, float(ttl_s))
        if generation is None:
            return None
        return Lease(name, owner, int(generation), ttl_s, requested)

    async def release(self, lease: Lease) -> None:
        await self.pool.execute("UPDATE leases SET expires_at = now() WHERE name = $1 AND owner = $2 "
                                "AND generation = $3", lease.name, lease.owner, lease.generation)

    async def holder(self, name: str) -> tuple[str, int] | None:
        row = await self.pool.fetchrow("SELECT owner, generation FROM leases WHERE name = $1 AND expires_at > now()",
                                       name)
        return (row["owner"], int(row["generation"])) if row else None

    async def fenced_set(self, lease: Lease, key: str, value: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR SHARE holds off a takeover (an UPDATE of this row) until we commit, so the write
            # happens entirely while the lease is ours or not at all.
            live = await conn.fetchval("SELECT 1 FROM leases WHERE name = $1 AND owner = $2 AND generation = $3 "
                                       "AND expires_at > now() FOR SHARE", lease.name, lease.owner, lease.generation)
            if live is None:
                return False
            done = await conn.fetchval(
                "INSERT INTO fenced_values (key, value, generation, lease) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, generation = excluded.generation, "
                "lease = excluded.lease, updated = now() WHERE fenced_values.generation <= excluded.generation "
                "RETURNING 1", key, value, lease.generation, lease.name)
            return done is not None

    async def fenced_get(self, key: str) -> tuple[str, int] | None:
        row = await self.pool.fetchrow("SELECT value, generation FROM fenced_values WHERE key = $1", key)
        return (row["value"], int(row["generation"])) if row else None


def channel_name(channel: str) -> str:
    """A NOTIFY channel is an SQL identifier: keep it to a safe, prefixed form."""
    safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in channel.lower())
    return f"xz_{safe}"[:63]


class PgBus:
    """Fleet messages over LISTEN/NOTIFY, on one dedicated connection (a pooled connection could
    be handed to someone else while we listen). Reconnects and re-listens when it drops."""

    def __init__(self, pool: Any, url: str, connect_timeout: float) -> None:
        self.pool = pool
        self.url = url
        self.connect_timeout = connect_timeout
        self._handlers: dict[str, list[Handler]] = {}
        self._conn: Any = None
        self._closed = False
        self._reconnect: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", channel_name(channel),
                                json.dumps(message, ensure_ascii=False))

    async def subscribe(self, channel: str, handler: Handler) -> None:
        name = channel_name(channel)
        first = name not in self._handlers
        self._handlers.setdefault(name, []).append(handler)
        if self._conn is None:
            await self._connect()
        elif first:
            await self._conn.add_listener(name, self._on_notify)

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=self.connect_timeout)
        for name in self._handlers:
            await conn.add_listener(name, self._on_notify)
        conn.add_termination_listener(self._on_lost)
        self._conn = conn

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("state: ignored a malformed message on %s", channel)
            return
        for handler in self._handlers.get(channel, []):
            try:
                result = handler(message)
            except Exception:  # noqa: BLE001 - one bad handler must not stop the others
                log.exception("state: handler for %s failed", channel)
                continue
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _on_lost(self, _conn: Any) -> None:
        self._conn = None
        if not self._closed and (self._reconnect is None or self._reconnect.done()):
            log.warning("state: lost the PostgreSQL listen connection; reconnecting")
            self._reconnect = asyncio.ensure_future(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.5
        while not self._closed and self._conn is None:
            try:
                await self._connect()
                log.info("state: listen connection restored")
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the server keeps serving
                log.warning("state: reconnect failed (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None


async def open_postgres(config: StateConfig, max_exchanges_per_user: int = 0) -> StateBackend:
    try:
        import asyncpg
    except ImportError:
        raise ProviderUnavailable("state.url is a PostgreSQL URL but asyncpg is not installed: "
                                  "pip install 'xiaozhi-voice-server[postgres]'") from None
    where = redact(config.url)
    try:
        pool = await asyncpg.create_pool(config.url, min_size=1, max_size=config.pool_size,
                                         timeout=config.connect_timeout_s, command_timeout=30)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise ProviderUnavailable(f"state.url: cannot connect to PostgreSQL at {where}: {exc}") from None
    try:
        await migrate(pool, "memory", MEMORY_MIGRATIONS)
        await migrate(pool, "leases", LEASE_MIGRATIONS)
    except BaseException:
        await pool.close()
        raise
    bus = PgBus(pool, config.url, config.connect_timeout_s)
    log.info("state: shared PostgreSQL at %s", where)
    return StateBackend("postgresql", PgMemoryStore(pool, max_exchanges_per_user), PgLeases(pool), bus,
                        extras={"pg_pool": pool}, _closers=[pool.close, bus.close])
