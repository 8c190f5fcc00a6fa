"""Switching the assistant's role ("你是一个海盗", "从现在开始你叫小美", "change your role to a
pirate"), kept per user in the memory store under the key "persona".

The session reads that key when it builds the system prompt, where the stored text replaces the
configured persona, so it is written as a role description ("你是…" / "You are …"). Switching
back is `reset_persona`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from server.plugin_api import Say, ToolContext, ToolResult, settings_of, tool, tr

KEY = "persona"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Longest persona text stored: it goes into every system prompt of this user.
    max_chars: int = Field(default=400, ge=20, le=4000)


def _no_storage(ctx: ToolContext) -> ToolResult:
    return ToolResult.error(tr(ctx, "没有可用的存储（记忆功能已关闭），无法保存角色",
                               "no storage is available (memory is off), so the role cannot be saved"))


@tool(timeout=5)
async def set_persona(ctx: ToolContext, persona: str, name: str = "") -> Say | ToolResult:
    """Change the assistant's role, personality or name for this user from now on. Call only
    when the user explicitly asks you to become someone or something else, e.g. "你是一个海盗",
    "从现在开始你叫小美", "扮演一个英语老师", "change your role to a pirate", "pretend to be my
    teacher". Do NOT call for questions like "你是谁" / "who are you".

    Args:
        persona: the new role as a short second-person description in the user's language,
            e.g. "你是一个说话很温柔的英语老师，名叫小美。" or "You are a grumpy pirate named Jack."
        name: the new name if the user gave one, else empty.
    """
    text = " ".join(persona.split())
    if not text:
        return ToolResult.error("persona is empty; describe the role, e.g. 你是一个海盗")
    if ctx.storage is None:
        return _no_storage(ctx)
    limit = settings_of(ctx, Settings).max_chars
    text = text[:limit]
    await ctx.storage.set_value(ctx.user_id, KEY, text)
    name = name.strip()
    if name:
        return Say(tr(ctx, f"好的，从现在起我就是{name}啦。", f"Okay, from now on I'm {name}."))
    return Say(tr(ctx, "好的，角色已经切换。", "Okay, I've switched to the new role."))


@tool(timeout=5)
async def reset_persona(ctx: ToolContext) -> Say | ToolResult:
    """Go back to the assistant's default role. Call only when the user asks to undo a role
    change, e.g. "恢复默认角色", "变回原来的你", "be yourself again", "reset your role".
    """
    if ctx.storage is None:
        return _no_storage(ctx)
    await ctx.storage.set_value(ctx.user_id, KEY, None)
    return Say(tr(ctx, "好的，我已恢复默认角色。", "Okay, I'm back to my usual self."))
