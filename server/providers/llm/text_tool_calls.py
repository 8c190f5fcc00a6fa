"""Tool calls that a local model writes as text, in the Hermes / Qwen 2.5 format:

    <tool_call>
    {"name": "self_audio_speaker_set_volume", "arguments": {"volume": 30}}
    </tool_call>

`ToolCallText` splits a streamed completion into speakable text and complete tool calls. Text
before a tag is released as it comes (only a possible partial "<tool_call>" at the very end is
held back); a call is released when its closing tag arrives, or at the end of the stream if the
model stopped without closing it.

Small models sometimes skip the tags and answer with the bare JSON object, or wrap it in a
```json fence. So a reply that starts with "{" or "```" is held until the end and read as a call
when it names one of the offered tools; otherwise it is spoken as it was written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(slots=True)
class TextCall:
    name: str
    arguments: str  # JSON text of an object


def parse_call(body: str, tool_names: set[str] | None = None) -> TextCall | None:
    """One call from the JSON written inside the tags (or bare). None when it is not one."""
    body = body.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except ValueError:
        data = _first_object(body)
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        fn = data.get("function")
        name = fn.get("name") if isinstance(fn, dict) else fn
        data = fn if isinstance(fn, dict) else data
    if not isinstance(name, str) or not name or (tool_names is not None and name not in tool_names):
        return None
    args: Any = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        # Some models encode the arguments as a JSON string; the executor validates them.
        return TextCall(name, args)
    if not isinstance(args, dict):
        args = {}
    return TextCall(name, json.dumps(args, ensure_ascii=False))


def _first_object(text: str) -> Any:
    """The first decodable JSON object in text (models add words around it)."""
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, _ = decoder.raw_decode(text[start:])
        except ValueError:
            continue
        return obj
    return None


class ToolCallText:
    """Feed streamed text; get back (speakable text, complete calls) per piece."""

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self._buffer = ""
        self._in_call = False
        self._started = False  # saw the first non-blank character
        self._bare = False  # the reply began like bare JSON: hold it all until the end
        self.calls_seen = 0

    def feed(self, piece: str) -> tuple[str, list[TextCall]]:
        self._buffer += piece
        if not self._started:
            stripped = self._buffer.lstrip()
            if not stripped:
                return "", []
            self._started = True
            self._bare = bool(self.tool_names) and stripped[0] in "{`"
        if self._bare:
            return "", []
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[TextCall]]:
        if self._bare:
            text, self._buffer = self._buffer, ""
            calls = self._bare_calls(text)
            self.calls_seen += len(calls)
            return ("", calls) if calls else (text, [])
        return self._drain(final=True)

    def _bare_calls(self, text: str) -> list[TextCall]:
        if OPEN in text:
            self._bare = False
            self._buffer = text
            _, calls = self._drain(final=True)
            return calls
        # One object, or several on their own lines.
        call = parse_call(text, self.tool_names)
        if call is not None:
            return [call]
        calls = [c for line in text.splitlines() if (c := parse_call(line, self.tool_names))]
        return calls

    def _drain(self, final: bool) -> tuple[str, list[TextCall]]:
        text: list[str] = []
        calls: list[TextCall] = []
        while self._buffer:
            if self._in_call:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    if final:
                        # The model stopped inside a call (end of generation or max_tokens).
                        call = parse_call(self._buffer)
                        if call is not None:
                            calls.append(call)
                        self._buffer = ""
                    break
                call = parse_call(self._buffer[:end])
                if call is not None:
                    calls.append(call)
                self._buffer = self._buffer[end + len(CLOSE):]
                self._in_call = False
                continue
            start = self._buffer.find(OPEN)
            if start >= 0:
                text.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(OPEN):]
                self._in_call = True
                continue
            keep = 0 if final else _partial_tag(self._buffer)
            text.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            break
        self.calls_seen += len(calls)
        return "".join(text), calls


def _partial_tag(text: str) -> int:
    """Length of the longest end of `text` that could be the start of "<tool_call>"."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0
