"""Pick the `llm` emotion the device shows while it speaks.

The firmware shows a face per emotion name. An emoji in the model's reply decides it (as with
the reference server); otherwise the turn shows "happy", the reference default.
"""

from __future__ import annotations

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
DEFAULT_EMOTION = "happy"


def emotion_of(text: str) -> str | None:
    """The emotion of the first known emoji in `text`, or None."""
    for ch in text:
        if ch in EMOJI_EMOTIONS:
            return EMOJI_EMOTIONS[ch]
    return None


def emoji_for(emotion: str) -> str:
    return EMOTION_EMOJI.get(emotion, "🙂")
