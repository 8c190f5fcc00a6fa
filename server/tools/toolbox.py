"""A session's tools: every source's specs under LLM-safe names, and calls run with timeouts.

Sources come and go (a device announces MCP tools after hello), so the name map is rebuilt
each time the turn asks for the tool list. A tool that raises, times out or gets arguments
that are not JSON never breaks the turn: the model receives an error result and can answer
anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.providers.base import ToolCall
from server.tools.base import ToolContext, ToolResult, ToolSource, ToolSpec, sanitize_tool_name

log = logging.getLogger("server.tools")


@dataclass(slots=True)
class _Entry:
    source: ToolSource
    spec: ToolSpec


@dataclass(slots=True)
class ToolRun:
    call: ToolCall
    result: ToolResult
    seconds: float
    source: str


class Toolbox:
    def __init__(self, context: Callable[[], ToolContext], default_timeout_s: float = 10.0,
                 max_timeout_s: float = 60.0) -> None:
        self._sources: list[ToolSource] = []
        self._context = context
        self.default_timeout_s = default_timeout_s
        self.max_timeout_s = max_timeout_s
        self._entries: dict[str, _Entry] = {}

    def add(self, source: ToolSource) -> None:
        if source not in self._sources:
            self._sources.append(source)

    def remove(self, source: ToolSource) -> None:
        if source in self._sources:
            self._sources.remove(source)

    @property
    def sources(self) -> list[ToolSource]:
        return list(self._sources)

    def refresh(self) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for source in self._sources:
            try:
                specs = source.specs()
            except Exception:  # noqa: BLE001 - one broken source must not hide the others
                log.exception("tool source %s failed to list its tools", getattr(source, "name", source))
                continue
            for spec in specs:
                exposed = sanitize_tool_name(spec.name)
                n = 2
                while exposed in entries:
                    suffix = f"_{n}"
                    exposed = sanitize_tool_name(spec.name)[: 64 - len(suffix)] + suffix
                    n += 1
                entries[exposed] = _Entry(source, spec)
        self._entries = entries
        return entries

    def openai_tools(self) -> list[dict[str, Any]]:
        return [e.spec.openai_schema(name) for name, e in self.refresh().items()]

    def describe(self) -> list[tuple[str, str]]:
        """(exposed name, description) pairs, for prompts of models without tool calling."""
        return [(name, e.spec.description) for name, e in self.refresh().items()]

    def cancel_on_interruption(self, exposed: str) -> bool:
        entry = self._entries.get(exposed)
        return entry.spec.cancel_on_interruption if entry else True

    async def run(self, call: ToolCall) -> ToolRun:
        t0 = time.monotonic()
        entry = self._entries.get(call.name) or self.refresh().get(call.name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            return ToolRun(call, ToolResult.error(f"unknown tool {call.name!r}; available: {known}"), 0.0, "-")
        source_name = getattr(entry.source, "name", "?")
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            log.info("tool %s: arguments are not valid JSON (%s): %r", call.name, exc, call.arguments[:200])
            return ToolRun(call, ToolResult.error(f"the arguments were not a valid JSON object ({exc}); "
                                                  "call the tool again with valid JSON"), 0.0, source_name)
        timeout = min(entry.spec.timeout_s or self.default_timeout_s, self.max_timeout_s)
        try:
            result = await asyncio.wait_for(entry.source.call(self._context(), entry.spec.name, args), timeout)
        except TimeoutError:
            log.warning("tool %s (%s) timed out after %.0f s", call.name, source_name, timeout)
            result = ToolResult.error(f"the tool did not answer within {timeout:.0f} seconds")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model gets an error result instead
            log.exception("tool %s (%s) raised", call.name, source_name)
            result = ToolResult.error(f"the tool failed: {type(exc).__name__}: {exc}")
        if not isinstance(result, ToolResult):
            result = ToolResult(text=str(result))
        seconds = time.monotonic() - t0
        log.info("tool %s (%s) -> %s%s in %.0f ms", call.name, source_name, result.action.value,
                 " (error)" if result.is_error else "", seconds * 1000)
        return ToolRun(call, result, seconds, source_name)
