"""One process per embedded data directory.

Two server processes on one data/ would each keep their own sessions, caches and pollers over one
SQLite file and one auth secret file (both start-up writes race), so the second one is refused at
start with one line. The lock is an flock on data/.lock: the kernel drops it when the holder
exits, however it exits (SIGKILL included), so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from server.providers.base import ProviderUnavailable

LOCK_NAME = ".lock"


class DataDirBusy(ProviderUnavailable):
    """Another live process holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise DataDirBusy(
                f"another server process (pid {holder}) already uses the data directory {self.path.parent}: "
                "run one process per embedded data directory, or set state.url to a shared PostgreSQL "
                "to run several (docs/deployment.md)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
