"""A stdio MCP server's stderr, read without blocking the loop: each line goes to our log
(debug, named after the server) and the last few are kept to explain a failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque

log = logging.getLogger("server.mcp")

STDERR_TAIL_LINES = 15


class StderrPipe:
    """The stdio server's stderr, read without blocking the loop: each line goes to our log
    (debug, named after the server) and the last few are kept to explain a failure."""

    def __init__(self, server: str) -> None:
        self.server = server
        read_fd, write_fd = os.pipe()
        self.write_end = os.fdopen(write_fd, "w")  # handed to the child as its stderr
        self._read_end = os.fdopen(read_fd, "rb", buffering=0)
        self.tail: deque[tuple[float, str]] = deque(maxlen=STDERR_TAIL_LINES)
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.ReadTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        self._transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                          self._read_end)
        self._task = asyncio.create_task(self._pump(reader), name=f"mcp-stderr-{self.server}")

    def close_write_end(self) -> None:
        # Once the child has its copy, ours must go, or the pipe never reports EOF.
        with contextlib.suppress(OSError):
            self.write_end.close()

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await reader.read(4096):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()[-4096:]
            for raw in lines:
                self._line(raw)
        if pending:
            self._line(pending)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            self.tail.append((time.monotonic(), line[:300]))
            log.debug("[mcp %s] stderr: %s", self.server, line)

    def explain(self, since: float = 0.0) -> str:
        """The last lines written at or after `since` (monotonic), for an error message."""
        lines = [line for t, line in self.tail if t >= since][-5:]
        return (" | stderr: " + " / ".join(lines)) if lines else ""

    async def close(self) -> None:
        self.close_write_end()
        if self._task is not None:
            # Let the last lines in (they often say why the server died), then stop.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 0.2)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._transport is not None:
            self._transport.close()
        else:
            with contextlib.suppress(OSError):
                self._read_end.close()
