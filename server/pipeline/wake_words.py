"""Wake words: recognise them in `listen detect` text, typed text and transcripts.

A wake word is how a client says "I am listening now", never a question: the firmware sends the
wake-word engine's name (`你好小智`), the reference server's browser page sends `嘿，你好呀` right
after hello, and a transcript of the audio just after waking often is the wake word again. So a
text that is only a wake word starts nothing; a wake word in front of a question is removed and
the rest answered. Matching ignores punctuation, spaces and case (`嘿，你好呀` = `嘿你好呀`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    return _PUNCT.sub("", text).lower()


class WakeWords:
    def __init__(self, words: Iterable[str]) -> None:
        self.words = {w for w in (normalize(x) for x in words) if w}
        # Longest first, so "你好小智" wins over a shorter word it starts with.
        self._by_length = sorted(self.words, key=len, reverse=True)

    def is_wake_word(self, text: str) -> bool:
        """The whole text (punctuation aside) is one wake word, possibly said twice."""
        rest = normalize(text)
        if not rest:
            return False
        while rest:
            word = next((w for w in self._by_length if rest.startswith(w)), None)
            if word is None:
                return False
            rest = rest[len(word):]
        return True

    def strip_leading(self, text: str) -> str:
        """`text` without a wake word at its start ("你好小智，几点了" -> "几点了"); unchanged when
        it does not start with one; "" when it is nothing but wake words."""
        if self.is_wake_word(text):
            return ""
        for word in self._by_length:
            cut = _prefix_end(text, word)
            if cut is not None:
                rest = text[cut:].lstrip(" \t,.!?;:，。！？；：、")
                return rest if normalize(rest) else ""
        return text


def _prefix_end(text: str, word: str) -> int | None:
    """Index in `text` just past a prefix that normalizes to `word`, or None."""
    matched = 0
    for i, ch in enumerate(text):
        n = normalize(ch)
        if not n:
            continue
        if not word.startswith(n, matched):
            return None
        matched += len(n)
        if matched == len(word):
            return i + 1
    return None
