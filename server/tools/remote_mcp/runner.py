"""One external MCP server, connected once per process and shared by every session.

The reference server spawns its MCP clients per connection (a new npx process per device
connect); here each configured server gets one long-lived runner task that owns the SDK's
context managers (anyio requires entering and leaving them in the same task), keeps the tool
list, and restarts the server with exponential backoff when it dies, stops answering pings or
fails to start. Calls from sessions run on the shared ClientSession with a timeout; while a
server is down its tools stay listed and return an error result naming it, so the LLM can tell
the user instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from server.tools.base import ToolResult, ToolSpec, object_schema
from server.tools.mcp_result import mcp_tool_result
from server.tools.remote_mcp.config import McpServerConfig
from server.tools.remote_mcp.stderr import StderrPipe

if TYPE_CHECKING:  # the SDK is imported only when a server is actually started
    from mcp import ClientSession

log = logging.getLogger("server.mcp")

CLIENT_NAME = "xiaozhi-voice-server"
CLIENT_VERSION = "0.1.0"
MAX_LIST_PAGES = 100
# A server that stayed up this long is considered healthy again: the next failure restarts it
# after the initial delay instead of the last (long) one.
HEALTHY_AFTER_S = 60.0

State = Literal["starting", "ready", "down", "stopped"]


class ServerLost(Exception):
    """The connection to a running server ended (process exited, ping failed, stream closed)."""


class ConnectFailed(Exception):
    """The handshake or the tool listing failed; the message already names the cause."""


def _describe(exc: BaseException) -> str:
    """One line for the log: unwrap the exception groups anyio task groups raise."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions[:3])
    text = str(exc).strip()
    if isinstance(exc, TimeoutError | ServerLost | ConnectFailed):
        return text or "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class ToolEntry:
    server: str
    tool: str  # the server's own name
    spec: ToolSpec  # under the prefixed name


