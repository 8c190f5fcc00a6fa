"""Ending the conversation when the user says so ("再见", "退出", "that's all, bye").

The session's own exit phrases catch the exact words; this tool catches the rest ("好了不聊了,
拜拜", "I'm done for today") through the model, and lets it say a fitting goodbye.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from server.plugin_api import EndSession, ToolContext, settings_of, tool, tr


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Said when the model gives no farewell of its own.
    goodbye_zh: str = "好的，再见，有需要随时叫我。"
    goodbye_en: str = "Okay, goodbye. Call me any time."
    # Longer farewells from the model are cut here: the device is about to go idle.
    max_chars: int = Field(default=60, ge=10, le=300)


@tool(timeout=3)
async def end_conversation(ctx: ToolContext, farewell: str = "") -> EndSession:
    """End the conversation and put the device back to sleep. Call ONLY when the user clearly
    wants to stop talking now, e.g. "再见", "拜拜", "退出", "不聊了", "goodbye", "that's all, bye",
    "stop, I'm done". Do NOT call for thanks, for goodbyes said to someone else, for a pause,
    or when the user only asks a question about leaving.

    Args:
        farewell: a short goodbye in the user's language (one sentence); empty for the default.
    """
    s = settings_of(ctx, Settings)
    text = " ".join(farewell.split())
    limit = s.max_chars
    if len(text) > limit:
        text = text[:limit].rstrip() + ("…" if ctx.language.startswith("zh") else "...")
    if not text:
        text = tr(ctx, s.goodbye_zh, s.goodbye_en)
    return EndSession(text)
