"""Any OpenAI-compatible chat endpoint (OpenAI, DeepSeek, Qwen/DashScope, GLM, Moonshot, Doubao,
Ollama, LM Studio, vLLM...) through the async `openai` SDK, streamed.

What it fixes compared with the reference server's provider (sync client on a thread, default
300 s timeout, think tags and text-printed tool calls read aloud):
- one `AsyncOpenAI` client shared by all sessions, its own retries off: this provider retries,
  and only before anything was yielded (a restarted answer would be heard twice);
- every call bounded: `timeout_s` for connect and for each read, `first_token_timeout_s` for the
  wait until the model produces anything at all;
- `<think>` blocks and `reasoning_content` never reach the speaker, also when a tag is split
  across stream chunks; thinking is switched off where the vendor has a switch;
- tool calls streamed in fragments are merged by index and yielded once, complete, at the end;
  tool calls printed as text (`<tool_call>{...}</tool_call>`, Doubao's `<|FunctionCallBegin|>`,
  a bare JSON object when tools were offered) become ToolCalls instead of speech;
- closing the generator (the user interrupted) closes the HTTP stream at once, so the vendor
  stops generating (and billing) too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from server.providers.base import (
    LLMDelta,
    LLMRequest,
    Provider,
    ProviderError,
    ProviderSettings,
    ProviderUnavailable,
    ToolCall,
)

log = logging.getLogger("server.providers")

# The SDK refuses to build a client without a key; local servers (Ollama, LM Studio, vLLM) need
# none. With this placeholder (and `request_headers`) no Authorization header is sent at all.
NO_KEY = "no-key"


class OpenAILLMSettings(ProviderSettings):
    type: str = "openai"
    # Including the version path: https://api.deepseek.com/v1, https://dashscope.aliyuncs.com/
    # compatible-mode/v1, https://open.bigmodel.cn/api/paas/v4, http://127.0.0.1:11434/v1 ...
    base_url: str = "https://api.openai.com/v1"
    api_key: str = ""  # empty for local servers that need none
    model: str = "gpt-4o-mini"
    # None: the vendor's default (some reasoning models reject anything else).
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=65536)
    # OpenAI's newest models only accept max_completion_tokens; most other servers max_tokens.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Connect timeout, and the longest silence between two streamed chunks.
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    # Give up (and maybe retry) when the model has produced nothing for this long.
    first_token_timeout_s: float = Field(default=8.0, gt=0, le=600)
    # Extra attempts on 429/5xx/connection errors/timeouts, only before any output was yielded.
    retries: int = Field(default=1, ge=0, le=5)
    retry_backoff_s: float = Field(default=0.5, ge=0, le=30)  # doubled per attempt, with jitter
    # auto: the vendor's switch when base_url's host is a known vendor, nothing otherwise;
    # true: always (unknown hosts get every common spelling); false: never.
    disable_thinking: Literal["auto"] | bool = "auto"
    # false for models/servers that reject `tools` (the responder then uses no tools).
    supports_tools: bool = True
    # Merged into the request body last (wins over disable_thinking's parameters).
    extra_body: dict[str, Any] = Field(default_factory=dict)
    extra_headers: dict[str, str] = Field(default_factory=dict)


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


# --------------------------------------------------------------------------- errors


class OpenAIProviderError(ProviderError):
    """ProviderError with the HTTP status (None for network errors) and the server's Retry-After."""

    def __init__(self, provider: str, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(provider, message, retryable=retryable)
        self.status = status
        self.retry_after = retry_after


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    msg = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = str(inner.get("message") or "") if isinstance(inner, dict) else str(inner)
    elif isinstance(body, str):
        msg = body
    msg = msg or str(getattr(exc, "message", "") or exc)
    msg = " ".join(msg.split())
    return msg[:300] + ("..." if len(msg) > 300 else "")


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: ignore, the backoff applies


def _root_cause(exc: BaseException) -> str:
    cause: BaseException = exc
    while cause.__cause__ is not None and cause.__cause__ is not cause:
        cause = cause.__cause__
    text = str(cause) or type(cause).__name__
    return f"{type(cause).__name__}: {text}" if cause is not exc else text


def provider_error(name: str, exc: BaseException, base_url: str, timeout_s: float) -> OpenAIProviderError:
    """Map an `openai` SDK (or network) exception to a ProviderError that names the cause."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        msg = _server_message(exc)
        if status in (401, 403):
            return OpenAIProviderError(name, f"HTTP {status} from {base_url}: {msg} (check api_key)",
                                       status=status)
        if status == 404:
            return OpenAIProviderError(name, f"HTTP 404 from {base_url}: {msg} (check base_url and model)",
                                       status=status)
        retryable = status in (408, 409, 429) or status >= 500
        return OpenAIProviderError(name, f"HTTP {status} from {base_url}: {msg}", retryable=retryable,
                                   status=status, retry_after=_retry_after(exc) if retryable else None)
    if isinstance(exc, openai.APITimeoutError):
        return OpenAIProviderError(name, f"timed out after {timeout_s:g} s (timeout_s) talking to {base_url}",
                                   retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return OpenAIProviderError(name, f"connection to {base_url} failed: {_root_cause(exc)}", retryable=True)
    if isinstance(exc, openai.APIError):  # an error event inside an otherwise fine stream
        return OpenAIProviderError(name, f"{base_url} reported an error mid-stream: {_server_message(exc)}",
                                   retryable=True)
    return OpenAIProviderError(name, f"unexpected {type(exc).__name__} from {base_url}: {exc}")


def make_client(base_url: str, api_key: str, timeout_s: float) -> Any:
    """An AsyncOpenAI client with our timeouts and without the SDK's own retries."""
    import httpx2
    import openai

    if urlsplit(base_url).scheme not in ("http", "https"):
        raise ProviderUnavailable(f"base_url must start with http:// or https://, got {base_url!r}")
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or NO_KEY, max_retries=0,
                              timeout=httpx2.Timeout(timeout_s))


