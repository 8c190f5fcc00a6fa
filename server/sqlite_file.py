"""One embedded SQLite file used from async code.

A single connection lives on one worker thread of its own: SQLite calls block, so they never run
on the event loop, and one thread means one writer, so callers need no locks of their own. The
connection opens on first use (WAL, so readers in other processes' tools never wait for a writer);
`prepare` creates or migrates the schema then. Used by the memory store and the device registry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteFile:
    def __init__(self, path: Path, *, name: str, prepare: Callable[[sqlite3.Connection], object],
                 autocommit: bool = False) -> None:
        self.path = path
        self._prepare = prepare
        # autocommit: every statement commits at once (isolation_level=None); otherwise callers
        # group writes with `with db:`.
        self._autocommit = autocommit
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._autocommit:
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=10, isolation_level=None)
            else:
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._prepare(db)
            self._db = db
        return self._db

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the file's thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._connect()))

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
        if self._db is not None:
            await self.run(shut)
            self._db = None
        self._pool.shutdown(wait=True)
