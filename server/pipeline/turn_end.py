"""Adaptive end of turn: how much silence to wait for, given what the user has said so far.

A fixed silence window is a compromise: long enough not to cut people off when they pause
mid-sentence ("turn on the light in the kitchen and ... the hall"), short enough not to make
every finished question wait. The transcript of the speech so far (transcribed the moment the
silence starts) tells the two apart well enough for a rule:

* it trails off: it ends with a conjunction, a preposition, an article, a filler ("um", "嗯",
  "然后", "那个"), a comma or an ellipsis -> the LONG window: the user is most likely still
  thinking of the rest;
* it reads as finished: a question or sentence mark, or (without punctuation, which some ASR
  engines omit) at least `MIN_WORDS_FINISHED` words ending in a word that can end a request ->
  the SHORT window;
* anything else (one word, an empty or unrecognised transcript) -> the configured default.

Pure function on text; the listener applies the window to the silence it is counting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class TurnEnd(Enum):
    SHORT = "short"  # reads as a finished request
    DEFAULT = "default"  # cannot tell
    LONG = "long"  # trails off: more is coming


@dataclass(slots=True, frozen=True)
class TurnEndWindows:
    short_ms: int = 300
    default_ms: int = 500
    long_ms: int = 1000

    def for_decision(self, decision: TurnEnd) -> int:
        if decision is TurnEnd.SHORT:
            return self.short_ms
        if decision is TurnEnd.LONG:
            return self.long_ms
        return self.default_ms


MIN_WORDS_FINISHED = 3

# Words after which an English sentence cannot be over.
# Words after which an English sentence is (almost) never over. Words that often end a
# request ("on", "it", "for", "from", "can", "is") are deliberately not here.
_EN_TRAILING = frozenset((
    "and", "or", "but", "because", "than", "if", "when", "while", "whereas", "although", "though", "unless",
    "until", "since", "the", "a", "an", "my", "your", "his", "her", "our", "their", "every", "each", "to",
    "of", "with", "about", "into", "onto", "between", "through", "including", "especially", "such", "as",
    "um", "uh", "er", "erm", "hmm",
))
# Two-word endings that trail off even though their last word could end a sentence.
_EN_TRAILING_PAIRS = frozenset({("and", "then"), ("and", "also"), ("or", "maybe"), ("kind", "of"), ("sort", "of"),
                                ("you", "know"), ("i", "mean"), ("as", "well"), ("such", "as")})
# Chinese endings (the transcript's last characters) that leave the sentence open.
_ZH_TRAILING = ("然后", "还有", "就是", "那个", "这个", "因为", "所以", "但是", "而且", "或者", "还是", "如果",
                "和", "跟", "与", "或", "的话", "比如", "嗯", "呃", "额", "那", "把", "给", "在", "从", "对", "要",
                "想", "帮我", "请", "我想", "我要")
_ZH_FINISHED = ("吗", "呢", "吧", "了", "啊", "呀", "嘛")
_CJK = re.compile(r"[\u3400-\u9fff]")
_FINAL_MARK = re.compile(r"[.?!。？！]+[\"'”’)）]*$")
_OPEN_MARK = re.compile(r"(\.\.\.|…|,|，|、|;|；|:|：|-|—)+$")
_WORD = re.compile(r"[a-z']+")


def classify(transcript: str) -> TurnEnd:
    text = transcript.strip()
    if not text:
        return TurnEnd.DEFAULT
    if _OPEN_MARK.search(text):
        return TurnEnd.LONG
    if _CJK.search(text):
        return _classify_zh(text)
    words = _WORD.findall(text.lower())
    if not words:
        return TurnEnd.DEFAULT
    if words[-1] in _EN_TRAILING or tuple(words[-2:]) in _EN_TRAILING_PAIRS:
        return TurnEnd.LONG
    if _FINAL_MARK.search(text) or len(words) >= MIN_WORDS_FINISHED:
        return TurnEnd.SHORT
    return TurnEnd.DEFAULT


def _classify_zh(text: str) -> TurnEnd:
    core = re.sub(r"[\s.?!。？！\"'”’)）]+$", "", text)
    if core.endswith(_ZH_TRAILING):
        return TurnEnd.LONG
    if _FINAL_MARK.search(text) or core.endswith(_ZH_FINISHED):
        return TurnEnd.SHORT
    return TurnEnd.SHORT if len(_CJK.findall(core)) >= 4 else TurnEnd.DEFAULT


def silence_window_ms(transcript: str, windows: TurnEndWindows) -> int:
    return windows.for_decision(classify(transcript))