def request_headers(api_key: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-request headers: without a key, the SDK is told to send no Authorization at all
    (it accepts that only per request, not as a client default)."""
    import openai

    headers: dict[str, Any] = dict(extra or {})
    if not api_key:
        headers["Authorization"] = openai.Omit()
    return headers


def backoff_s(attempt: int, base: float, retry_after: float | None, cap: float = 5.0) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins, capped (a voice turn
    cannot wait long anyway)."""
    delay = base * (2 ** (attempt - 1)) * (0.75 + random.random() / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


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


# --------------------------------------------------------------------------- provider


class OpenAILLM(Provider):
    kind = "llm"
    local = False
    Settings = OpenAILLMSettings
    settings: OpenAILLMSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None

    @property
    def supports_tools(self) -> bool:
        return self.settings.supports_tools

    async def load(self) -> None:
        try:
            import openai  # noqa: F401
        except ImportError:
            raise ProviderUnavailable("llm.openai: pip install openai") from None
        s = self.settings
        try:
            self._client = make_client(s.base_url, s.api_key, s.timeout_s)
        except ProviderUnavailable as exc:
            raise ProviderUnavailable(f"{self.name}: {exc}") from None
        vendor = thinking_vendor(s.base_url)
        if not s.api_key and vendor is not None:
            log.warning("%s: no api_key for %s; requests will fail with 401", self.name, s.base_url)
        thinking = thinking_params(s.disable_thinking, s.base_url)
        log.info("%s: %s at %s%s", self.name, s.model, s.base_url,
                 f" (thinking off via {', '.join(thinking)})" if thinking else "")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        await super().close()

    def describe(self) -> str:
        return f"{self.name} ({self.settings.model} at {self.settings.base_url})"

    def request_params(self, request: LLMRequest) -> dict[str, Any]:
        """The arguments of `chat.completions.create` for one request."""
        s = self.settings
        params: dict[str, Any] = {
            "model": s.model,
            "messages": [m.to_openai() for m in request.messages],
            "stream": True,
        }
        temperature = request.temperature if request.temperature is not None else s.temperature
        if temperature is not None:
            params["temperature"] = temperature
        max_tokens = request.max_tokens or s.max_tokens
        if max_tokens:
            params[s.max_tokens_param] = max_tokens
        if s.top_p is not None:
            params["top_p"] = s.top_p
        if request.tools and s.supports_tools:
            params["tools"] = request.tools
            params["tool_choice"] = "auto"
        body = {**thinking_params(s.disable_thinking, s.base_url), **s.extra_body}
        if body:
            params["extra_body"] = body
        headers = request_headers(s.api_key, s.extra_headers)
        if headers:
            params["extra_headers"] = headers
        return params

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        if self._client is None:
            raise ProviderError(self.name, "not loaded")
        s = self.settings
        params = self.request_params(request)
        attempt = 0
        while True:
            produced = False
            try:
                async with contextlib.aclosing(self._attempt(params)) as deltas:
                    async for delta in deltas:
                        produced = True
                        yield delta
                return
            except OpenAIProviderError as exc:
                if produced or not exc.retryable or attempt >= s.retries:
                    raise
                attempt += 1
                delay = backoff_s(attempt, s.retry_backoff_s, exc.retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", self.name, exc, attempt, s.retries, delay)
                await asyncio.sleep(delay)

    async def _attempt(self, params: dict[str, Any]) -> AsyncIterator[LLMDelta]:
        """One HTTP call, streamed. Raises OpenAIProviderError."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.first_token_timeout_s
        speech = SpeechFilter(detect_json_calls="tools" in params)
        calls = ToolCallAccumulator()
        stream: Any = None
        started = False  # the model produced something (text, reasoning or a tool call)
        spoken = False
        finish = None
        try:
            # No yield happens inside a timeout block: the deadline only covers our own awaits.
            async with asyncio.timeout_at(deadline):
                stream = await self._client.chat.completions.create(**params)
            chunks = aiter(stream)
            while True:
                try:
                    if started:
                        chunk = await anext(chunks)
                    else:
                        async with asyncio.timeout_at(deadline):
                            chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                if not chunk.choices:
                    continue  # a usage-only chunk
                choice = chunk.choices[0]
                finish = choice.finish_reason or finish
                delta = choice.delta
                if delta is None:
                    continue
                # DeepSeek/Qwen/vLLM send thoughts as `reasoning_content` (or `reasoning`): it
                # proves the model is alive, and is never spoken.
                if getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None):
                    started = True
                for frag in delta.tool_calls or ():
                    started = True
                    fn = frag.function
                    calls.add(frag.index, frag.id, fn.name if fn else None, fn.arguments if fn else None)
                if delta.content:
                    started = True
                    text = speech.feed(delta.content)
                    if not spoken:
                        text = text.lstrip()
                    if text:
                        spoken = True
                        yield LLMDelta(text=text)
            text = speech.flush()
            if not spoken:
                text = text.lstrip()
            if text.strip():
                yield LLMDelta(text=text)
            tool_calls = calls.complete() + speech.calls
            if tool_calls:
                yield LLMDelta(tool_calls=tool_calls)
            if finish == "length":
                log.info("%s: answer cut at max_tokens", self.name)
        except TimeoutError:
            raise OpenAIProviderError(
                self.name, f"no output from {s.base_url} within {s.first_token_timeout_s:g} s "
                           "(first_token_timeout_s)", retryable=True) from None
        except OpenAIProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - every SDK/network failure becomes a ProviderError
            raise provider_error(self.name, exc, s.base_url, s.timeout_s) from exc
        finally:
            if stream is not None:
                # Closing an unfinished response drops the connection: the server stops generating.
                await stream.close()