class McpServerRunner:
    """One configured server: connect, list, serve calls, and reconnect after failures."""

    def __init__(self, name: str, config: McpServerConfig, *, backoff_initial_s: float,
                 backoff_max_s: float) -> None:
        self.name = name
        self.config = config
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.state: State = "starting"
        self.session: ClientSession | None = None
        self.tools: list[ToolEntry] = []
        self.last_error = ""
        self.attempts = 0  # connection attempts so far (1 = the first start)
        self.connected_count = 0
        self.first_attempt_done = asyncio.Event()
        self.ready_event = asyncio.Event()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # stop, connection lost, or tool list changed
        self._lost_reason = ""
        self._lost_at = 0.0
        self._relist = False
        self._http_status = ""  # the last HTTP error status seen (streamable HTTP only)
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mcp-{self.name}")

    async def stop(self, timeout: float = 8.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is None:
            return
        if self.state == "starting":
            # Stuck in the handshake (a server that never answers): nothing to finish cleanly.
            # The SDK's shutdown still runs, shielded, and reaps the process.
            self._task.cancel()
        try:
            # Leaving the SDK contexts normally lets stdio_client close stdin and reap the process.
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("[mcp %s] did not stop within %.0f s; cancelling", self.name, timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                self._task.cancel()  # our caller is being cancelled: pass it on
                raise
            # otherwise it is the runner's own cancellation (the "starting" case above)
        self.state = "stopped"

    def mark_lost(self, reason: str) -> None:
        """The connection is gone (seen by a call or the relay): stop routing calls to it at once
        and let the runner restart the server now rather than at the next ping."""
        if self.state == "ready" and not self._lost_reason:
            self._lost_reason = reason
            self.last_error = reason
            self._lost_at = time.monotonic()
            self._went_down()
            self._wake.set()

    def _went_down(self) -> None:
        self.state = "stopped" if self._stop.is_set() else "down"
        self.session = None
        self.ready_event.clear()

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._stop.is_set():
            self.attempts += 1
            started = time.monotonic()
            connected_before = self.connected_count
            try:
                await self._lifetime()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "restart later"
                self.last_error = _describe(exc)
            finally:
                self._went_down()
                self.first_attempt_done.set()
            if self._stop.is_set():
                break
            if self.connected_count and time.monotonic() - started >= HEALTHY_AFTER_S:
                delay = self.backoff_initial_s
            if self.connected_count > connected_before:
                what = "stopped working"
            else:
                what = "failed to start" if self.connected_count == 0 else "could not reconnect"
            log.warning("[mcp %s] %s (attempt %d): %s; retrying in %.1f s", self.name, what, self.attempts,
                        self.last_error or "unknown cause", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, self.backoff_max_s)
        log.info("[mcp %s] stopped", self.name)

    async def _lifetime(self) -> None:
        """Connect, list the tools, then serve until stopped or the connection is lost."""
        import anyio
        from mcp import ClientSession
        from mcp.types import Implementation

        self.state = "starting"
        self._lost_reason = ""
        self._lost_at = 0.0
        self._wake.clear()
        if self._stop.is_set():
            return
        cfg = self.config
        stderr: StderrPipe | None = None
        async with contextlib.AsyncExitStack() as stack:
            if cfg.transport == "stdio":
                stderr = StderrPipe(self.name)
                stack.push_async_callback(stderr.close)
                await stderr.start()
                read, write = await stack.enter_async_context(self._stdio(stderr))
                stderr.close_write_end()
            else:
                read, write = await stack.enter_async_context(self._http())

            # Relay the transport's incoming stream so that its end (the process exited, the
            # HTTP stream broke) wakes this task at once instead of at the next call or ping.
            relay_send, relay_recv = anyio.create_memory_object_stream[Any](0)
            relay = asyncio.create_task(self._relay(read, relay_send), name=f"mcp-relay-{self.name}")

            async def stop_relay() -> None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await relay

            stack.push_async_callback(stop_relay)
            session = await stack.enter_async_context(ClientSession(
                relay_recv, write, client_info=Implementation(name=CLIENT_NAME, version=CLIENT_VERSION),
                message_handler=self._on_incoming))
            try:
                async with asyncio.timeout(cfg.connect_timeout_s):
                    init = await session.initialize()
                    tools = await self._list(session)
            except TimeoutError:
                raise ConnectFailed(f"no answer to initialize/tools/list within {cfg.connect_timeout_s:g} s"
                                    + await self._stderr_tail(stderr)) from None
            except Exception as exc:
                http = f" ({self._http_status})" if self._http_status else ""
                raise ConnectFailed(_describe(exc) + http + await self._stderr_tail(stderr)) from None
            self.tools = tools
            self.session = session
            self.state = "ready"
            self.connected_count += 1
            self.last_error = ""
            self.ready_event.set()
            self.first_attempt_done.set()
            info = init.server_info
            log.info("[mcp %s] %s %s %s over %s: %d tools: %s", self.name,
                     "connected to" if self.connected_count == 1 else "reconnected to",
                     info.name, info.version, cfg.transport, len(tools),
                     ", ".join(t.spec.name for t in tools) or "none")
            try:
                await self._serve(session)
            except ServerLost as exc:
                self._went_down()
                since = (self._lost_at or time.monotonic()) - 2.0
                raise ServerLost(str(exc) + await self._stderr_tail(stderr, since)) from None

    @staticmethod
    async def _stderr_tail(stderr: StderrPipe | None, since: float = 0.0) -> str:
        """The server's last stderr lines, which usually say why it failed (a traceback)."""
        if stderr is None:
            return ""
        await asyncio.sleep(0.1)  # let the pipe reader catch up with a process that just died
        return stderr.explain(since)

    def _stdio(self, stderr: StderrPipe) -> Any:
        from mcp import StdioServerParameters, stdio_client

        cfg = self.config
        params = StdioServerParameters(command=cfg.command, args=list(cfg.args), env=dict(cfg.env) or None,
                                       cwd=cfg.cwd or None)
        return stdio_client(params, errlog=stderr.write_end)

    @contextlib.asynccontextmanager
    async def _http(self) -> Any:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        cfg = self.config
        self._http_status = ""

        async def note_status(response: Any) -> None:
            # The SDK turns an HTTP error into "Server returned an error response"; keep the
            # status so the log can say "HTTP 401" (a wrong token) or "HTTP 404" (a wrong path).
            if response.status_code >= 400:
                self._http_status = f"HTTP {response.status_code} from {cfg.url}"

        # Our own client carries the configured headers; a long read timeout because the
        # server may hold an SSE response open while a tool runs (our call timeout bounds it).
        timeout = httpx2.Timeout(cfg.connect_timeout_s, read=max(300.0, cfg.timeout_s + 5))
        async with httpx2.AsyncClient(headers=dict(cfg.headers), timeout=timeout,
                                      event_hooks={"response": [note_status]}) as client:
            async with streamable_http_client(cfg.url, http_client=client) as streams:
                yield streams

    async def _relay(self, source: Any, sink: Any) -> None:
        import anyio

        try:
            async with sink:
                async for item in source:
                    await sink.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        finally:
            self.mark_lost("the connection closed (the server exited?)")

    async def _on_incoming(self, message: Any) -> None:
        from mcp.types import ToolListChangedNotification

        if isinstance(message, ToolListChangedNotification):
            self._relist = True
            self._wake.set()
        elif isinstance(message, Exception):
            log.info("[mcp %s] transport error: %s", self.name, _describe(message))

    async def _serve(self, session: ClientSession) -> None:
        interval = self.config.ping_interval_s or None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                await self._ping(session)
                continue
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._lost_reason:
                raise ServerLost(self._lost_reason)
            if self._relist:
                self._relist = False
                try:
                    async with asyncio.timeout(self.config.connect_timeout_s):
                        self.tools = await self._list(session)
                    log.info("[mcp %s] tool list changed: %d tools", self.name, len(self.tools))
                except Exception as exc:  # noqa: BLE001 - keep the old list
                    log.warning("[mcp %s] re-listing tools failed: %s", self.name, _describe(exc))

    async def _ping(self, session: ClientSession) -> None:
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        try:
            await asyncio.wait_for(session.send_ping(), self.config.timeout_s)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise ServerLost("the connection closed") from None
            # Any answer, even an error (a server without ping), proves the server is alive.
        except Exception as exc:  # noqa: BLE001 - no answer at all: the server is gone or hung
            raise ServerLost(f"ping failed: {_describe(exc)}") from None

    async def _list(self, session: ClientSession) -> list[ToolEntry]:
        from mcp.types import PaginatedRequestParams

        cfg = self.config
        prefix = cfg.prefix_for(self.name)
        wanted = set(cfg.tools)
        entries: list[ToolEntry] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            result = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            for tool in result.tools:
                if wanted and tool.name not in wanted:
                    continue
                description = tool.description or tool.title or tool.name
                entries.append(ToolEntry(self.name, tool.name, ToolSpec(
                    name=f"{prefix}{tool.name}", description=description,
                    parameters=object_schema(tool.input_schema),
                    # a little longer than our own wait, so our message (naming the server) wins
                    timeout_s=cfg.timeout_s + 1)))
            cursor = result.next_cursor
            if not cursor or cursor in seen:
                break
            seen.add(cursor)
        missing = wanted - {e.tool for e in entries}
        if missing:
            log.warning("[mcp %s] configured tools not offered by the server: %s", self.name,
                        ", ".join(sorted(missing)))
        return entries

    # ------------------------------------------------------------------ calls

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        session = self.session
        if session is None or self.state != "ready":
            why = f" ({self.last_error})" if self.last_error else ""
            return ToolResult.error(f"the MCP server {self.name!r} is not available right now{why}; "
                                    "it is being restarted")
        timeout = self.config.timeout_s
        try:
            result = await asyncio.wait_for(
                session.call_tool(tool, arguments, read_timeout_seconds=timeout), timeout + 0.5)
        except TimeoutError:
            log.warning("[mcp %s] tool %s: no answer within %g s", self.name, tool, timeout)
            return ToolResult.error(f"the MCP server {self.name!r} did not answer within {timeout:g} s")
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self.mark_lost("the connection closed during a call")
                log.warning("[mcp %s] tool %s: connection closed", self.name, tool)
                return ToolResult.error(f"the MCP server {self.name!r} stopped working during the call; "
                                        "it is being restarted")
            if exc.code == REQUEST_TIMEOUT:
                return ToolResult.error(f"the MCP server {self.name!r} did not answer within {timeout:g} s")
            log.info("[mcp %s] tool %s: error %s: %s", self.name, tool, exc.code, exc.message)
            return ToolResult.error(f"the MCP server {self.name!r} answered with an error: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - e.g. a result that does not validate
            log.warning("[mcp %s] tool %s failed: %s", self.name, tool, _describe(exc))
            return ToolResult.error(f"the MCP server {self.name!r} failed: {_describe(exc)}")
        return mcp_tool_result(result)
