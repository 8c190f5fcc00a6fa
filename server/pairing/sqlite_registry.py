"""The device registry in one SQLite file under data/ (WAL journal, so the `devices` CLI can
write while the server reads). All work runs on one dedicated thread, off the event loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from server.pairing.registry import CodeTaken, DeviceRecord, PendingCode
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

    async def add_pending(self, candidate: PendingCode, max_total: int, max_per_address: int,
                          now: float) -> PendingCode | None:
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
                total = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
                here = db.execute("SELECT COUNT(*) FROM pending WHERE address = ?",
                                  (candidate.address,)).fetchone()[0]
                if total >= max_total or here >= max_per_address:
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
                db.execute(
                    f"INSERT INTO devices ({_DEVICE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) "
                    "ON CONFLICT(device_id) DO UPDATE SET client_id = excluded.client_id, board = excluded.board, "
                    "firmware = excluded.firmware, last_seen = excluded.last_seen, paired_at = excluded.paired_at, "
                    "owner = excluded.owner",
                    (p.device_id, p.client_id, p.board, p.firmware, p.created, now, now, owner))
                db.execute("DELETE FROM pending WHERE device_id = ?", (p.device_id,))
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
