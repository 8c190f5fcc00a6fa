"""The device registry (server/pairing) on PostgreSQL, shared by every process of a fleet: a
pairing code minted by one process is claimed, once, through any other, and a revocation bumps
the device's token generation for all of them at once.

Same behaviour as the SQLite registry, statement for statement: each method is one transaction.
Claiming is `DELETE ... RETURNING` of the unexpired code, so of two processes confirming the same
code at once exactly one gets the row. Minting checks the caps and inserts under a
transaction-scoped advisory lock (the caps count rows, which no unique index can enforce).
"""

from __future__ import annotations

from typing import Any

from server.pairing.networks import PendingCaps
from server.pairing.registry import MAX_MEMORY_CLAIMS, CodeTaken, DeviceRecord, PendingCode, Unproven
from server.state.postgres import migrate

# Any constant, distinct from the migration lock: serializes code minting across processes.
MINT_LOCK = 0x787A5F70616972

REGISTRY_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        board TEXT NOT NULL DEFAULT '',
        firmware TEXT NOT NULL DEFAULT '',
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        paired_at DOUBLE PRECISION,
        owner TEXT NOT NULL DEFAULT '',
        generation BIGINT NOT NULL DEFAULT 1
    );
    CREATE TABLE IF NOT EXISTS pairing_codes (
        device_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        board TEXT NOT NULL DEFAULT '',
        firmware TEXT NOT NULL DEFAULT '',
        code TEXT NOT NULL UNIQUE,
        challenge TEXT NOT NULL,
        address TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        expires DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS pairing_codes_address ON pairing_codes (address);
    """,
    # Issue 10: memory claims (trust on first use), activation HMAC keys and their proofs.
    """
    CREATE TABLE IF NOT EXISTS memory_claims (
        device_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS device_keys (
        device_id TEXT PRIMARY KEY,
        hmac_key TEXT NOT NULL,
        added DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS activation_proofs (
        device_id TEXT PRIMARY KEY,
        challenge TEXT NOT NULL,
        proven DOUBLE PRECISION NOT NULL
    );
    """,
]

_DEVICE_COLS = "device_id, client_id, board, firmware, first_seen, last_seen, paired_at, owner, generation"
_PENDING_COLS = "device_id, client_id, board, firmware, code, challenge, address, created, expires"


def _device(r: Any) -> DeviceRecord:
    return DeviceRecord(r["device_id"], r["client_id"], r["board"], r["firmware"], r["first_seen"], r["last_seen"],
                        r["paired_at"], r["owner"], int(r["generation"]))


def _pending(r: Any) -> PendingCode:
    return PendingCode(r["device_id"], r["client_id"], r["board"], r["firmware"], r["code"], r["challenge"],
                       r["address"], r["created"], r["expires"])


class PgDeviceRegistry:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def open(self) -> None:
        await migrate(self.pool, "registry", REGISTRY_MIGRATIONS)

    async def close(self) -> None:
        """The pool belongs to the state backend, which closes it."""

    async def get(self, device_id: str) -> DeviceRecord | None:
        row = await self.pool.fetchrow(f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = $1",  # noqa: S608
                                       device_id)
        return _device(row) if row else None

    async def touch(self, device_id: str, client_id: str, board: str, firmware: str, now: float) -> None:
        await self.pool.execute("UPDATE devices SET last_seen = $1, board = COALESCE(NULLIF($2, ''), board), "
                                "firmware = COALESCE(NULLIF($3, ''), firmware) WHERE device_id = $4",
                                now, board, firmware, device_id)

    async def pending(self, device_id: str, now: float) -> PendingCode | None:
        row = await self.pool.fetchrow(f"SELECT {_PENDING_COLS} FROM pairing_codes "  # noqa: S608
                                       "WHERE device_id = $1 AND expires > $2", device_id, now)
        return _pending(row) if row else None

    async def add_pending(self, candidate: PendingCode, caps: PendingCaps, now: float) -> PendingCode | None:
        import asyncpg

        c = candidate
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MINT_LOCK)
            await conn.execute("DELETE FROM pairing_codes WHERE expires <= $1", now)
            row = await conn.fetchrow(f"SELECT {_PENDING_COLS} FROM pairing_codes WHERE device_id = $1",  # noqa: S608
                                      c.device_id)
            if row is not None:
                existing = _pending(row)
                if existing.client_id == c.client_id:
                    return existing
                # Same device id, another client id: the newest request gets the code.
                await conn.execute("DELETE FROM pairing_codes WHERE device_id = $1", c.device_id)
            addresses = [r["address"] for r in await conn.fetch("SELECT address FROM pairing_codes")]
            if caps.refusal(addresses, c.address) is not None:
                return None
            try:
                async with conn.transaction():  # a savepoint: a taken code leaves the rest intact
                    await conn.execute(
                        f"INSERT INTO pairing_codes ({_PENDING_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",  # noqa: S608
                        c.device_id, c.client_id, c.board, c.firmware, c.code, c.challenge, c.address, c.created,
                        c.expires)
            except asyncpg.UniqueViolationError:
                raise CodeTaken(c.code) from None
            return c

    async def confirm(self, code: str, owner: str, now: float) -> DeviceRecord | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"DELETE FROM pairing_codes WHERE code = $1 AND expires > $2 "  # noqa: S608
                                      f"RETURNING {_PENDING_COLS}", code, now)
            if row is None:
                return None
            p = _pending(row)
            if await conn.fetchval("SELECT 1 FROM device_keys WHERE device_id = $1", p.device_id) and \
                    not await conn.fetchval("SELECT 1 FROM activation_proofs WHERE device_id = $1 AND challenge = $2",
                                            p.device_id, p.challenge):
                raise Unproven(p.device_id)  # the transaction rolls back: the code stays pending
            await conn.execute("DELETE FROM activation_proofs WHERE device_id = $1", p.device_id)
            out = await conn.fetchrow(
                f"INSERT INTO devices ({_DEVICE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1) "  # noqa: S608
                "ON CONFLICT (device_id) DO UPDATE SET client_id = excluded.client_id, board = excluded.board, "
                "firmware = excluded.firmware, last_seen = excluded.last_seen, paired_at = excluded.paired_at, "
                f"owner = excluded.owner RETURNING {_DEVICE_COLS}",
                p.device_id, p.client_id, p.board, p.firmware, p.created, now, now, owner)
            return _device(out)

    async def revoke(self, device_id: str) -> DeviceRecord | None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM pairing_codes WHERE device_id = $1", device_id)
            await conn.execute("DELETE FROM activation_proofs WHERE device_id = $1", device_id)
            row = await conn.fetchrow("UPDATE devices SET paired_at = NULL, generation = generation + 1 "
                                      f"WHERE device_id = $1 RETURNING {_DEVICE_COLS}", device_id)
            return _device(row) if row else None

    async def list_devices(self) -> list[DeviceRecord]:
        rows = await self.pool.fetch(f"SELECT {_DEVICE_COLS} FROM devices ORDER BY first_seen")  # noqa: S608
        return [_device(r) for r in rows]

    async def list_pending(self, now: float) -> list[PendingCode]:
        rows = await self.pool.fetch(f"SELECT {_PENDING_COLS} FROM pairing_codes WHERE expires > $1 "  # noqa: S608
                                     "ORDER BY created", now)
        return [_pending(r) for r in rows]

    async def generations(self, device_ids: list[str]) -> dict[str, int | None]:
        out: dict[str, int | None] = dict.fromkeys(device_ids)
        rows = await self.pool.fetch("SELECT device_id, paired_at, generation FROM devices "
                                     "WHERE device_id = ANY($1::text[])", device_ids)
        for r in rows:
            out[r["device_id"]] = int(r["generation"]) if r["paired_at"] is not None else None
        return out

    async def claim_memory(self, device_id: str, client_id: str, now: float) -> str | None:
        owner = await self.pool.fetchval("SELECT client_id FROM memory_claims WHERE device_id = $1", device_id)
        if owner is not None:
            return str(owner)
        if await self.pool.fetchval("SELECT COUNT(*) FROM memory_claims") >= MAX_MEMORY_CLAIMS:
            return None
        await self.pool.execute("INSERT INTO memory_claims (device_id, client_id, first_seen) VALUES ($1, $2, $3) "
                                "ON CONFLICT (device_id) DO NOTHING", device_id, client_id, now)
        return str(await self.pool.fetchval("SELECT client_id FROM memory_claims WHERE device_id = $1", device_id))

    async def release_memory(self, device_id: str) -> bool:
        status = await self.pool.execute("DELETE FROM memory_claims WHERE device_id = $1", device_id)
        return not str(status).endswith(" 0")

    async def set_key(self, device_id: str, key_hex: str | None, now: float) -> None:
        if key_hex is None:
            await self.pool.execute("DELETE FROM device_keys WHERE device_id = $1", device_id)
        else:
            await self.pool.execute("INSERT INTO device_keys (device_id, hmac_key, added) VALUES ($1, $2, $3) "
                                    "ON CONFLICT (device_id) DO UPDATE SET hmac_key = excluded.hmac_key, "
                                    "added = excluded.added", device_id, key_hex, now)

    async def get_key(self, device_id: str) -> str | None:
        key = await self.pool.fetchval("SELECT hmac_key FROM device_keys WHERE device_id = $1", device_id)
        return str(key) if key is not None else None

    async def add_proof(self, device_id: str, challenge: str, now: float) -> None:
        await self.pool.execute("INSERT INTO activation_proofs (device_id, challenge, proven) VALUES ($1, $2, $3) "
                                "ON CONFLICT (device_id) DO UPDATE SET challenge = excluded.challenge, "
                                "proven = excluded.proven", device_id, challenge, now)
