"""Fixed things the server says itself, in each assistant language."""

from __future__ import annotations

PHRASES: dict[str, dict[str, str]] = {
    "goodbye": {"en": "Goodbye, talk to you soon.", "zh": "好的，再见，有需要再叫我。"},
    "idle_goodbye": {"en": "I haven't heard from you for a while, so I'll hang up now. Goodbye.",
                     "zh": "好久没听到你说话了，我先挂断啦，再见。"},
    "asr_failed": {"en": "Sorry, I couldn't understand that. Please try again.",
                   "zh": "抱歉，我没听清，请再说一遍。"},
    "llm_failed": {"en": "Sorry, my brain is not answering right now. Please try again in a moment.",
                   "zh": "抱歉，我现在有点卡住了，请稍后再试。"},
}


def phrase(key: str, language: str) -> str:
    table = PHRASES[key]
    return table.get(language) or table["en"]
