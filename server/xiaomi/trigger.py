"""Which queries the bridge answers, and the continuous-conversation state of one speaker.

- mode `keyword`: a query that starts with one of the keywords (请 / 你 / 帮我 ...) is ours;
  everything else stays with XiaoAi (timers, music, smart-home commands it does well).
- mode `always`: every query is ours, except those XiaoAi already acted on (music it started, a
  device command it ran) without a keyword.
- continuous: after our answer the speaker is woken again; until an exit phrase or
  `followup_timeout_s` without a query, every query is ours whatever the mode.

Pure logic with an injected clock, so it is tested without a speaker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
WAKE_WORD = "小爱同学"

Action = Literal["ignore", "answer", "exit"]


def _plain(text: str) -> str:
    return _PUNCT.sub("", text).lower()


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    text: str = ""  # what goes to the conversation (the query, wake word removed)


@dataclass
class TriggerPolicy:
    mode: Literal["keyword", "always"]
    keywords: tuple[str, ...]
    continuous: bool
    followup_timeout_s: float
    exit_phrases: tuple[str, ...]
    in_followup_until: float = 0.0  # clock time until which a follow-up needs no keyword

    def decide(self, query: str, now: float, xiaoai_acted: bool = False) -> Decision:
        """`xiaoai_acted`: XiaoAi already played media or ran a device command for this query;
        without a keyword we do not answer it again on top."""
        text = query.strip()
        if text.startswith(WAKE_WORD):  # "小爱同学，请..." as one record
            text = text[len(WAKE_WORD):].lstrip("，,。 ")
        if not text:
            return Decision("ignore")
        following = self.continuous and now < self.in_followup_until
        if following and _plain(text) in {_plain(p) for p in self.exit_phrases}:
            self.in_followup_until = 0.0
            return Decision("exit", text)
        lowered = text.lower()
        if any(lowered.startswith(k.lower()) for k in self.keywords):
            return Decision("answer", text)
        if xiaoai_acted:
            return Decision("ignore")
        if following or self.mode == "always":
            return Decision("answer", text)
        # XiaoAi handles it; in continuous mode that also ends our conversation.
        self.in_followup_until = 0.0
        return Decision("ignore")

    def answered(self, now: float) -> bool:
        """After our reply: True if the speaker should be woken for a follow-up."""
        if not self.continuous:
            return False
        self.in_followup_until = now + self.followup_timeout_s
        return True

    def following(self, now: float) -> bool:
        return self.continuous and now < self.in_followup_until
