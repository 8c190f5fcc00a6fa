"""Pick the `llm` emotion the device shows while it speaks.

The firmware shows a face per emotion name. An emoji in the model's reply decides it (as with
the reference server); without one, the words of the reply do (an apology looks sad, a question
back looks thinking, a joke laughs), and a plain statement looks neutral. The reference server
showed "happy" on every reply without an emoji, which read as grinning through bad news.
"""

from __future__ import annotations

import re

EMOJI_EMOTIONS: dict[str, str] = {
    "😂": "laughing", "😆": "laughing", "😄": "happy", "😊": "happy", "🙂": "happy", "😀": "happy",
    "😃": "happy", "😁": "happy", "😢": "crying", "😭": "crying", "😠": "angry", "😡": "angry",
    "😔": "sad", "😞": "sad", "☹": "sad", "😍": "loving", "🥰": "loving", "❤": "loving",
    "😳": "embarrassed", "😲": "surprised", "😮": "surprised", "😱": "shocked", "🤔": "thinking",
    "😉": "winking", "😎": "cool", "😌": "relaxed", "😋": "delicious", "😘": "kissy", "😏": "confident",
    "😴": "sleepy", "😜": "silly", "🤪": "silly", "😕": "confused", "😐": "neutral", "🤣": "funny",
}
EMOTION_EMOJI: dict[str, str] = {}
for _emoji, _emotion in EMOJI_EMOTIONS.items():
    EMOTION_EMOJI.setdefault(_emotion, _emoji)  # the first emoji listed for an emotion represents it
DEFAULT_EMOTION = "happy"  # fixed phrases (greetings, goodbyes) and the reference default
PLAIN_EMOTION = "neutral"  # a reply whose words carry no emotion

# Cues in the words of a reply, checked in this order (the first emotion with a cue wins). English
# cues match whole words; Chinese cues match as substrings. Kept short and conservative: a wrong
# face is worse than a neutral one.
_WORD_CUES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("laughing", ("haha", "hahaha", "lol", "hilarious", "funny"), ("哈哈", "笑死", "好笑")),
    ("sad", ("sorry", "unfortunately", "sadly", "apologize", "apologies", "afraid", "can't", "cannot",
             "unable", "failed", "miss you"),
     ("抱歉", "对不起", "遗憾", "可惜", "难过", "伤心", "无法", "不能", "失败")),
    ("surprised", ("wow", "whoa", "amazing", "incredible", "unbelievable", "really?"),
     ("哇", "天哪", "居然", "竟然", "没想到")),
    ("loving", ("love", "adore", "sweetheart", "hug"), ("爱你", "喜欢你", "抱抱", "亲爱的")),
    ("angry", ("angry", "furious", "annoying", "outrageous"), ("生气", "气死", "可恶")),
    ("sleepy", ("sleepy", "good night", "goodnight", "bedtime", "tired"), ("晚安", "困了", "睡觉", "好困")),
    ("confused", ("confused", "not sure", "no idea", "don't understand", "didn't catch"),
     ("不太明白", "不明白", "没听清", "不确定", "搞不懂")),
    ("happy", ("great", "glad", "congratulations", "congrats", "awesome", "wonderful", "nice", "hello", "hi",
               "happy", "yay", "sure", "of course", "welcome"),
     ("太好了", "恭喜", "开心", "高兴", "你好", "当然", "好的", "欢迎", "棒")),
    ("cool", ("cool", "no problem", "done"), ("搞定", "酷", "没问题")),
]
_WORD = re.compile(r"[a-z']+(?:\?)?")


def emotion_of(text: str) -> str | None:
    """The emotion of the first known emoji in `text`, or None."""
    for ch in text:
        if ch in EMOJI_EMOTIONS:
            return EMOJI_EMOTIONS[ch]
    return None


def emoji_for(emotion: str) -> str:
    return EMOTION_EMOJI.get(emotion, "🙂")


def emotion_of_words(text: str) -> str | None:
    """The emotion the words of `text` suggest, or None when they suggest none."""
    lowered = text.lower()
    words = " " + " ".join(_WORD.findall(lowered)) + " "
    for emotion, english, chinese in _WORD_CUES:
        if any(f" {cue} " in words for cue in english) or any(cue in text for cue in chinese):
            return emotion
    stripped = text.rstrip()
    if stripped.endswith(("?", "？")):
        return "thinking"
    if stripped.endswith(("!", "！")):
        return "happy"
    return None


def reply_emotion(text: str) -> str:
    """The emotion for a reply: the model's own emoji first, else its words, else neutral."""
    return emotion_of(text) or emotion_of_words(text) or PLAIN_EMOTION
