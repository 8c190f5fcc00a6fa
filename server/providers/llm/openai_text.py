"""Reading what an OpenAI-compatible chat model says, without any I/O: which vendor switch
turns its thinking off, how streamed tool-call fragments merge, and which parts of the text may
be spoken (think blocks and tool calls printed as text are taken out, also when a tag is split
across stream chunks). Kept apart from the provider so the parsing can be read and tested on its
own.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from server.providers.base import ToolCall

log = logging.getLogger("server.providers")


# --------------------------------------------------------------------------- thinking switch

# host suffix -> vendor. DashScope is matched on its own hosts only: other aliyuncs.com hosts
# (e.g. PAI-EAS deployments) run arbitrary servers.
_VENDOR_HOSTS: tuple[tuple[str, str], ...] = (
    ("deepseek.com", "deepseek"),
    ("bigmodel.cn", "zhipu"),
    ("z.ai", "zhipu"),
    ("moonshot.cn", "moonshot"),
    ("moonshot.ai", "moonshot"),
    ("volces.com", "volcengine"),
)
_THINKING_TYPE_OFF = {"thinking": {"type": "disabled"}}
# Checked against each vendor's docs: DashScope `enable_thinking`; DeepSeek, GLM (bigmodel/z.ai),
# Kimi (Moonshot) and Doubao (Volcengine Ark) `thinking: {"type": "disabled"}`.
THINKING_OFF: dict[str, dict[str, Any]] = {
    "dashscope": {"enable_thinking": False},
    "deepseek": _THINKING_TYPE_OFF,
    "zhipu": _THINKING_TYPE_OFF,
    "moonshot": _THINKING_TYPE_OFF,
    "volcengine": _THINKING_TYPE_OFF,
}
# disable_thinking: true on a host we do not know: the spellings of the vendors above plus the
# chat-template switch of vLLM/SGLang/llama.cpp servers running Qwen3-style models.
THINKING_OFF_GENERIC: dict[str, Any] = {
    "thinking": {"type": "disabled"},
    "enable_thinking": False,
    "chat_template_kwargs": {"enable_thinking": False},
}


def thinking_vendor(base_url: str) -> str | None:
    """The vendor whose thinking switch applies to `base_url`, or None when unknown."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    if host.startswith("dashscope") and host.endswith(".aliyuncs.com"):
        return "dashscope"
    for suffix, vendor in _VENDOR_HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return vendor
    return None


def thinking_params(mode: Literal["auto"] | bool, base_url: str) -> dict[str, Any]:
    """Request-body fields that switch thinking off, per `disable_thinking` and the host."""
    if mode is False:
        return {}
    vendor = thinking_vendor(base_url)
    if vendor is not None:
        return json.loads(json.dumps(THINKING_OFF[vendor]))  # a copy: callers may merge into it
    return json.loads(json.dumps(THINKING_OFF_GENERIC)) if mode is True else {}


# --------------------------------------------------------------------------- tool calls


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAccumulator:
    """Merges streamed tool-call fragments. OpenAI sends the id and name in a call's first
    fragment and the arguments in pieces, all tagged with `index`; several calls interleave.
    Some servers leave `index` out (then the id, or else the latest call, decides) or repeat the
    id and name in every fragment (repeats are not appended again)."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self._last: int | None = None

    def add(self, index: int | None, call_id: str | None, name: str | None, arguments: str | None) -> None:
        if index is None:
            index = self._index_for(call_id)
        call = self._calls.setdefault(index, _PartialCall())
        self._last = index
        if call_id and not call.id:
            call.id = call_id
        if name and name != call.name:
            call.name += name
        if arguments:
            call.arguments.append(arguments)

    def _index_for(self, call_id: str | None) -> int:
        if call_id:
            for i, call in self._calls.items():
                if call.id == call_id:
                    return i
            return max(self._calls, default=-1) + 1
        if self._last is not None:
            return self._last
        return 0

    def __bool__(self) -> bool:
        return bool(self._calls)

    def complete(self) -> list[ToolCall]:
        out = []
        for _, call in sorted(self._calls.items()):
            args = "".join(call.arguments)
            if not call.name and not args.strip():
                continue
            # A call without arguments comes as "" from many servers; "{}" is what it means.
            out.append(ToolCall(id=call.id or new_call_id(), name=call.name, arguments=args if args.strip() else "{}"))
        return out


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*', re.S)


def parse_text_tool_calls(body: str) -> list[ToolCall]:
    """Tool calls a model printed as text: `{"name": ..., "arguments": {...}}`, a list of those,
    or OpenAI's `{"function": {...}}` shape. Arguments that are not valid JSON are passed on raw
    (the executor reports the error to the model); text without a name yields nothing."""
    text = _FENCE.sub("", body.strip())
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return _salvage_call(text)
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict):
            continue
        fn = item.get("function") if isinstance(item.get("function"), dict) else item
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            continue
        args = fn.get("arguments", fn.get("parameters", {}))
        raw = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        calls.append(ToolCall(id=new_call_id(), name=name, arguments=raw))
    return calls


def _salvage_call(text: str) -> list[ToolCall]:
    name = _NAME.search(text)
    if not name:
        return []
    args = _ARGS.search(text)
    raw = "{}"
    if args:
        rest = text[args.end():].rstrip()
        try:
            _, end = json.JSONDecoder().raw_decode(rest)  # valid arguments, broken elsewhere
            raw = rest[:end]
        except ValueError:
            raw = rest
            if raw.endswith("}") and raw.count("}") > raw.count("{"):
                raw = raw[:-1].rstrip()  # the enclosing object's brace
    return [ToolCall(id=new_call_id(), name=name.group(1), arguments=raw)]


# --------------------------------------------------------------------------- speech filter

# opening tag -> (closing tag, what the block is)
_BLOCKS: dict[str, tuple[str, str]] = {
    "<think>": ("</think>", "think"),
    "<tool_call>": ("</tool_call>", "tool"),
    "<|FunctionCallBegin|>": ("<|FunctionCallEnd|>", "tool"),
}
# Dropped when met outside a block: some templates put `<think>` in the prompt, so the model's
# output starts inside the block and only its end tag shows.
_STRAY = ("</think>",)
_OPENERS = (*_BLOCKS, *_STRAY)


def _partial_tag_len(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags` (a tag
    possibly continuing in the next chunk)."""
    best = 0
    for tag in tags:
        for k in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:k]):
                best = k
                break
    return best


