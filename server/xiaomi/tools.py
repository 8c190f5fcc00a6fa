"""A speaker's own device tools, offered to the LLM like a board's MCP tools: volume and stop."""

from __future__ import annotations

from typing import Any

from server.tools.base import ToolAction, ToolContext, ToolResult, ToolSpec
from server.xiaomi.errors import XiaomiError
from server.xiaomi.speaker import SpeakerControl


class SpeakerTools:
    name = "xiaomi_speaker"

    def __init__(self, control: SpeakerControl, language: str = "zh") -> None:
        self.control = control
        self.language = language
        self._specs = [
            ToolSpec("speaker_set_volume", "Set the speaker's volume (0-100). 设置音箱音量。",
                     {"type": "object", "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100,
                                                                   "description": "new volume, 0-100"}},
                      "required": ["volume"]}, timeout_s=10),
            ToolSpec("speaker_get_volume", "Read the speaker's current volume (0-100). 查询音箱音量。", timeout_s=10),
            ToolSpec("speaker_stop", "Stop whatever the speaker is playing. 停止音箱播放。", timeout_s=10,
                     cancel_on_interruption=False),
        ]

    @property
    def ready(self) -> bool:
        return True

    async def wait_ready(self, timeout: float) -> bool:
        return True

    def specs(self) -> list[ToolSpec]:
        return list(self._specs)

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        try:
            if name == "speaker_set_volume":
                try:
                    volume = max(0, min(100, int(arguments.get("volume", -1))))
                except (TypeError, ValueError):
                    return ToolResult.error("volume must be a number from 0 to 100")
                await self.control.set_volume(volume)
                return ToolResult(ToolAction.REPLY_LLM, f"volume set to {volume}")
            if name == "speaker_get_volume":
                volume = await self.control.volume()
                return ToolResult(ToolAction.REPLY_LLM, f"volume is {volume}" if volume is not None else "unknown")
            if name == "speaker_stop":
                await self.control.stop()
                return ToolResult(ToolAction.SPEAK, "")
        except XiaomiError as exc:
            return ToolResult.error(str(exc))
        return ToolResult.error(f"unknown tool {name}")
