"""Legacy IoT (firmware <= 1.7, `CONFIG_IOT_PROTOCOL_XIAOZHI`): "things" with methods and states.

Right after the audio channel opens the device sends one `iot` message per descriptor
(`update: true`), then its states; before each `listen start` it sends the states that changed.
Each method of each thing becomes a tool (`iot_Speaker_SetVolume`), and `iot_get_state` reports
the last known states. Commands go out as `{"type":"iot","commands":[...]}`; the firmware sends
no reply, only a later state update, so a call reports that the command was sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.tools.base import ToolContext, ToolResult, ToolSpec, sanitize_tool_name

log = logging.getLogger("server.devices.iot")

# The session's `send_iot_commands(commands)`: wraps the list in {"type":"iot","commands":...}.
SendCommands = Callable[[list[dict[str, Any]]], Awaitable[None]]

STATE_TOOL = "iot_get_state"
_JSON_TYPES = {"number": "number", "string": "string", "boolean": "boolean"}


@dataclass(slots=True)
class _Param:
    name: str
    type: str  # number | string | boolean
    description: str


@dataclass(slots=True)
class _Method:
    thing: str
    method: str
    description: str
    params: list[_Param] = field(default_factory=list)


@dataclass(slots=True)
class _Thing:
    name: str
    description: str
    properties: dict[str, tuple[str, str]]  # property -> (type, description)
    methods: dict[str, _Method]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _parse_descriptor(desc: dict[str, Any]) -> _Thing | None:
    name = desc.get("name")
    if not isinstance(name, str) or not name:
        return None
    properties: dict[str, tuple[str, str]] = {}
    raw_props = desc.get("properties")
    if isinstance(raw_props, dict):
        for pname, prop in raw_props.items():
            if isinstance(prop, dict):
                properties[pname] = (_JSON_TYPES.get(prop.get("type"), "string"), _text(prop.get("description")))
    methods: dict[str, _Method] = {}
    raw_methods = desc.get("methods")
    if isinstance(raw_methods, dict):
        for mname, method in raw_methods.items():
            if not isinstance(method, dict):
                continue
            params = []
            raw_params = method.get("parameters")
            if isinstance(raw_params, dict):
                for pname, param in raw_params.items():
                    if isinstance(param, dict):
                        params.append(_Param(pname, _JSON_TYPES.get(param.get("type"), "string"),
                                             _text(param.get("description"))))
            methods[mname] = _Method(name, mname, _text(method.get("description")), params)
    return _Thing(name, _text(desc.get("description")), properties, methods)


def _coerce(value: Any, kind: str) -> tuple[bool, Any]:
    """Arguments as the firmware's cJSON checks want them (numbers must be JSON numbers)."""
    if kind == "boolean":
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return True, value.strip().lower() == "true"
        return False, None
    if kind == "number":
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int | float):
            return True, value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False, None
            return True, int(number) if number.is_integer() else number
        return False, None
    if isinstance(value, str):
        return True, value
    if isinstance(value, int | float | bool):
        return True, json.dumps(value)
    return False, None