class SpeechFilter:
    """Separates what may be spoken from think blocks and text-printed tool calls, chunk by
    chunk. Text is released as soon as it cannot be the start of a tag, so speech is delayed
    only by a possible partial tag at a chunk's end.

    With `detect_json_calls` (tools were offered), an answer that starts like JSON (`{`, `[{` or
    a code fence) is held to the end and parsed as tool calls; if it is not one, it is released
    as text.
    """

    def __init__(self, detect_json_calls: bool = False) -> None:
        self._buf = ""
        self._block: str | None = None  # the opening tag of the block we are in
        self._captured: list[str] = []
        self._gate: Literal["undecided", "speech", "json"] = "undecided" if detect_json_calls else "speech"
        self._held = ""
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> str:
        self._buf += text
        out: list[str] = []
        while self._buf:
            if self._block is None:
                idx, tag = self._find_opener()
                if tag is None:
                    keep = _partial_tag_len(self._buf, _OPENERS)
                    out.append(self._buf[:len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep:]
                    break
                out.append(self._buf[:idx])
                self._buf = self._buf[idx + len(tag):]
                if tag in _BLOCKS:
                    self._block = tag
                continue
            close, kind = _BLOCKS[self._block]
            idx = self._buf.find(close)
            if idx < 0:
                keep = _partial_tag_len(self._buf, (close,))
                if kind == "tool":
                    self._captured.append(self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                break
            if kind == "tool":
                self._captured.append(self._buf[:idx])
                self._end_tool_block()
            self._buf = self._buf[idx + len(close):]
            self._block = None
        return self._through_gate("".join(out))

    def flush(self) -> str:
        """End of stream: release what is left, parse an unterminated tool block."""
        tail = ""
        if self._block is None:
            tail = self._buf  # a partial tag that never completed is plain text
        elif _BLOCKS[self._block][1] == "tool":
            self._captured.append(self._buf)
            self._end_tool_block()
        self._buf = ""
        self._block = None
        text = self._through_gate(tail)
        if self._gate == "json":
            held, self._held = self._held, ""
            calls = parse_text_tool_calls(held)
            if calls:
                self.calls.extend(calls)
            else:
                text += held
        elif self._gate == "undecided":
            text += self._held
            self._held = ""
        return text

    def _find_opener(self) -> tuple[int, str | None]:
        best, best_tag = -1, None
        for tag in _OPENERS:
            i = self._buf.find(tag)
            if i >= 0 and (best < 0 or i < best):
                best, best_tag = i, tag
        return best, best_tag

    def _end_tool_block(self) -> None:
        body = "".join(self._captured)
        self._captured = []
        calls = parse_text_tool_calls(body)
        if not calls and body.strip():
            log.warning("dropped an unreadable text tool call: %.200s", body)
        self.calls.extend(calls)

    def _through_gate(self, text: str) -> str:
        if self._gate == "speech" or not text:
            return text
        if self._gate == "json":
            self._held += text
            return ""
        self._held += text
        verdict = _looks_like_json_call(self._held.lstrip())
        if verdict is None:
            return ""  # too little to tell yet
        if verdict:
            self._gate = "json"
            return ""
        self._gate = "speech"
        text, self._held = self._held, ""
        return text


def speakable(text: str) -> str:
    """A whole (not streamed) answer without its think blocks and text-printed tool calls."""
    speech = SpeechFilter()
    return speech.feed(text) + speech.flush()


def _looks_like_json_call(head: str) -> bool | None:
    """Does an answer starting with `head` look like a printed tool call? None: cannot tell yet.
    `[` alone is not enough: "[laughs] Sure!" must be spoken at once, not held to the end."""
    if not head or "```".startswith(head):
        return None
    if head.startswith(("{", "```")):
        return True
    if head.startswith("["):
        rest = head[1:].lstrip()
        return None if not rest else rest.startswith("{")
    return False
