"""What a tool may return, and how each value maps onto the action the conversation takes.

- `str`, `dict`, `list` (JSON-encoded), numbers: data for the LLM, which then answers (REPLY_LLM);
- `Say(text)`: say `text` as is, no further LLM round (SPEAK);
- `EndSession(text)`: say `text` (if any), then close the session (END_SESSION);
- `PlayAudio(chunks, sample_rate, text)`: say `text`, then play PCM16 mono chunks (PLAY_AUDIO);
- a `ToolResult`: passed through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.tools.base import ToolAction, ToolResult


@dataclass(slots=True, frozen=True)
class Say:
    """Say `text` to the user verbatim; the LLM gets no further round for this call."""

    text: str


@dataclass(slots=True, frozen=True)
class EndSession:
    """Say `text` (if any), then end the session (the device goes back to idle)."""

    text: str = ""


@dataclass(slots=True)
class PlayAudio:
    """Say `text` (if any), then play `chunks` (PCM16 mono at `sample_rate`).

    The session pulls the chunks while it paces the audio out; when the user interrupts it
    closes the iterator (`aclose()`), so an async generator's `finally` is where a plugin
    releases its decoder or file.
    """

    chunks: AsyncIterator[bytes]
    sample_rate: int
    text: str = ""


def to_tool_result(value: Any) -> ToolResult:
    """Map whatever a tool returned onto the action the session takes."""
    if isinstance(value, ToolResult):
        return value
    if isinstance(value, Say):
        return ToolResult(action=ToolAction.SPEAK, text=value.text)
    if isinstance(value, EndSession):
        return ToolResult(action=ToolAction.END_SESSION, text=value.text)
    if isinstance(value, PlayAudio):
        if value.sample_rate <= 0:
            return ToolResult.error("the tool returned audio without a valid sample rate")
        return ToolResult(action=ToolAction.PLAY_AUDIO, text=value.text, audio=value.chunks,
                          audio_rate=value.sample_rate)
    if isinstance(value, str):
        return ToolResult(text=value)
    if value is None:
        # The model needs some answer to continue; "done" reads naturally in its context.
        return ToolResult(text="done")
    if isinstance(value, dict | list | tuple | int | float | bool):
        try:
            return ToolResult(text=json.dumps(value, ensure_ascii=False, default=str))
        except ValueError as exc:  # circular structures
            return ToolResult.error(f"the tool's result could not be encoded as JSON: {exc}")
    return ToolResult.error(f"the tool returned an unsupported value of type {type(value).__name__}")
