"""Where memory lives. `MemoryStore` is the interface; `SqliteMemoryStore` the embedded default
(one file under data/, WAL journal so readers never wait for the writer). The shared PostgreSQL
store of a fleet is server/state/postgres.py.

All SQLite work runs on one dedicated thread with one connection: writes from concurrent
sessions are serialized there instead of racing (the reference server's YAML memory file loses
updates when two sessions close at once), and the event loop never blocks on disk.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from server.sqlite_file import SqliteFile

# Versioned, additive migrations (PRAGMA user_version counts the ones applied). Version 1 is the
# original schema, written with IF NOT EXISTS, so data/ directories created before versioning
# (user_version 0, tables present) pass through it unchanged and then get the later steps.
SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    ts REAL NOT NULL,
    user_text TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS exchanges_user ON exchanges(user_id, id);
CREATE TABLE IF NOT EXISTS summaries (
    user_id TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
"""
MIGRATIONS: list[str] = [
    SCHEMA,
    # 2: summaries carry a watermark (the last exchange they cover) and a version, so two writers
    # cannot silently overwrite each other (compare-and-set in put_summary).
    "ALTER TABLE summaries ADD COLUMN version INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE summaries ADD COLUMN through_id INTEGER NOT NULL DEFAULT 0;",
]


@dataclass(slots=True, frozen=True)
class StoredExchange:
    user: str
    assistant: str
    interrupted: bool
    ts: float
    session_id: str
    id: int = 0  # increasing per store: the watermark summaries use


@dataclass(slots=True, frozen=True)
class SummaryState:
    summary: str = ""
    version: int = 0  # bumped by every successful put_summary
    through_id: int = 0  # the last exchange id the summary covers


class MemoryStore(Protocol):
    async def add_exchange(self, user_id: str, session_id: str, user: str, assistant: str,
                           interrupted: bool = False) -> None: ...

    async def recent_exchanges(self, user_id: str, limit: int) -> list[StoredExchange]: ...

    async def session_exchanges(self, user_id: str, session_id: str) -> list[StoredExchange]: ...

    async def get_summary(self, user_id: str) -> str: ...

    async def set_summary(self, user_id: str, summary: str) -> None: ...

    async def summary_state(self, user_id: str) -> SummaryState: ...

    async def exchanges_after(self, user_id: str, after_id: int, limit: int) -> list[StoredExchange]:
        """The newest `limit` exchanges with id > after_id, oldest first."""
        ...

    async def put_summary(self, user_id: str, summary: str, expected_version: int, through_id: int) -> bool:
        """Write the summary only if its version is still `expected_version` (False: another writer
        won; re-read and retry), advancing the watermark to `through_id` and the version by one."""
        ...

    async def get_value(self, user_id: str, key: str) -> str | None: ...

    async def set_value(self, user_id: str, key: str, value: str | None) -> None: ...

    async def forget(self, user_id: str) -> None: ...

    async def close(self) -> None: ...


