"""The backend's MCP client for the device's own tools (the firmware is the MCP *server*).

The JSON-RPC travels inside `{"type":"mcp","payload":...}` text frames on the device's
WebSocket, so this client owns no transport: the session hands it a `send(payload)` coroutine
and feeds it every incoming payload through `on_message()`.

What the firmware (main/mcp_server.cc) imposes, and how it is handled here:
- ids must be JSON numbers: every request gets a fresh integer id; replies whose id is not an
  integer we are waiting for (strings, late answers after a timeout) are dropped.
- `tools/list` pages are capped at 8000 bytes; `nextCursor` names the first tool of the next page.
- error objects carry only `message` (no `code`).
- the device reads `capabilities.vision{url, token}` from `initialize` and uses them for its
  camera tool, which uploads the photo to our vision endpoint.

Unlike the reference server (a fixed 1 s sleep, then a blind 30 s wait per call), the listing
starts as soon as the initialize result arrives, and a turn can wait briefly on `wait_ready()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.tools.base import ToolContext, ToolResult, ToolSpec, object_schema
from server.tools.mcp_result import mcp_tool_result

log = logging.getLogger("server.devices.mcp")

SendPayload = Callable[[dict[str, Any]], Awaitable[None]]

PROTOCOL_VERSION = "2024-11-05"  # what the firmware answers with
MAX_LIST_PAGES = 50  # 50 pages x 8000 bytes: far beyond any real board; guards a looping cursor


class DeviceToolsConfig(BaseModel):
    """`device_tools:` section of config.yaml."""

    model_config = ConfigDict(extra="forbid")

    # Talk MCP to devices whose hello announces features.mcp (firmware >= 1.8).
    mcp: bool = True
    # Accept legacy `iot` descriptors (firmware <= 1.7) and offer their methods as tools.
    iot: bool = True
    # How long a tools/call may take on the device before the LLM gets an error result.
    call_timeout_s: float = Field(default=10, gt=0, le=120)
    # Tools known to be slow, by device tool name (the camera uploads a photo and waits for the
    # vision model before it answers).
    tool_timeouts_s: dict[str, float] = Field(default_factory=lambda: {"self.camera.take_photo": 40.0})
    # How long to wait for the initialize result and for each tools/list page.
    list_timeout_s: float = Field(default=5, gt=0, le=60)
    # Pause between the initialize result and the first tools/list (the reference sleeps 1 s;
    # current firmware answers at once).
    list_delay_s: float = Field(default=0, ge=0, le=10)
    # Every device tool goes into every LLM request: a device (or a client posing as one) may
    # offer at most this many, in at most this many bytes of JSON definitions; the rest are
    # left out. Legacy iot things likewise.
    max_tools: int = Field(default=64, ge=1, le=1000)
    max_tools_bytes: int = Field(default=65536, ge=1024, le=4 * 1024 * 1024)
    max_iot_things: int = Field(default=32, ge=1, le=1000)
    max_iot_bytes: int = Field(default=65536, ge=1024, le=4 * 1024 * 1024)


class _DeviceError(Exception):
    """An `error` object from the device; the firmware sends only `message`."""


@dataclass(slots=True)
class _Pending:
    method: str
    future: asyncio.Future[Any]


class DeviceMcpClient:
    """One device's MCP tools, as a ToolSource (name "device")."""

    name = "device"

    def __init__(self, send: SendPayload, *, vision_url: str = "", vision_token: str = "",
                 call_timeout_s: float = 30, list_delay_s: float = 0, list_timeout_s: float = 5,
                 tool_timeouts_s: Mapping[str, float] | None = None, tag: str = "device",
                 max_tools: int = 64, max_tools_bytes: int = 65536) -> None:
        self._send = send
        self.max_tools = max_tools
        self.max_tools_bytes = max_tools_bytes
        self.vision_url = vision_url
        self.vision_token = vision_token
        self.call_timeout_s = call_timeout_s
        self.list_delay_s = list_delay_s
        self.list_timeout_s = list_timeout_s
        self.tool_timeouts_s = dict(tool_timeouts_s or {})
        self.tag = tag  # names the device in logs
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._tools: list[dict[str, Any]] = []
        self._specs: list[ToolSpec] = []
        self._ready = asyncio.Event()
        self._closed = False
        self._started = False
        self.server_info: dict[str, Any] = {}

    @classmethod
    def from_config(cls, send: SendPayload, config: DeviceToolsConfig, *, vision_url: str = "",
                    vision_token: str = "", tag: str = "device") -> DeviceMcpClient:
        return cls(send, vision_url=vision_url, vision_token=vision_token, call_timeout_s=config.call_timeout_s,
                   list_delay_s=config.list_delay_s, list_timeout_s=config.list_timeout_s,
                   tool_timeouts_s=config.tool_timeouts_s, tag=tag, max_tools=config.max_tools,
                   max_tools_bytes=config.max_tools_bytes)

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """True once the tool list is complete (or listing gave up): turns need not wait."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        if self._ready.is_set():
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The device's tool descriptors as listed (name, description, inputSchema)."""
        return list(self._tools)

    def close(self) -> None:
        """The device went away: every waiting call ends with an error result now."""
        self._closed = True
        self._ready.set()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ConnectionError("the device disconnected"))
        self._pending.clear()

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """initialize (with the vision capability), then every page of tools/list.

        Never raises into the session: a device that does not answer ends up with no tools and
        `ready` set, so turns do not keep waiting for it."""
        if self._started:
            return
        self._started = True
        try:
            await self._start()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a broken device must not break the session
            log.exception("[%s] MCP start-up failed", self.tag)
        finally:
            self._ready.set()

    async def _start(self) -> None:
        capabilities: dict[str, Any] = {}
        if self.vision_url:
            capabilities["vision"] = {"url": self.vision_url, "token": self.vision_token}
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": capabilities,
                  "clientInfo": {"name": "xiaozhi-voice-server", "version": "0.1.0"}}
        try:
            result = await self._request("initialize", params, self.list_timeout_s)
        except TimeoutError:
            log.warning("[%s] MCP: the device did not answer initialize within %.0f s; no device tools",
                        self.tag, self.list_timeout_s)
            return
        except (_DeviceError, ConnectionError) as exc:
            log.warning("[%s] MCP initialize failed: %s", self.tag, exc)
            return
        if isinstance(result, dict) and isinstance(result.get("serverInfo"), dict):
            self.server_info = result["serverInfo"]
        # As the MCP lifecycle asks; the firmware drops notifications silently.
        try:
            await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except Exception as exc:  # noqa: BLE001 - the next request reports a dead socket anyway
            log.debug("[%s] MCP: sending notifications/initialized failed: %s", self.tag, exc)
        if self.list_delay_s > 0:
            await asyncio.sleep(self.list_delay_s)
        tools = await self._list_all()
        self._set_tools(tools)
        log.info("[%s] MCP: %d device tools from %s %s: %s", self.tag, len(self._specs),
                 self.server_info.get("name", "?"), self.server_info.get("version", "?"),
                 ", ".join(s.name for s in self._specs) or "none")

    async def _list_all(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor = ""
        seen: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            # The default (non-user) list only: user-only tools (reboot, firmware upgrade) are
            # for the person holding the device, not for the LLM.
            try:
                result = await self._request("tools/list", {"cursor": cursor}, self.list_timeout_s)
            except TimeoutError:
                log.warning("[%s] MCP: tools/list (cursor %r) got no answer within %.0f s; keeping %d tools",
                            self.tag, cursor, self.list_timeout_s, len(tools))
                return tools
            except (_DeviceError, ConnectionError) as exc:
                # e.g. "Failed to add tool X because of payload size limit": keep the pages we have.
                log.warning("[%s] MCP: tools/list (cursor %r) failed: %s; keeping %d tools",
                            self.tag, cursor, exc, len(tools))
                return tools
            page = result.get("tools") if isinstance(result, dict) else None
            if not isinstance(page, list):
                log.warning("[%s] MCP: tools/list result without a tools list: %.200s", self.tag, result)
                return tools
            tools.extend(t for t in page if isinstance(t, dict))
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                return tools
            if next_cursor in seen:
                log.warning("[%s] MCP: tools/list repeats cursor %r; stopping", self.tag, next_cursor)
                return tools
            seen.add(next_cursor)
            cursor = next_cursor
        log.warning("[%s] MCP: tools/list still paginating after %d pages; stopping", self.tag, MAX_LIST_PAGES)
        return tools

    def _set_tools(self, tools: list[dict[str, Any]]) -> None:
        specs: list[ToolSpec] = []
        kept: list[dict[str, Any]] = []
        names: set[str] = set()
        total_bytes = 0
        for tool in tools:
            name = tool.get("name")
            if not isinstance(name, str) or not name or name in names:
                continue
            size = len(json.dumps(tool, ensure_ascii=False, default=str))
            if len(kept) >= self.max_tools or total_bytes + size > self.max_tools_bytes:
                log.warning("[%s] MCP: the device offers more than %d tools / %d bytes of tool definitions; "
                            "keeping the first %d", self.tag, self.max_tools, self.max_tools_bytes, len(kept))
                break
            annotations = tool.get("annotations")
            audience = annotations.get("audience") if isinstance(annotations, dict) else None
            if isinstance(audience, list) and audience and "assistant" not in audience:
                continue  # a user-only tool listed anyway
            names.add(name)
            kept.append(tool)
            total_bytes += size
            description = tool.get("description") if isinstance(tool.get("description"), str) else ""
            timeout = self.tool_timeouts_s.get(name, self.call_timeout_s)
            # One second more than our own wait, so the toolbox's timeout never fires first and
            # the LLM reads "the device did not answer", not a generic message.
            specs.append(ToolSpec(name=name, description=description or name,
                                  parameters=object_schema(tool.get("inputSchema")), timeout_s=timeout + 1))
        self._tools = kept
        self._specs = specs

    # ------------------------------------------------------------------ ToolSource

    def specs(self) -> list[ToolSpec]:
        return list(self._specs)

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        if self._closed:
            return ToolResult.error("the device is disconnected")
        timeout = self.tool_timeouts_s.get(name, self.call_timeout_s)
        try:
            result = await self._request("tools/call", {"name": name, "arguments": arguments}, timeout)
        except TimeoutError:
            log.warning("[%s] MCP tool %s: no answer within %g s", self.tag, name, timeout)
            return ToolResult.error(f"the device did not answer within {timeout:g} s")
        except _DeviceError as exc:
            log.info("[%s] MCP tool %s: device error: %s", self.tag, name, exc)
            return ToolResult.error(str(exc))
        except ConnectionError as exc:
            return ToolResult.error(f"could not reach the device: {exc}")
        return mcp_tool_result(result, read_text=_unwrap_vision, failed="the device reported an error")

    # ------------------------------------------------------------------ JSON-RPC plumbing

    async def _request(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        if self._closed:
            raise ConnectionError("the device disconnected")
        rid = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(method, future)
        try:
            try:
                await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            except Exception as exc:  # noqa: BLE001 - a closed socket is a connection problem here
                raise ConnectionError(f"sending {method} failed: {exc}") from exc
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(rid, None)

    def on_message(self, payload: Any) -> None:
        """One `mcp` payload from the device. Never raises: anything odd is logged and dropped."""
        try:
            self._on_message(payload)
        except Exception:  # noqa: BLE001 - a malformed payload must not reach the session
            log.exception("[%s] MCP: could not handle payload %.200s", self.tag, payload)

    def _on_message(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            log.info("[%s] MCP: payload is not an object: %.200r", self.tag, payload)
            return
        if "method" in payload:
            # Notifications (and requests) from the device: current firmware sends none, and
            # we offer no client-side methods (sampling, roots), so there is nothing to do.
            log.debug("[%s] MCP: ignoring device %s %r", self.tag,
                      "request" if "id" in payload else "notification", payload.get("method"))
            return
        rid = payload.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            # We only ever send integer ids (the firmware drops others), so this is not ours.
            log.info("[%s] MCP: response with a non-integer id %.50r: ignored", self.tag, rid)
            return
        pending = self._pending.get(rid)
        if pending is None or pending.future.done():
            log.info("[%s] MCP: response for unknown or expired id %d: ignored", self.tag, rid)
            return
        if "error" in payload:
            error = payload["error"]
            message = error.get("message") if isinstance(error, dict) else None
            if not isinstance(message, str) or not message:
                message = json.dumps(error, ensure_ascii=False)[:300]
            pending.future.set_exception(_DeviceError(message))
        elif "result" in payload:
            pending.future.set_result(payload["result"])
        else:
            log.info("[%s] MCP: response %d has neither result nor error: ignored", self.tag, rid)




def _unwrap_vision(text: str) -> tuple[str, bool]:
    """The camera tool returns the vision endpoint's JSON body verbatim (or the firmware's own
    `{"success": false, ...}` when the upload failed): give the LLM the answer, or flag the
    failure. Returns (text, failed)."""
    if not text.startswith("{") or '"success"' not in text:
        return text, False
    try:
        body = json.loads(text)
    except ValueError:
        return text, False
    if not isinstance(body, dict) or not isinstance(body.get("success"), bool):
        return text, False
    if body["success"]:
        answer = body.get("response")
        return (answer if isinstance(answer, str) else text), False
    message = body.get("message")
    return f"the photo could not be analysed: {message if isinstance(message, str) else text}", True