class IotTools:
    """A legacy device's things as a ToolSource (name "iot")."""

    name = "iot"

    def __init__(self, send: SendCommands, *, timeout_s: float = 5.0, tag: str = "device",
                 max_things: int = 32, max_bytes: int = 65536) -> None:
        self._send = send
        # `update: true` descriptors add up over a session, and every method is a tool in every
        # LLM request: bounded in count and in total descriptor bytes.
        self.max_things = max_things
        self.max_bytes = max_bytes
        self._thing_bytes: dict[str, int] = {}
        self.refused = 0
        self.timeout_s = timeout_s
        self.tag = tag
        self._things: dict[str, _Thing] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self._tools: dict[str, _Method] = {}

    def on_message(self, msg: dict[str, Any]) -> None:
        """An `iot` message from the device (descriptors and/or states). Never raises."""
        try:
            self._on_message(msg)
        except Exception:  # noqa: BLE001 - a malformed message must not reach the session
            log.exception("[%s] iot: could not handle %.200s", self.tag, msg)

    def _on_message(self, msg: dict[str, Any]) -> None:
        descriptors = msg.get("descriptors")
        if isinstance(descriptors, list):
            if msg.get("update") is not True and descriptors:
                # A full announcement replaces what we knew; the firmware sends one message per
                # thing with update=true, which adds to it.
                self._things.clear()
                self._thing_bytes.clear()
            for desc in descriptors:
                thing = _parse_descriptor(desc) if isinstance(desc, dict) else None
                if thing is None:
                    log.info("[%s] iot: descriptor without a name: %.200s", self.tag, desc)
                    continue
                size = len(json.dumps(desc, ensure_ascii=False, default=str))
                others = sum(v for k, v in self._thing_bytes.items() if k != thing.name)
                if (thing.name not in self._things and len(self._things) >= self.max_things) \
                        or others + size > self.max_bytes:
                    if self.refused == 0:
                        log.warning("[%s] iot: more than %d things / %d bytes of descriptors: ignoring the rest",
                                    self.tag, self.max_things, self.max_bytes)
                    self.refused += 1
                    continue
                self._things[thing.name] = thing
                self._thing_bytes[thing.name] = size
            self._rebuild()
            log.info("[%s] iot: things %s", self.tag, ", ".join(self._things) or "none")
        states = msg.get("states")
        if isinstance(states, list):
            for entry in states:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    continue
                state = entry.get("state")
                if isinstance(state, dict):
                    # States arrive as deltas (only what changed since the last report).
                    self.states.setdefault(entry["name"], {}).update(state)

    def _rebuild(self) -> None:
        tools: dict[str, _Method] = {}
        for thing in self._things.values():
            for method in thing.methods.values():
                name = sanitize_tool_name(f"iot_{thing.name}_{method.method}")
                if name == STATE_TOOL or name in tools:
                    log.info("[%s] iot: tool name %s used twice; %s.%s not offered", self.tag, name,
                             thing.name, method.method)
                    continue
                tools[name] = method
        self._tools = tools

    # ------------------------------------------------------------------ ToolSource

    def specs(self) -> list[ToolSpec]:
        if not self._things:
            return []
        specs: list[ToolSpec] = []
        for name, method in self._tools.items():
            thing = self._things[method.thing]
            description = method.description or f"{method.method} on {thing.name}"
            if thing.description:
                description = f"{description} ({thing.name}: {thing.description})"
            props = {p.name: {"type": p.type, "description": p.description} if p.description else {"type": p.type}
                     for p in method.params}
            params: dict[str, Any] = {"type": "object", "properties": props}
            if method.params:
                params["required"] = [p.name for p in method.params]
            specs.append(ToolSpec(name=name, description=description, parameters=params,
                                  timeout_s=self.timeout_s, cancel_on_interruption=False))
        specs.append(ToolSpec(
            name=STATE_TOOL,
            description="Current state of the connected device's things (" + ", ".join(self._things) + "), "
                        "e.g. the speaker volume. Call it before changing a value relative to the current one.",
            parameters={"type": "object", "properties": {
                "thing": {"type": "string", "description": "only this thing; empty for all"}}},
            timeout_s=self.timeout_s))
        return specs

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        if name == STATE_TOOL:
            return self._state_result(arguments.get("thing"))
        method = self._tools.get(name)
        if method is None:
            return ToolResult.error(f"the device has no IoT method {name!r}")
        parameters: dict[str, Any] = {}
        for param in method.params:
            if param.name not in arguments:
                return ToolResult.error(f"missing argument {param.name!r} ({param.type})")
            ok, value = _coerce(arguments[param.name], param.type)
            if not ok:
                return ToolResult.error(f"argument {param.name!r} must be a {param.type}, "
                                        f"got {arguments[param.name]!r}")
            parameters[param.name] = value
        command = {"name": method.thing, "method": method.method, "parameters": parameters}
        try:
            await self._send([command])
        except Exception as exc:  # noqa: BLE001 - a closed socket becomes an error result
            log.warning("[%s] iot: sending %s.%s failed: %s", self.tag, method.thing, method.method, exc)
            return ToolResult.error(f"could not send the command to the device: {exc}")
        args = ", ".join(f"{k}={v!r}" for k, v in parameters.items())
        log.info("[%s] iot: sent %s.%s(%s)", self.tag, method.thing, method.method, args)
        return ToolResult(text=f"The command {method.thing}.{method.method}({args}) was sent to the device. "
                               "The device does not confirm commands; assume it was carried out.")

    def _state_result(self, thing: Any) -> ToolResult:
        names = [thing] if isinstance(thing, str) and thing in self._things else list(self._things)
        out: dict[str, Any] = {}
        for name in names:
            state = self.states.get(name, {})
            props = self._things[name].properties
            out[name] = {key: ({"value": value, "description": props[key][1]} if key in props and props[key][1]
                               else value) for key, value in state.items()}
        return ToolResult(text=json.dumps(out, ensure_ascii=False))