class SqliteMemoryStore:
    def __init__(self, path: Path, max_exchanges_per_user: int = 0) -> None:
        self.path = path
        # 0: keep everything; else the oldest exchanges of a user beyond this are deleted.
        self.max_exchanges_per_user = max_exchanges_per_user
        self._file = SqliteFile(path, name="memory-db", prepare=migrate)
        self._run = self._file.run

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def add_exchange(self, user_id: str, session_id: str, user: str, assistant: str,
                           interrupted: bool = False) -> None:
        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("INSERT INTO exchanges (user_id, session_id, ts, user_text, assistant_text, interrupted)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (user_id, session_id, time.time(), user, assistant, int(interrupted)))
                if self.max_exchanges_per_user:
                    # The index (user_id, id) makes this a short range scan per insert.
                    db.execute("DELETE FROM exchanges WHERE user_id = ? AND id <= (SELECT id FROM exchanges "
                               "WHERE user_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                               (user_id, user_id, self.max_exchanges_per_user))
        await self._run(write)

    async def count_exchanges(self, user_id: str) -> int:
        def read(db: sqlite3.Connection) -> int:
            return db.execute("SELECT COUNT(*) FROM exchanges WHERE user_id = ?", (user_id,)).fetchone()[0]
        return await self._run(read)

    @staticmethod
    def _rows(rows: list[Any]) -> list[StoredExchange]:
        return [StoredExchange(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in rows]

    async def recent_exchanges(self, user_id: str, limit: int) -> list[StoredExchange]:
        def read(db: sqlite3.Connection) -> list[StoredExchange]:
            rows = db.execute("SELECT user_text, assistant_text, interrupted, ts, session_id, id FROM exchanges "
                              "WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)).fetchall()
            return self._rows(rows[::-1])
        return await self._run(read)

    async def session_exchanges(self, user_id: str, session_id: str) -> list[StoredExchange]:
        def read(db: sqlite3.Connection) -> list[StoredExchange]:
            rows = db.execute("SELECT user_text, assistant_text, interrupted, ts, session_id, id FROM exchanges "
                              "WHERE user_id = ? AND session_id = ? ORDER BY id", (user_id, session_id)).fetchall()
            return self._rows(rows)
        return await self._run(read)

    async def exchanges_after(self, user_id: str, after_id: int, limit: int) -> list[StoredExchange]:
        def read(db: sqlite3.Connection) -> list[StoredExchange]:
            rows = db.execute("SELECT user_text, assistant_text, interrupted, ts, session_id, id FROM exchanges "
                              "WHERE user_id = ? AND id > ? ORDER BY id DESC LIMIT ?",
                              (user_id, after_id, limit)).fetchall()
            return self._rows(rows[::-1])
        return await self._run(read)

    async def summary_state(self, user_id: str) -> SummaryState:
        def read(db: sqlite3.Connection) -> SummaryState:
            row = db.execute("SELECT summary, version, through_id FROM summaries WHERE user_id = ?",
                             (user_id,)).fetchone()
            return SummaryState(row[0], row[1], row[2]) if row else SummaryState()
        return await self._run(read)

    async def put_summary(self, user_id: str, summary: str, expected_version: int, through_id: int) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            with db:
                if expected_version == 0:
                    cur = db.execute("INSERT INTO summaries (user_id, summary, updated, version, through_id) "
                                     "VALUES (?, ?, ?, 1, ?) ON CONFLICT(user_id) DO UPDATE SET "
                                     "summary = excluded.summary, updated = excluded.updated, version = 1, "
                                     "through_id = excluded.through_id WHERE summaries.version = 0",
                                     (user_id, summary, time.time(), through_id))
                else:
                    cur = db.execute("UPDATE summaries SET summary = ?, updated = ?, version = version + 1, "
                                     "through_id = ? WHERE user_id = ? AND version = ?",
                                     (summary, time.time(), through_id, user_id, expected_version))
                return cur.rowcount == 1
        return await self._run(write)

    async def get_summary(self, user_id: str) -> str:
        def read(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT summary FROM summaries WHERE user_id = ?", (user_id,)).fetchone()
            return row[0] if row else ""
        return await self._run(read)

    async def set_summary(self, user_id: str, summary: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("INSERT INTO summaries (user_id, summary, updated, version) VALUES (?, ?, ?, 1) "
                           "ON CONFLICT(user_id) DO UPDATE SET summary = excluded.summary, "
                           "updated = excluded.updated, version = summaries.version + 1",
                           (user_id, summary, time.time()))
        await self._run(write)

    async def get_value(self, user_id: str, key: str) -> str | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM kv WHERE user_id = ? AND key = ?", (user_id, key)).fetchone()
            return row[0] if row else None
        return await self._run(read)

    async def set_value(self, user_id: str, key: str, value: str | None) -> None:
        def write(db: sqlite3.Connection) -> None:
            with db:
                if value is None:
                    db.execute("DELETE FROM kv WHERE user_id = ? AND key = ?", (user_id, key))
                else:
                    db.execute("INSERT INTO kv (user_id, key, value) VALUES (?, ?, ?) "
                               "ON CONFLICT(user_id, key) DO UPDATE SET value = excluded.value", (user_id, key, value))
        await self._run(write)

    async def forget(self, user_id: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            with db:
                for table in ("exchanges", "summaries", "kv"):
                    db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))  # noqa: S608 - fixed names
        await self._run(write)

    async def close(self) -> None:
        await self._file.close()


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this file has not seen yet; returns the schema version."""
    current = db.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise RuntimeError(f"memory database schema version {current} is newer than this server "
                           f"({len(MIGRATIONS)}): upgrade the server or use a copy of the data directory")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        # executescript commits first and runs each statement; user_version goes with the last.
        db.executescript(f"BEGIN; {MIGRATIONS[version - 1]} PRAGMA user_version = {version}; COMMIT;")
    return len(MIGRATIONS)
