"""The device registry in one SQLite file under data/ (WAL journal, so the `devices` CLI can
write while the server reads). All work runs on one dedicated thread, off the event loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from server.pairing.networks import PendingCaps
from server.pairing.registry import MAX_MEMORY_CLAIMS, CodeTaken, DeviceRecord, PendingCode, Unproven
from server.sqlite_file import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    board TEXT NOT NULL DEFAULT '',
    firmware TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    paired_at REAL,
    owner TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS pending (
    device_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    board TEXT NOT NULL DEFAULT '',
    firmware TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL UNIQUE,
    challenge TEXT NOT NULL,
    address TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_address ON pending(address);
CREATE TABLE IF NOT EXISTS memory_claims (
    device_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS device_keys (
    device_id TEXT PRIMARY KEY,
    hmac_key TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS activation_proofs (
    device_id TEXT PRIMARY KEY,
    challenge TEXT NOT NULL,
    proven REAL NOT NULL
);
"""

_DEVICE_COLS = "device_id, client_id, board, firmware, first_seen, last_seen, paired_at, owner, generation"
_PENDING_COLS = "device_id, client_id, board, firmware, code, challenge, address, created, expires"


def _device(row: Any) -> DeviceRecord:
    return DeviceRecord(*row)


def _pending(row: Any) -> PendingCode:
    return PendingCode(*row)


class SqliteDeviceRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path, name="devices-db", prepare=lambda db: db.executescript(SCHEMA),
                                autocommit=True)
        self._run = self._file.run

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        await self._file.close()

    async def get(self, device_id: str) -> DeviceRecord | None:
        def read(db: sqlite3.Connection) -> DeviceRecord | None:
            row = db.execute(f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            return _device(row) if row else None
        return await self._run(read)

    async def touch(self, device_id: str, client_id: str, board: str, firmware: str, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE devices SET last_seen = ?, board = COALESCE(NULLIF(?, ''), board), "
                       "firmware = COALESCE(NULLIF(?, ''), firmware) WHERE device_id = ?",
                       (now, board, firmware, device_id))
        await self._run(write)

    async def pending(self, device_id: str, now: float) -> PendingCode | None:
        def read(db: sqlite3.Connection) -> PendingCode | None:
            row = db.execute(f"SELECT {_PENDING_COLS} FROM pending WHERE device_id = ? AND expires > ?",
                             (device_id, now)).fetchone()
            return _pending(row) if row else None
        return await self._run(read)

    async def add_pending(self, candidate: PendingCode, caps: PendingCaps, now: float) -> PendingCode | None:
        def write(db: sqlite3.Connection) -> PendingCode | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM pending WHERE expires <= ?", (now,))
                row = db.execute(f"SELECT {_PENDING_COLS} FROM pending WHERE device_id = ?",
                                 (candidate.device_id,)).fetchone()
                if row is not None:
                    existing = _pending(row)
                    if existing.client_id == candidate.client_id:
                        db.execute("COMMIT")
                        return existing
                    # Same device id, another client id: a new board, or someone else claiming
                    # this id. The newest request gets the code; the owner sees both ids.
                    db.execute("DELETE FROM pending WHERE device_id = ?", (candidate.device_id,))
                addresses = [r[0] for r in db.execute("SELECT address FROM pending")]
                if caps.refusal(addresses, candidate.address) is not None:
                    db.execute("ROLLBACK")
                    return None
                try:
                    db.execute(f"INSERT INTO pending ({_PENDING_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (candidate.device_id, candidate.client_id, candidate.board, candidate.firmware,
                                candidate.code, candidate.challenge, candidate.address, candidate.created,
                                candidate.expires))
                except sqlite3.IntegrityError:
                    db.execute("ROLLBACK")
                    raise CodeTaken(candidate.code) from None
                db.execute("COMMIT")
                return candidate
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return await self._run(write)

    async def confirm(self, code: str, owner: str, now: float) -> DeviceRecord | None:
        def write(db: sqlite3.Connection) -> DeviceRecord | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(f"SELECT {_PENDING_COLS} FROM pending WHERE code = ? AND expires > ?",
                                 (code, now)).fetchone()
                if row is None:
                    db.execute("ROLLBACK")
                    return None
                p = _pending(row)
                if db.execute("SELECT 1 FROM device_keys WHERE device_id = ?", (p.device_id,)).fetchone() and \
                        not db.execute("SELECT 1 FROM activation_proofs WHERE device_id = ? AND challenge = ?",
                                       (p.device_id, p.challenge)).fetchone():
                    db.execute("ROLLBACK")
                    raise Unproven(p.device_id)
                db.execute(
                    f"INSERT INTO devices ({_DEVICE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) "
                    "ON CONFLICT(device_id) DO UPDATE SET client_id = excluded.client_id, board = excluded.board, "
                    "firmware = excluded.firmware, last_seen = excluded.last_seen, paired_at = excluded.paired_at, "
                    "owner = excluded.owner",
                    (p.device_id, p.client_id, p.board, p.firmware, p.created, now, now, owner))
                db.execute("DELETE FROM pending WHERE device_id = ?", (p.device_id,))
                db.execute("DELETE FROM activation_proofs WHERE device_id = ?", (p.device_id,))
                out = db.execute(f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = ?",
                                 (p.device_id,)).fetchone()
                db.execute("COMMIT")
                return _device(out)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return await self._run(write)

    async def revoke(self, device_id: str) -> DeviceRecord | None:
        def write(db: sqlite3.Connection) -> DeviceRecord | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM pending WHERE device_id = ?", (device_id,))
                db.execute("DELETE FROM activation_proofs WHERE device_id = ?", (device_id,))
                db.execute("UPDATE devices SET paired_at = NULL, generation = generation + 1 WHERE device_id = ?",
                           (device_id,))
                row = db.execute(f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = ?", (device_id,)).fetchone()
                db.execute("COMMIT")
                return _device(row) if row else None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return await self._run(write)

    async def list_devices(self) -> list[DeviceRecord]:
        def read(db: sqlite3.Connection) -> list[DeviceRecord]:
            rows = db.execute(f"SELECT {_DEVICE_COLS} FROM devices ORDER BY first_seen").fetchall()
            return [_device(r) for r in rows]
        return await self._run(read)

    async def list_pending(self, now: float) -> list[PendingCode]:
        def read(db: sqlite3.Connection) -> list[PendingCode]:
            rows = db.execute(f"SELECT {_PENDING_COLS} FROM pending WHERE expires > ? ORDER BY created",
                              (now,)).fetchall()
            return [_pending(r) for r in rows]
        return await self._run(read)

    async def generations(self, device_ids: list[str]) -> dict[str, int | None]:
        def read(db: sqlite3.Connection) -> dict[str, int | None]:
            out: dict[str, int | None] = dict.fromkeys(device_ids)
            for start in range(0, len(device_ids), 500):
                chunk = device_ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for device_id, paired_at, generation in db.execute(
                        f"SELECT device_id, paired_at, generation FROM devices WHERE device_id IN ({marks})",  # noqa: S608
                        chunk):
                    out[device_id] = generation if paired_at is not None else None
            return out
        return await self._run(read)

    async def claim_memory(self, device_id: str, client_id: str, now: float) -> str | None:
        def write(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT client_id FROM memory_claims WHERE device_id = ?", (device_id,)).fetchone()
            if row is not None:
                return str(row[0])
            if db.execute("SELECT COUNT(*) FROM memory_claims").fetchone()[0] >= MAX_MEMORY_CLAIMS:
                return None
            db.execute("INSERT OR IGNORE INTO memory_claims (device_id, client_id, first_seen) VALUES (?, ?, ?)",
                       (device_id, client_id, now))
            row = db.execute("SELECT client_id FROM memory_claims WHERE device_id = ?", (device_id,)).fetchone()
            return str(row[0])
        return await self._run(write)

    async def release_memory(self, device_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM memory_claims WHERE device_id = ?", (device_id,)).rowcount > 0
        return await self._run(write)

    async def set_key(self, device_id: str, key_hex: str | None, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            if key_hex is None:
                db.execute("DELETE FROM device_keys WHERE device_id = ?", (device_id,))
            else:
                db.execute("INSERT INTO device_keys (device_id, hmac_key, added) VALUES (?, ?, ?) "
                           "ON CONFLICT(device_id) DO UPDATE SET hmac_key = excluded.hmac_key, added = excluded.added",
                           (device_id, key_hex, now))
        await self._run(write)

    async def get_key(self, device_id: str) -> str | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT hmac_key FROM device_keys WHERE device_id = ?", (device_id,)).fetchone()
            return str(row[0]) if row else None
        return await self._run(read)

    async def add_proof(self, device_id: str, challenge: str, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO activation_proofs (device_id, challenge, proven) VALUES (?, ?, ?) "
                       "ON CONFLICT(device_id) DO UPDATE SET challenge = excluded.challenge, proven = excluded.proven",
                       (device_id, challenge, now))
        await self._run(write)
