"""Every configured external MCP server's tools as one ToolSource (name "mcp"), shared by all
sessions. Each server has its own runner (runner.py) that connects, lists and reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from server.tools.base import ToolContext, ToolResult, ToolSpec
from server.tools.remote_mcp.config import McpServerConfig
from server.tools.remote_mcp.runner import McpServerRunner, ToolEntry

log = logging.getLogger("server.mcp")


class ExternalMcpManager:
    """Every configured server's tools as one ToolSource (name "mcp"), shared by all sessions."""

    name = "mcp"

    def __init__(self, configs: Mapping[str, McpServerConfig], *, backoff_initial_s: float = 1.0,
                 backoff_max_s: float = 300.0) -> None:
        self.runners: dict[str, McpServerRunner] = {
            name: McpServerRunner(name, cfg, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
            for name, cfg in configs.items() if cfg.enabled
        }
        for name, cfg in configs.items():
            if not cfg.enabled:
                log.info("[mcp %s] disabled in config", name)
        self._started = False

    @property
    def servers(self) -> Iterable[str]:
        return self.runners.keys()

    async def start(self, wait_s: float = 15.0) -> None:
        """Start every server concurrently and wait up to `wait_s` for their first attempts, so
        the first sessions usually see every tool. A server still connecting after that keeps
        going in the background (its tools appear when it is ready); one that fails is logged
        with its name and cause and retried with backoff. Never raises for a server's sake."""
        if self._started:
            return
        self._started = True
        if not self.runners:
            return
        for runner in self.runners.values():
            runner.start()
        waits = [r.first_attempt_done.wait() for r in self.runners.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), wait_s)
        ready = [n for n, r in self.runners.items() if r.state == "ready"]
        pending = [n for n, r in self.runners.items() if not r.first_attempt_done.is_set()]
        log.info("MCP servers ready: %d of %d (%s)%s", len(ready), len(self.runners), ", ".join(ready) or "none",
                 f"; still connecting: {', '.join(pending)}" if pending else "")

    async def close(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)

    async def wait_ready(self, server: str, timeout: float) -> bool:
        """For tests and health checks: wait until `server` is connected."""
        try:
            await asyncio.wait_for(self.runners[server].ready_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def status(self) -> dict[str, dict[str, Any]]:
        """Per server: state, tool count, last error (for /health)."""
        return {n: {"state": r.state, "tools": len(r.tools), "restarts": max(0, r.attempts - 1),
                    "error": r.last_error} for n, r in self.runners.items()}

    # ------------------------------------------------------------------ ToolSource

    def _entries(self) -> dict[str, ToolEntry]:
        entries: dict[str, ToolEntry] = {}
        for runner in self.runners.values():
            for entry in runner.tools:
                if entry.spec.name in entries:
                    continue  # a clash (e.g. tool_prefix ""): the first server keeps the name
                entries[entry.spec.name] = entry
        return entries

    def specs(self) -> list[ToolSpec]:
        # Tools of a server that is down stay listed: a call explains that it is restarting,
        # which is better for the user than the LLM believing the ability never existed.
        return [e.spec for e in self._entries().values()]

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        entry = self._entries().get(name)
        if entry is None:
            return ToolResult.error(f"no MCP tool named {name!r}")
        return await self.runners[entry.server].call(entry.tool, arguments)
