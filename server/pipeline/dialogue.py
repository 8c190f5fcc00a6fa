"""Per-session dialogue: what was said, and the LLM messages built from it.

History keeps what the user heard, not what the model wrote: a reply cut off by an abort is
stored as the sentences that were actually sent, marked as interrupted, so the model does not
believe it said things the user never heard.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from server.providers.base import ChatMessage

LANGUAGE_RULE = {
    "en": "Always answer in English.",
    "zh": "请始终用简体中文回答，口语化，简短。",
}


@dataclass(slots=True)
class Exchange:
    user: str
    assistant: str
    interrupted: bool = False


@dataclass(slots=True)
class Dialogue:
    max_turns: int = 8
    exchanges: list[Exchange] = field(default_factory=list)

    def add(self, user: str, assistant: str, interrupted: bool = False) -> None:
        if not user and not assistant:
            return
        self.exchanges.append(Exchange(user, assistant, interrupted))
        if self.max_turns >= 0 and len(self.exchanges) > self.max_turns:
            del self.exchanges[: len(self.exchanges) - self.max_turns]

    def messages(self, system: str, user_text: str, context: str = "") -> list[ChatMessage]:
        """`system` is the stable persona (first, so providers can cache the prompt prefix);
        `context` is what changes (date, time, memory) and goes in a second system message."""
        out = [ChatMessage("system", system)]
        if context:
            out.append(ChatMessage("system", context))
        for ex in self.exchanges:
            out.append(ChatMessage("user", ex.user))
            reply = ex.assistant
            if ex.interrupted:
                reply = f"{reply} [interrupted by the user]" if reply else "[interrupted by the user before answering]"
            out.append(ChatMessage("assistant", reply))
        out.append(ChatMessage("user", user_text))
        return out


def system_prompt(template: str, name: str, language: str) -> str:
    text = template.replace("{name}", name).strip()
    rule = LANGUAGE_RULE.get(language, "")
    return f"{text} {rule}".strip()


def time_context(language: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    if language == "zh":
        weekday = "一二三四五六日"[now.weekday()]
        return f"现在是{now:%Y年%m月%d日}，星期{weekday}，{now:%H:%M}。"
    return f"It is {now:%A, %B %d, %Y}, {now:%H:%M}."
