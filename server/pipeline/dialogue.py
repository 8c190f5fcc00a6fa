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

    def messages(self, system: str, user_text: str, context: str = "", token_budget: int = 0) -> list[ChatMessage]:
        """`system` is the stable persona (first, so providers can cache the prompt prefix);
        `context` is what changes (date, time, memory) and goes in a second system message.
        With a `token_budget`, the oldest exchanges are left out until the history fits."""
        out = [ChatMessage("system", system)]
        if context:
            out.append(ChatMessage("system", context))
        exchanges = self.exchanges
        if token_budget > 0:
            kept: list[Exchange] = []
            used = 0
            for ex in reversed(exchanges):
                cost = estimate_tokens(ex.user) + estimate_tokens(ex.assistant) + 8
                if used + cost > token_budget:
                    break
                kept.append(ex)
                used += cost
            exchanges = kept[::-1]
        for ex in exchanges:
            out.append(ChatMessage("user", ex.user))
            out.append(ChatMessage("assistant", history_reply(ex)))
        out.append(ChatMessage("user", user_text))
        return out


# How an interrupted reply appears in the prompt. Models copy bracketed annotations they see in
# their own past turns ("[interrupted by the user before answering]" was spoken aloud to a
# py-xiaozhi user), so the history shows only what was said, cut off with an ellipsis, the way a
# transcript of an interruption reads; an ellipsis copied into a reply is not speakable and the
# sentence splitter drops it. Roles still alternate (some chat templates require it).
CUT_OFF = "…"


def history_reply(ex: Exchange) -> str:
    if not ex.interrupted:
        return ex.assistant
    reply = ex.assistant.rstrip()
    return f"{reply}{CUT_OFF}" if reply else CUT_OFF


def estimate_tokens(text: str) -> int:
    """Cheap token estimate that needs no tokenizer: CJK characters are about one token each,
    other text about four characters per token."""
    cjk = sum(1 for ch in text if "\u3400" <= ch <= "\u9fff")
    return cjk + (len(text) - cjk + 3) // 4


def build_context(language: str, *, summary: str = "", capabilities: list[str] | None = None,
                  now: dt.datetime | None = None) -> str:
    """The changing part of the prompt: time, what we remember, what the device can do."""
    parts = [time_context(language, now)]
    if summary:
        label = "你记得关于用户的这些事：" if language == "zh" else "What you remember about the user: "
        parts.append(label + summary)
    if capabilities:
        label = "设备可以：" if language == "zh" else "The device can: "
        parts.append(label + "; ".join(capabilities))
    return "\n".join(parts)


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
