"""Cut a stream of LLM text into speakable pieces, as early as sounds natural.

The first piece is released at the first clause boundary (comma-like punctuation, Chinese or
ASCII) once it has a few words, so TTS can start while the LLM is still writing; later pieces are
whole sentences, unless a sentence runs long. ASCII '.' counts as a sentence end when followed by
white space (or the end of the text), so "3.14" and "v2.1" stay whole; the reference server never
split English on '.', which made English replies wait for the whole answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HARD = set("。！？!?；;…\n")
SOFT = set("，,、：:—")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "no", "approx"}
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_MARKDOWN = re.compile(r"(\*\*|__|`+|^#+\s*|^\s*[-*+]\s+|^\s*\d+\.\s+)", re.MULTILINE)
_SPACES = re.compile(r"[ \t\r\f\v]+")
# Emoji and pictographs are shown as the `llm` emotion, never read aloud.
EMOJI = re.compile(
    "[\U0001F300-\U0001FAFF\U00002600-\U000027BF\U0001F000-\U0001F02F\U0001F0A0-\U0001F0FF"
    "\U0001F100-\U0001F1FF\uFE0F\u200D]+")


def text_weight(text: str) -> int:
    """Rough spoken length: CJK characters count one each, other scripts count per word."""
    cjk = len(CJK.findall(text))
    words = len(re.findall(r"[A-Za-z0-9']+", text))
    return cjk + words


# Meta text a model writes but nobody should hear: [bracketed notes] and 【notes】 (models copy
# annotations like "[interrupted by the user]" from their context), an unclosed one at the end of
# a reply, <tags>, and stage directions in parentheses ("(laughs)", "（停顿）").
OPEN_BRACKETS = "[【"
CLOSE_BRACKETS = "]】"
_BRACKETED = re.compile(r"\[[^\[\]]*\]|【[^【】]*】|\[[^\]]*$|【[^】]*$|</?[A-Za-z_][^<>]*>")
_STAGE = re.compile(r"[(（]\s*(?:interrupt\w*|paus\w*|laugh\w*|sigh\w*|silence|no answer|smil\w*|giggl\w*|"
                    r"笑|大笑|微笑|停顿|沉默|叹气|被打断\w*)[^()（）]{0,30}[)）]", re.IGNORECASE)
# An unclosed bracket holds the splitter back at most this many characters (a stray "[" must not
# silence the rest of a reply).
MAX_BRACKET_HOLD = 200


def strip_meta(text: str) -> str:
    """Remove bracketed meta text (see above); the words around it stay."""
    return _STAGE.sub("", _BRACKETED.sub("", text))


def clean_for_speech(text: str) -> str:
    text = strip_meta(text)
    text = EMOJI.sub("", text)
    text = _MARKDOWN.sub("", text)
    text = text.replace("*", "").replace("#", "")
    return _SPACES.sub(" ", text).strip()


def _is_speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


@dataclass(slots=True)
class SentenceSplitter:
    first_min_weight: int = 3  # words (or CJK chars) before a first clause may be released
    long_weight: int = 40  # past this, later sentences also split at clause boundaries
    _buf: str = ""
    _emitted: int = 0
    _pieces: list[str] = field(default_factory=list)

    def feed(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            piece, self._buf = self._buf[:cut], self._buf[cut:]
            self._take(piece, out)
        return out

    def flush(self) -> list[str]:
        out: list[str] = []
        piece, self._buf = self._buf, ""
        self._take(piece, out)
        return out

    def _take(self, piece: str, out: list[str]) -> None:
        cleaned = clean_for_speech(piece)
        if _is_speakable(cleaned):
            out.append(cleaned)
            self._emitted += 1

    def _find_cut(self) -> int | None:
        buf = self._buf
        first = self._emitted == 0
        depth = 0
        opened = 0
        for i, ch in enumerate(buf):
            if ch in OPEN_BRACKETS:
                if depth == 0:
                    opened = i
                depth += 1
                continue
            if ch in CLOSE_BRACKETS:
                depth = max(0, depth - 1)
                continue
            if depth and i - opened < MAX_BRACKET_HOLD:
                continue  # never cut inside [meta text]: it is removed whole once closed
            if ch in HARD or ch == ".":
                if ch == ".":
                    # Need to see what follows a '.' before deciding (decimal point, "e.g.").
                    if i + 1 >= len(buf):
                        return None
                    nxt = buf[i + 1]
                    if not nxt.isspace() and nxt not in "\"'”’)":
                        continue
                    word = re.search(r"([A-Za-z.]+)$", buf[:i])
                    if word and word.group(1).lower() in ABBREVIATIONS:
                        continue
                end = i + 1
                # Keep closing quotes/brackets and repeated punctuation with the sentence.
                while end < len(buf) and (buf[end] in HARD or buf[end] in "\"'”’)）」"):
                    end += 1
                if _is_speakable(buf[:end]):
                    return end
            elif ch in SOFT:
                weight = text_weight(buf[:i])
                if (first and weight >= self.first_min_weight) or weight >= self.long_weight:
                    return i + 1
        return None
