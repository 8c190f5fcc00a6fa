"""The device-side MCP server, reproducing the firmware's main/mcp_server.{h,cc} (v2.4.2).

The device is the MCP *server*; the backend is the client. What matters for conformance is
reproduced byte for byte: which requests are silently ignored (wrong jsonrpc, no method,
notifications, params not an object, non-numeric id), the hand-built result/error strings (errors
carry only `message`, no `code`), the 8000-byte `tools/list` page limit with `nextCursor` = name
of the first tool that did not fit, and the argument validation texts of `tools/call`.

One deliberate difference: the firmware concatenates error messages into JSON without escaping,
so an unknown tool name containing `"` yields invalid JSON there; here it is escaped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

PropertyType = Literal["boolean", "integer", "string"]
ToolValue = bool | int | str | dict[str, Any] | list[Any]
ToolHandler = Callable[[dict[str, Any]], ToolValue]

MAX_TOOLS_LIST_PAYLOAD = 8000  # McpServer::GetToolsList max_payload_size
_TOOLS_LIST_SLACK = 30  # the firmware reserves 30 bytes for the closing brackets and nextCursor
_INT_MAX = 2**31 - 1
_INT_MIN = -(2**31)


def _cjson(value: Any) -> str:
    # cJSON_PrintUnformatted: no whitespace, UTF-8 kept as is, control characters escaped.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_number(value: Any) -> bool:
    # cJSON_IsNumber: JSON true/false are their own cJSON types, never numbers.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valueint(value: int | float) -> int:
    # cJSON stores valueint saturated to INT range, otherwise truncated like a C cast.
    if value >= _INT_MAX:
        return _INT_MAX
    if value <= _INT_MIN:
        return _INT_MIN
    return int(value)


@dataclass(frozen=True, slots=True)
class McpProperty:
    """One tool argument. A property with a default is optional (left out of `required`)."""

    name: str
    type: PropertyType
    default: bool | int | str | None = None
    minimum: int | None = None
    maximum: int | None = None

    @property
    def has_default(self) -> bool:
        return self.default is not None

    def schema(self) -> dict[str, Any]:
        # Key order as in Property::to_json.
        out: dict[str, Any] = {"type": self.type}
        if self.has_default:
            out["default"] = self.default
        if self.type == "integer":
            if self.minimum is not None:
                out["minimum"] = self.minimum
            if self.maximum is not None:
                out["maximum"] = self.maximum
        return out

    def coerce(self, arguments: dict[str, Any] | None) -> tuple[bool, bool | int | str | None]:
        """(found, value) following DoToolCall: a value of the wrong JSON type counts as absent;
        integers are range-checked (raising ValueError with the firmware's text)."""
        if arguments is None or self.name not in arguments:
            return False, self.default
        value = arguments[self.name]
        if self.type == "boolean" and isinstance(value, bool):
            return True, value
        if self.type == "integer" and _is_number(value):
            number = _valueint(value)
            if self.minimum is not None and number < self.minimum:
                raise ValueError(f"Value is below minimum allowed: {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"Value exceeds maximum allowed: {self.maximum}")
            return True, number
        if self.type == "string" and isinstance(value, str):
            return True, value
        return False, self.default


@dataclass(slots=True)
class McpTool:
    name: str
    description: str
    properties: Sequence[McpProperty] = ()
    handler: ToolHandler | None = None
    user_only: bool = False

    def to_json(self) -> str:
        """Exactly McpTool::to_json (cJSON_PrintUnformatted, same key order)."""
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {p.name: p.schema() for p in self.properties},
        }
        required = [p.name for p in self.properties if not p.has_default]
        if required:
            schema["required"] = required
        out: dict[str, Any] = {"name": self.name, "description": self.description, "inputSchema": schema}
        if self.user_only:
            out["annotations"] = {"audience": ["user"]}
        return _cjson(out)


@dataclass(slots=True)
class DeviceStatus:
    """Mutable device state that the default tools read and write."""

    volume: int = 70
    ssid: str = "SimWiFi"
    rssi: int = -55

    def to_json_obj(self) -> dict[str, Any]:
        # WifiBoard::GetDeviceStatusJson for bread-compact-wifi: an OLED without backlight or
        # theme (screen stays empty), no battery, no temperature sensor.
        signal = "strong" if self.rssi >= -60 else ("medium" if self.rssi >= -70 else "weak")
        return {
            "audio_speaker": {"volume": self.volume},
            "screen": {},
            "network": {"type": "wifi", "ssid": self.ssid, "signal": signal},
        }


def default_tools(status: DeviceStatus) -> list[McpTool]:
    """The two common tools every current firmware registers first."""

    def set_volume(args: dict[str, Any]) -> ToolValue:
        status.volume = int(args["volume"])
        return True

    return [
        McpTool(
            "self.get_device_status",
            "Provides the real-time information of the device, including the current status of the audio "
            "speaker, screen, battery, network, etc.\nUse this tool for: \n1. Answering questions about "
            "current condition (e.g. what is the current volume of the audio speaker?)\n2. As the first "
            "step to control the device (e.g. turn up / down the volume of the audio speaker, etc.)",
            (),
            lambda _args: status.to_json_obj(),
        ),
        McpTool(
            "self.audio_speaker.set_volume",
            "Set the volume of the audio speaker. If the current volume is unknown, you must call "
            "`self.get_device_status` tool first and then call this tool.",
            (McpProperty("volume", "integer", minimum=0, maximum=100),),
            set_volume,
        ),
    ]


def filler_tools(count: int, description_bytes: int = 600, prefix: str = "self.sim.filler_") -> list[McpTool]:
    """Tools with long descriptions, to push `tools/list` past one 8000-byte page."""
    body = ("This tool exists only to make the tool list long enough to need pagination. " * 40)
    return [
        McpTool(
            f"{prefix}{i:03d}",
            f"Filler tool {i}. " + body[: max(0, description_bytes - 16)],
            (McpProperty("level", "integer", default=1, minimum=0, maximum=10),),
            lambda _args: True,
        )
        for i in range(count)
    ]


@dataclass(slots=True)
class McpRequest:
    """One `mcp` payload received from the server, and what the device did with it."""

    t: float
    payload: Any
    method: str | None
    id: int | None
    reply: dict[str, Any] | None = None
    ignored: str | None = None  # why the firmware would drop it silently


@dataclass(slots=True)
class DeviceMcpServer:
    tools: list[McpTool]
    status: DeviceStatus = field(default_factory=DeviceStatus)
    board_name: str = "bread-compact-wifi"
    firmware_version: str = "2.4.2"
    page_limit: int = MAX_TOOLS_LIST_PAYLOAD
    vision_url: str | None = None
    vision_token: str | None = None
    requests: list[McpRequest] = field(default_factory=list)

    @classmethod
    def with_defaults(cls, extra_tools: Iterable[McpTool] = (), **kwargs: Any) -> DeviceMcpServer:
        status = kwargs.pop("status", None) or DeviceStatus()
        return cls(tools=default_tools(status) + list(extra_tools), status=status, **kwargs)

    @property
    def calls(self) -> list[McpRequest]:
        """Every `tools/call` the device answered (ignored ones excluded)."""
        return [r for r in self.requests if r.method == "tools/call" and r.ignored is None]

    def handle(self, payload: Any, t: float | None = None) -> str | None:
        """Process one JSON-RPC payload; return the reply payload text the firmware would send,
        or None when the firmware stays silent."""
        request = McpRequest(t if t is not None else time.monotonic(), payload, None, None)
        self.requests.append(request)
        reply = self._dispatch(payload, request)
        if reply is not None:
            request.reply = json.loads(reply)
        return reply

    def handle_obj(self, payload: Any) -> dict[str, Any] | None:
        reply = self.handle(payload)
        return json.loads(reply) if reply is not None else None

    def _dispatch(self, payload: Any, request: McpRequest) -> str | None:
        if not isinstance(payload, dict) or payload.get("jsonrpc") != "2.0":
            request.ignored = "jsonrpc is not the string '2.0'"
            return None
        method = payload.get("method")
        if not isinstance(method, str):
            request.ignored = "no string method (a response sent to the device?)"
            return None
        request.method = method
        if method.startswith("notifications"):
            request.ignored = "notification"
            return None
        # "params": null is present-but-not-an-object for cJSON, hence the key test.
        if "params" in payload and not isinstance(payload["params"], dict):
            request.ignored = "params is not an object"
            return None
        params: dict[str, Any] | None = payload.get("params")
        raw_id = payload.get("id")
        if not _is_number(raw_id):
            request.ignored = "id is not a JSON number"
            return None
        rid = _valueint(raw_id)
        request.id = rid

        if method == "initialize":
            return self._initialize(rid, params)
        if method == "tools/list":
            cursor = ""
            with_user = False
            if params is not None:
                if isinstance(params.get("cursor"), str):
                    cursor = params["cursor"]
                if isinstance(params.get("withUserTools"), bool):
                    with_user = params["withUserTools"]
            return self.tools_list(rid, cursor, with_user)
        if method == "tools/call":
            return self._tools_call(rid, params)
        return self._error(rid, f"Method not implemented: {method}")

    def _result(self, rid: int, result_json: str) -> str:
        return '{"jsonrpc":"2.0","id":' + str(rid) + ',"result":' + result_json + "}"

    def _error(self, rid: int, message: str) -> str:
        return '{"jsonrpc":"2.0","id":' + str(rid) + ',"error":{"message":' + _cjson(message) + "}}"

    def _initialize(self, rid: int, params: dict[str, Any] | None) -> str:
        capabilities = params.get("capabilities") if params else None
        vision = capabilities.get("vision") if isinstance(capabilities, dict) else None
        if isinstance(vision, dict) and isinstance(vision.get("url"), str):
            self.vision_url = vision["url"]
            token = vision.get("token")
            self.vision_token = token if isinstance(token, str) else ""
        return self._result(rid, '{"protocolVersion":"2024-11-05","capabilities":{"tools":{}},'
                                 '"serverInfo":{"name":' + _cjson(self.board_name)
                            + ',"version":' + _cjson(self.firmware_version) + "}}")

    def tools_list(self, rid: int, cursor: str = "", with_user_tools: bool = False) -> str:
        """McpServer::GetToolsList, including its size arithmetic (bytes, not characters)."""
        body = '{"tools":['
        size = len(body)
        found_cursor = cursor == ""
        next_cursor = ""
        for tool in self.tools:
            if not found_cursor:
                if tool.name != cursor:
                    continue
                found_cursor = True
            if tool.user_only and not with_user_tools:
                continue
            tool_json = tool.to_json() + ","
            tool_size = len(tool_json.encode("utf-8"))
            if size + tool_size + _TOOLS_LIST_SLACK > self.page_limit:
                next_cursor = tool.name
                break
            body += tool_json
            size += tool_size
        body = body.removesuffix(",")
        if body.endswith("[") and self.tools:
            # Nothing fitted (or the cursor named no tool): the firmware answers with an error.
            return self._error(rid, f"Failed to add tool {next_cursor} because of payload size limit")
        if next_cursor:
            body += '],"nextCursor":' + _cjson(next_cursor) + "}"
        else:
            body += "]}"
        return self._result(rid, body)

    def _tools_call(self, rid: int, params: dict[str, Any] | None) -> str:
        if params is None:
            return self._error(rid, "Missing params")
        name = params.get("name")
        if not isinstance(name, str):
            return self._error(rid, "Missing name")
        arguments = params.get("arguments")
        if "arguments" in params and not isinstance(arguments, dict):
            return self._error(rid, "Invalid arguments")
        tool = next((t for t in self.tools if t.name == name), None)
        if tool is None:
            return self._error(rid, f"Unknown tool: {name}")
        values: dict[str, Any] = {}
        try:
            for prop in tool.properties:
                found, value = prop.coerce(arguments)
                if not found and not prop.has_default:
                    return self._error(rid, f"Missing valid argument: {prop.name}")
                values[prop.name] = value
        except ValueError as exc:
            return self._error(rid, str(exc))
        try:
            value = tool.handler(values) if tool.handler is not None else True
        except Exception as exc:  # a tool's exception text becomes the error message
            return self._error(rid, str(exc))
        return self._result(rid, _call_result(value))


def _call_result(value: ToolValue) -> str:
    # McpTool::Call: bool -> "true"/"false", int -> decimal, str as is, JSON -> its text.
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        text = _cjson(value)
    return '{"content":[{"type":"text","text":' + _cjson(text) + '}],"isError":false}'
