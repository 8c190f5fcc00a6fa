"""Everything a plugin author imports: the `@tool` decorator, result helpers and the context.

A plugin is a module in plugins/ with `async def` functions decorated with `@tool`:

    from server.plugin_api import ToolContext, tool

    @tool(timeout=5)
    async def get_weather(ctx: ToolContext, city: str, days: int = 1) -> str:
        '''Weather for a city. Call only when the user asks about the weather.

        Args:
            city: the city name as the user said it, e.g. 北京 or Berlin.
            days: how many days of forecast, 1 to 3.
        '''
        return f"sunny in {city}"

The JSON Schema the model sees comes from the signature (type hints, defaults) and the docstring
(first paragraph: the tool description; Google-style `Args:` entries: parameter descriptions),
so it cannot drift from the code the way a hand-written schema does. The model's arguments are
checked and coerced against the same signature before the call, and a missing or malformed one
becomes an error result the model can correct, not an exception.

What a tool returns decides what happens next:
- `str`, `dict`, `list` (JSON-encoded), numbers: data for the LLM, which then answers (REPLY_LLM);
- `Say(text)`: say `text` as is, no further LLM round (SPEAK);
- `EndSession(text)`: say `text` (if any), then close the session (END_SESSION);
- `PlayAudio(chunks, sample_rate, text)`: say `text`, then play PCM16 mono chunks (PLAY_AUDIO);
- a `ToolResult`: passed through unchanged.

A module may define `class Settings(pydantic.BaseModel)` for its `plugins.<module>` section of
config.yaml; the loader validates it at startup and hands the validated model to each call as
`ctx.settings` (a copy per call). `settings_of(ctx, Settings)` returns it typed, or the model's
defaults when a tool is called directly (a test, a script):

    s = settings_of(ctx, Settings)
    limit = s.max_chars
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pydantic import BaseModel

from server.tools.base import ToolAction, ToolContext, ToolResult
from server.tools.decorator import Tool, tool
from server.tools.results import EndSession, PlayAudio, Say, to_tool_result
from server.tools.signature import ArgumentError, Param, coerce_arguments

__all__ = [
    "ArgumentError",
    "EndSession",
    "Param",
    "PlayAudio",
    "Say",
    "Tool",
    "ToolAction",
    "ToolContext",
    "ToolResult",
    "coerce_arguments",
    "http_session",
    "settings_of",
    "to_tool_result",
    "tool",
    "tr",
]


S = TypeVar("S", bound=BaseModel)


def settings_of(ctx: ToolContext, model: type[S]) -> S:
    """This plugin's validated settings as its own `Settings` model. A call without settings
    (a tool called directly, outside the plugin loader) gets the model's defaults."""
    settings = ctx.settings
    if settings is None:
        return model()
    if not isinstance(settings, model):
        raise TypeError(f"ctx.settings is a {type(settings).__name__}, not this plugin's {model.__name__}")
    return settings


def tr(ctx: ToolContext, zh: str, en: str) -> str:
    """The user-facing string in the conversation's language (Chinese or English)."""
    return zh if (ctx.language or "").lower().startswith("zh") else en


@asynccontextmanager
async def http_session(ctx: ToolContext) -> AsyncIterator[Any]:
    """The server's shared aiohttp session, or a short-lived one when there is none (tests,
    scripts). Pass a per-request timeout: the shared session's default is generous."""
    if ctx.http is not None:
        yield ctx.http
        return
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session
