"""What a tool is, what it returns, and the context it runs in.

Every source of tools (plugins in plugins/, the device's own MCP tools, legacy IoT devices,
external MCP servers) exposes `ToolSpec`s and answers `call()` with a `ToolResult`. The turn
never knows where a tool came from: a per-session `Toolbox` (toolbox.py) maps the names the LLM
sees back to the source and runs calls with timeouts. Tools never touch the socket: they return
what should happen (give data to the LLM, say a text, end the session, play audio).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_tool_name(name: str) -> str:
    """OpenAI-style function names allow [A-Za-z0-9_-], at most 64 characters; MCP names such as
    `self.audio_speaker.set_volume` do not fit, so dots and other characters become `_`."""
    clean = _NAME_OK.sub("_", name).strip("_") or "tool"
    return clean[:64]


def object_schema(schema: Any) -> dict[str, Any]:
    """A tool's JSON Schema as an OpenAI `parameters` object: always `type: object` with a
    `properties` mapping; an empty or malformed `required` list is dropped, since some
    validators reject it. Device and MCP servers send all kinds of almost-right schemas."""
    if not isinstance(schema, dict):
        return {"type": "object", "properties": {}}
    out = dict(schema)
    out["type"] = "object"
    if not isinstance(out.get("properties"), dict):
        out["properties"] = {}
    if "required" in out and not (isinstance(out["required"], list) and out["required"]):
        del out["required"]
    return out


@dataclass(slots=True)
class ToolSpec:
    name: str  # as the source knows it (may contain dots)
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = 10.0
    # Cancel the call when the user interrupts the turn (an abort or barge-in). A tool that
    # changes the world (switching a light) may prefer to finish.
    cancel_on_interruption: bool = True

    def openai_schema(self, exposed_name: str | None = None) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": exposed_name or sanitize_tool_name(self.name),
            "description": self.description,
            "parameters": self.parameters or {"type": "object", "properties": {}},
        }}


class ToolAction(Enum):
    REPLY_LLM = "reply_llm"  # give `text` (data) back to the LLM, which then answers the user
    SPEAK = "speak"  # say `text` to the user as is; no further LLM round
    END_SESSION = "end_session"  # say `text` (if any), then end the session
    PLAY_AUDIO = "play_audio"  # say `text` (if any), then play `audio` (music); no LLM round


@dataclass(slots=True)
class ToolResult:
    action: ToolAction = ToolAction.REPLY_LLM
    text: str = ""
    # PLAY_AUDIO: PCM16 mono chunks at `audio_rate`; the session resamples, encodes and paces it.
    audio: AsyncIterator[bytes] | None = None
    audio_rate: int = 0
    is_error: bool = False

    @classmethod
    def error(cls, message: str) -> ToolResult:
        return cls(action=ToolAction.REPLY_LLM, text=f"Error: {message}", is_error=True)


class KeyValueStore(Protocol):
    """Small persistent per-user values (a chosen persona, preferences)."""

    async def get_value(self, user_id: str, key: str) -> str | None: ...

    async def set_value(self, user_id: str, key: str, value: str | None) -> None: ...


@dataclass(slots=True)
class ToolContext:
    """What a tool may know about the conversation it runs in. Built per call by the session."""

    device_id: str
    user_id: str  # memory identity: the device id unless config maps several devices to one user
    session_id: str
    language: str  # assistant language: "en" | "zh"
    # This plugin's validated `Settings` model (its section of config.yaml); None when the plugin
    # defines no Settings or the call comes from outside the plugin loader.
    settings: BaseModel | None = None
    storage: KeyValueStore | None = None
    http: Any = None  # a shared aiohttp.ClientSession (created lazily by the server)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. "music_dir", set by the server


@runtime_checkable
class ToolSource(Protocol):
    """A provider of tools. `specs()` may change over time (a device adds MCP tools after hello);
    the toolbox asks again before each LLM call."""

    name: str

    def specs(self) -> list[ToolSpec]: ...

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult: ...
